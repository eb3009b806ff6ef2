"""Streaming contingency tables and categorical scores at rain-rate thresholds (mm/h).

Event convention: a pixel is an *event* where the rain rate is **at or above** the threshold
(``R >= thr``), the same convention as pysteps' FSS, ROC and reliability code and the rest of
:mod:`qpe_core.verification`.  (pysteps' ``detcatscores`` uses ``R > thr``; the two agree except for
values exactly equal to a threshold, which matters for quantised radar rates.)

Thresholds come in two kinds:

* fixed thresholds in mm/h (default 0.1, 1, 3, 10, 30), labelled ``"0.1"``, ``"1"``, ...;
* wet-pixel quantiles of the truth (default q90 and q99), labelled ``"q90"``, ``"q99"``.  They are
  computed **per slot** from that slot's valid wet truth pixels (truth >= 0.1 mm/h, linear
  interpolation as in ``numpy.quantile``) and applied to both truth and forecast of that slot, so
  the accumulation stays single-pass and streaming.  A slot with fewer than ``min_wet_pixels`` wet
  truth pixels has no quantile threshold and does not contribute to the quantile tables (it is
  counted in ``slots_skipped``).  The mean threshold over the contributing slots is reported.

Accumulation is our own (four boolean sums per threshold), because pysteps'
``det_cat_fct_accum`` counts NaN observations as correct negatives (``NaN > thr`` is False) and
copies its inputs; the scores are computed by pysteps' ``det_cat_fct_compute`` from our counts,
so the formulas are pysteps' own.  Pixels without radar (NaN truth) are removed by the caller:
:class:`CategoricalAccumulator.update` takes 1-D arrays of valid pixels only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pysteps.verification import detcatscores

FIXED_THRESHOLDS_MM_H: tuple[float, ...] = (0.1, 1.0, 3.0, 10.0, 30.0)
WET_QUANTILES: tuple[float, ...] = (0.9, 0.99)
WET_MM_H = 0.1
SCORES: tuple[str, ...] = ("POD", "FAR", "CSI", "ETS", "HSS", "BIAS", "SEDI")


def threshold_label(thr: float) -> str:
    """Label of a fixed threshold in mm/h: ``0.1 -> "0.1"``, ``1.0 -> "1"``."""
    return f"{float(thr):g}"


def quantile_label(q: float) -> str:
    """Label of a wet-pixel quantile: ``0.9 -> "q90"``, ``0.99 -> "q99"``, ``0.999 -> "q99.9"``."""
    return f"q{100.0 * float(q):g}"


def resolve_thresholds(truth_valid: np.ndarray, thresholds: Sequence[float] = FIXED_THRESHOLDS_MM_H,
                       quantiles: Sequence[float] = WET_QUANTILES, wet_mm_h: float = WET_MM_H,
                       min_wet_pixels: int = 100) -> dict[str, float | None]:
    """The thresholds (mm/h) of one slot, by label; ``None`` where a quantile is undefined.

    ``truth_valid`` holds the slot's valid (non-NaN) truth pixels in mm/h.  Quantile thresholds are
    quantiles of the wet pixels (``truth >= wet_mm_h``) of this slot alone; with fewer than
    ``min_wet_pixels`` wet pixels they are ``None``.
    """
    out: dict[str, float | None] = {threshold_label(t): float(t) for t in thresholds}
    wet = truth_valid[truth_valid >= wet_mm_h]
    for q in quantiles:
        out[quantile_label(q)] = float(np.quantile(wet, q)) if wet.size >= max(min_wet_pixels, 1) else None
    return out


def contingency_scores(hits: int, misses: int, false_alarms: int, correct_negatives: int) -> dict[str, float]:
    """POD, FAR, CSI, ETS, HSS, frequency bias and SEDI of one contingency table (pysteps formulas).

    Undefined scores (zero denominators, SEDI of a perfect table) are NaN.
    """
    contab = {"hits": np.asarray(hits), "misses": np.asarray(misses), "false_alarms": np.asarray(false_alarms),
              "correct_negatives": np.asarray(correct_negatives)}
    with np.errstate(divide="ignore", invalid="ignore"):
        res = detcatscores.det_cat_fct_compute(contab, list(SCORES))
    return {name: float(res[name]) for name in SCORES}


class Contingency:
    """One streaming 2 x 2 contingency table (counts of valid pixels) at one threshold label."""

    def __init__(self) -> None:
        self.hits = self.misses = self.false_alarms = self.correct_negatives = 0
        self.slots = self.slots_skipped = 0
        self.threshold_sum = 0.0

    def update(self, forecast: np.ndarray, truth: np.ndarray, thr: float | None) -> None:
        """Add one slot: 1-D arrays of valid pixels in mm/h; ``thr=None`` skips the slot."""
        if thr is None:
            self.slots_skipped += 1
            return
        f, o = forecast >= thr, truth >= thr
        hits = int(np.count_nonzero(f & o))
        n_f, n_o = int(np.count_nonzero(f)), int(np.count_nonzero(o))
        self.hits += hits
        self.false_alarms += n_f - hits
        self.misses += n_o - hits
        self.correct_negatives += f.size - n_f - n_o + hits
        self.slots += 1
        self.threshold_sum += float(thr)

    def compute(self) -> dict:
        """Counts, mean threshold (mm/h) and scores."""
        out = {"hits": self.hits, "misses": self.misses, "false_alarms": self.false_alarms,
               "correct_negatives": self.correct_negatives, "slots": self.slots,
               "slots_skipped": self.slots_skipped,
               "threshold_mm_h": self.threshold_sum / self.slots if self.slots else float("nan")}
        out.update(contingency_scores(self.hits, self.misses, self.false_alarms, self.correct_negatives))
        return out


class CategoricalAccumulator:
    """Contingency tables of one forecast at all threshold labels, accumulated slot by slot."""

    def __init__(self, labels: Sequence[str]):
        self.tables = {label: Contingency() for label in labels}

    def update(self, forecast: np.ndarray, truth: np.ndarray, thresholds: Mapping[str, float | None]) -> None:
        """Add one slot: 1-D valid pixels (mm/h) and this slot's thresholds from :func:`resolve_thresholds`."""
        for label, table in self.tables.items():
            table.update(forecast, truth, thresholds.get(label))

    def compute(self) -> dict[str, dict]:
        """``{label: {counts..., "threshold_mm_h", "POD", "FAR", "CSI", "ETS", "HSS", "BIAS", "SEDI"}}``."""
        return {label: table.compute() for label, table in self.tables.items()}
