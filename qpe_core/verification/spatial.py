"""Streaming fractions skill score (FSS) over scales of 1, 2, 4, ..., 64 pixels (rain rates in mm/h).

The FSS is accumulated exactly as pysteps' ``spatialscores.fss_accum`` does (binary field
``R >= thr``, moving-average fractions with ``scipy.ndimage.uniform_filter(mode="constant", cval=0)``,
sums of ``S_f**2``, ``S_f * S_o`` and ``S_o**2`` over all slots), so results agree with pysteps to
rounding.  It is our own loop because one slot is scored for several forecasts (ensemble mean,
member 0) against the same truth: the truth fractions are filtered once per threshold and scale
instead of once per forecast, and per-slot quantile thresholds are passed in.

Missing radar: pixels where the truth is NaN are set to 0 mm/h **in both fields** (so they are
non-events in truth and forecast, and only the fractions near the edge of a gap are affected);
slots where more than ``max_missing`` of the pixels are NaN are skipped altogether (counted in
``slots_skipped``).  The observed base rate ``f0`` is the fraction of *valid* truth pixels at or
above the threshold, over all scored slots.

Useful scale (Roberts & Lean 2008): the smallest scale whose FSS >= 0.5 + f0 / 2; ``None`` when no
scale reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.ndimage import uniform_filter

FSS_SCALES_PX: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def fractions(binary: np.ndarray, scale: int) -> np.ndarray:
    """Fraction of event pixels in a ``scale`` x ``scale`` window (zero padding), as pysteps computes it."""
    if scale > 1:
        return uniform_filter(binary, size=scale, mode="constant", cval=0.0)
    return binary


def useful_scale(scales: Sequence[int], fss: Sequence[float], base_rate: float) -> int | None:
    """Smallest scale (pixels) with ``FSS >= 0.5 + base_rate / 2``, or ``None``."""
    target = 0.5 + base_rate / 2.0
    for scale, value in zip(scales, fss):
        if np.isfinite(value) and value >= target:
            return int(scale)
    return None


class FSSAccumulator:
    """FSS sums for several named forecasts, threshold labels and scales, accumulated per slot."""

    def __init__(self, names: Sequence[str], labels: Sequence[str], scales: Sequence[int] = FSS_SCALES_PX,
                 max_missing: float = 0.5):
        self.names, self.labels, self.scales = list(names), list(labels), [int(s) for s in scales]
        shape = (len(self.labels), len(self.scales))
        self.sum_oo = np.zeros(shape)
        self.sum_ff = {n: np.zeros(shape) for n in self.names}
        self.sum_fo = {n: np.zeros(shape) for n in self.names}
        self.events = np.zeros(len(self.labels))
        self.valid = np.zeros(len(self.labels))
        self.slots = np.zeros(len(self.labels), dtype=int)
        self.max_missing = float(max_missing)
        self.slots_skipped = 0

    def update(self, forecasts: Mapping[str, np.ndarray], truth: np.ndarray,
               thresholds: Mapping[str, float | None]) -> bool:
        """Add one slot of (y, x) fields in mm/h (truth NaN = no radar); False if the slot was skipped."""
        valid = np.isfinite(truth)
        if valid.size == 0 or 1.0 - valid.mean() > self.max_missing:
            self.slots_skipped += 1
            return False
        obs = np.where(valid, truth, 0.0)
        fcs = {n: np.where(valid & np.isfinite(forecasts[n]), forecasts[n], 0.0) for n in self.names}
        n_valid = int(valid.sum())
        for i, label in enumerate(self.labels):
            thr = thresholds.get(label)
            if thr is None:
                continue
            b_o = (obs >= thr).astype(float)
            b_f = {n: (f >= thr).astype(float) for n, f in fcs.items()}
            self.events[i] += np.count_nonzero(b_o)
            self.valid[i] += n_valid
            self.slots[i] += 1
            for j, scale in enumerate(self.scales):
                s_o = fractions(b_o, scale)
                self.sum_oo[i, j] += np.sum(s_o * s_o)
                for n in self.names:
                    s_f = fractions(b_f[n], scale)
                    self.sum_ff[n][i, j] += np.sum(s_f * s_f)
                    self.sum_fo[n][i, j] += np.sum(s_f * s_o)
        return True

    def fss(self, name: str) -> np.ndarray:
        """FSS array (label, scale) of forecast ``name``; NaN where both fields had no event."""
        numer = self.sum_ff[name] - 2.0 * self.sum_fo[name] + self.sum_oo
        denom = self.sum_ff[name] + self.sum_oo
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - numer / denom

    def compute(self, pixel_km: float = 1.0) -> dict:
        """``{name: {label: {scales_px, scales_km, fss, base_rate, useful_target, smallest_useful_scale_px,
        smallest_useful_scale_km, slots}}}``."""
        out: dict = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            base = self.events / self.valid
        for name in self.names:
            table = self.fss(name)
            out[name] = {}
            for i, label in enumerate(self.labels):
                f0 = float(base[i])
                scale = useful_scale(self.scales, table[i], f0) if np.isfinite(f0) else None
                out[name][label] = {
                    "scales_px": list(self.scales), "scales_km": [s * pixel_km for s in self.scales],
                    "fss": [float(v) for v in table[i]], "base_rate": f0, "useful_target": 0.5 + f0 / 2.0,
                    "smallest_useful_scale_px": scale,
                    "smallest_useful_scale_km": None if scale is None else scale * pixel_km,
                    "slots": int(self.slots[i])}
        return out
