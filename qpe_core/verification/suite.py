"""One streaming verification suite for rain-rate ensembles (mm/h) against radar.

``VerificationSuite.update(members, truth)`` once per slot, ``compute()`` at the end.  Memory does not
grow with the number of slots: every section keeps fixed-size sums and counts (contingency tables,
FSS sums, pysteps' running moments, count tables, spectra ring sums, log-binned histograms).

Conventions (details in each module):

* a pixel is valid where the truth is finite (NaN = no radar) and every member is finite; invalid
  pixels are excluded from all pixel scores;
* events are ``R >= thr``; fixed thresholds in mm/h plus wet-pixel quantiles of the truth computed
  per slot (:mod:`.categorical`);
* deterministic scores (``categorical``, ``fss``, ``continuous``) for the ensemble mean (``"mean"``)
  and for member 0 (``"member0"``); ensemble scores only when there are at least 2 members
  (otherwise ``"ensemble"`` is ``None``);
* FSS and spectra set NaN truth pixels to 0 in both fields and skip slots with more than
  ``max_missing`` NaN (:mod:`.spatial`, :mod:`.realism`).

``compute()`` layout (JSON-serialisable: NaN/inf become ``None``)::

    {"meta": {"slots", "pixels", "members", "pixel_km", "thresholds", "wet_mm_h", ...},
     "categorical": {"mean"|"member0": {label: {hits, misses, false_alarms, correct_negatives,
                     threshold_mm_h, slots, slots_skipped, POD, FAR, CSI, ETS, HSS, BIAS, SEDI}}},
     "fss": {"mean"|"member0": {label: {scales_px, scales_km, fss, base_rate, useful_target,
             smallest_useful_scale_px, smallest_useful_scale_km, slots}}, "slots_skipped"},
     "continuous": {"mean"|"member0": {"all"|"wet": {n, bias, MAE, RMSE, r, mean_forecast, mean_truth}}},
     "ensemble": None | {"crps": {"1x1", "2x2", "4x4", "n_1x1", ...},
                         "rank_histogram": {counts, frequencies, pairs, chi2, dof},
                         "spread_skill": {spread, rmse_mean, ratio},
                         "probabilistic": {label: {pixels, base_rate, brier, roc: {...},
                                                   reliability: {...}}}},
     "realism": {"spectrum": {...}, "distribution": {name: {...}}, "statistics": {name: {...}}}}

Labels are ``"0.1", "1", "3", "10", "30"`` for fixed thresholds and ``"q90", "q99"`` for quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qpe_core.verification.categorical import (
    FIXED_THRESHOLDS_MM_H,
    WET_QUANTILES,
    CategoricalAccumulator,
    quantile_label,
    resolve_thresholds,
    threshold_label,
)
from qpe_core.verification.continuous import ContinuousAccumulator
from qpe_core.verification.ensemble import (
    POOL_SIZES,
    CRPSAccumulator,
    ProbabilityAccumulator,
    RankHistogram,
    SpreadSkill,
)
from qpe_core.verification.realism import RadialSpectrum, RainRateHistogram, realism_statistics
from qpe_core.verification.spatial import FSS_SCALES_PX, FSSAccumulator

WET_MM_H = 0.1
DETERMINISTIC = ("mean", "member0")


def json_safe(value):
    """Nested dicts/lists/tuples/numpy values -> plain Python with NaN and inf replaced by ``None``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class VerificationSuite:
    """All verification sections, updated slot by slot.

    ``pixel_km``: grid spacing (km) for FSS scales and spectral wavelengths; ``thresholds``: fixed
    thresholds (mm/h); ``quantiles``: wet-pixel quantiles of the truth used as per-slot thresholds;
    ``members``: expected ensemble size (``None``: taken from the first update; later updates must
    match); ``seed``: rank-histogram tie-breaking.
    """

    def __init__(self, pixel_km: float = 3.0, thresholds: Sequence[float] = FIXED_THRESHOLDS_MM_H,
                 members: int | None = None, quantiles: Sequence[float] = WET_QUANTILES,
                 fss_scales: Sequence[int] = FSS_SCALES_PX, pool_sizes: Sequence[int] = POOL_SIZES,
                 max_missing: float = 0.5, min_wet_pixels: int = 100, seed: int = 0):
        self.pixel_km = float(pixel_km)
        self.thresholds, self.quantiles = [float(t) for t in thresholds], [float(q) for q in quantiles]
        self.labels = [threshold_label(t) for t in self.thresholds] + [quantile_label(q) for q in self.quantiles]
        self.max_missing, self.min_wet_pixels, self.seed = float(max_missing), int(min_wet_pixels), int(seed)
        self.pool_sizes = list(pool_sizes)
        self.categorical = {n: CategoricalAccumulator(self.labels) for n in DETERMINISTIC}
        self.continuous = {n: ContinuousAccumulator(WET_MM_H) for n in DETERMINISTIC}
        self.fss = FSSAccumulator(DETERMINISTIC, self.labels, fss_scales, max_missing)
        self.spectrum: RadialSpectrum | None = None
        self.histograms = {n: RainRateHistogram() for n in ("truth", *DETERMINISTIC)}
        self.members: int | None = None
        self.slots = self.pixels = 0
        if members is not None:
            self._set_members(int(members))

    def _set_members(self, m: int) -> None:
        self.members = m
        if m > 1:
            self.crps = CRPSAccumulator(self.pool_sizes)
            self.rank = RankHistogram(m, WET_MM_H, self.seed)
            self.spread = SpreadSkill()
            self.prob = ProbabilityAccumulator(self.labels, m)
            self.histograms["members"] = RainRateHistogram()

    def update(self, members: np.ndarray, truth: np.ndarray) -> None:
        """Add one slot: ``members`` (m, y, x) or (y, x) and ``truth`` (y, x), mm/h; truth NaN = no radar."""
        members = np.asarray(members, dtype="float64")
        members = members[None] if members.ndim == 2 else members
        truth = np.asarray(truth, dtype="float64")
        if members.ndim != 3 or members.shape[1:] != truth.shape:
            raise ValueError(f"members {members.shape} do not match truth {truth.shape}")
        if self.members is None:
            self._set_members(members.shape[0])
        if members.shape[0] != self.members:
            raise ValueError(f"expected {self.members} members, got {members.shape[0]}")
        ok = np.isfinite(truth) & np.isfinite(members).all(axis=0)
        truth_nan = np.where(ok, truth, np.nan)
        fields = {"mean": members.mean(axis=0) if self.members > 1 else members[0], "member0": members[0]}
        o = truth[ok]
        thresholds = resolve_thresholds(o, self.thresholds, self.quantiles, WET_MM_H, self.min_wet_pixels)
        for name, field in fields.items():
            f = field[ok]
            self.categorical[name].update(f, o, thresholds)
            self.continuous[name].update(f, o)
            self.histograms[name].update(f)
        self.histograms["truth"].update(o)
        self.fss.update(fields, truth_nan, thresholds)
        if self.spectrum is None:
            self.spectrum = RadialSpectrum(truth.shape, DETERMINISTIC, self.pixel_km, self.max_missing)
        self.spectrum.update(fields, truth_nan)
        if self.members > 1:
            mv = members[:, ok]
            self.crps.update(np.where(ok, members, np.nan), truth_nan)
            self.rank.update(mv, o)
            self.spread.update(mv, o)
            self.prob.update(mv, o, thresholds)
            self.histograms["members"].update(mv)
        self.slots += 1
        self.pixels += int(ok.sum())

    def _ensemble(self) -> dict | None:
        if not self.members or self.members < 2:
            return None
        return {"crps": self.crps.compute(), "rank_histogram": self.rank.compute(),
                "spread_skill": self.spread.compute(), "probabilistic": self.prob.compute()}

    def _realism(self) -> dict:
        return {"spectrum": self.spectrum.compute() if self.spectrum is not None else None,
                "distribution": {n: h.distribution() for n, h in self.histograms.items()},
                "statistics": realism_statistics(self.histograms)}

    def compute(self) -> dict:
        """All sections as a JSON-serialisable nested dict (layout in the module docstring)."""
        out = {
            "meta": {"slots": self.slots, "pixels": self.pixels, "members": self.members,
                     "pixel_km": self.pixel_km, "thresholds_mm_h": self.thresholds,
                     "wet_quantiles": self.quantiles, "labels": self.labels, "wet_mm_h": WET_MM_H,
                     "event": "R >= threshold", "max_missing": self.max_missing,
                     "deterministic": list(DETERMINISTIC)},
            "categorical": {n: acc.compute() for n, acc in self.categorical.items()},
            "fss": {**self.fss.compute(self.pixel_km), "slots_skipped": self.fss.slots_skipped},
            "continuous": {n: acc.compute() for n, acc in self.continuous.items()},
            "ensemble": self._ensemble(),
            "realism": self._realism(),
        }
        return json_safe(out)
