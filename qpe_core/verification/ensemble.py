"""Streaming ensemble scores of rain-rate ensembles (mm/h): CRPS, rank histogram, spread/skill,
reliability, Brier score and ROC area.

Own code rather than pysteps, for measured reasons (each cross-checked against pysteps in the tests):

* **CRPS** (:func:`crps_pixels`): pysteps' ``probscores.CRPS_accum`` (Hersbach decomposition) drops
  the interval above an observation that *equals* a member, e.g. members (0, 1) mm/h and truth 0
  give 0 instead of 0.25 mm/h; ties at zero rain are the common case here.  We use the exact
  empirical-CDF form ``mean|X_i - y| - sum_ij |X_i - X_j| / (2 m^2)`` (sorted members), which equals
  pysteps without ties and is about 2.5x faster (0.11 s vs 0.28 s for 16 members on 384 x 384).
* **Rank histogram** (:class:`RankHistogram`): pysteps breaks ties with the unseeded global
  ``np.random`` and counts pixels in a Python loop (0.22 s per 384 x 384 x 16 slot).  Ours is
  vectorised and seeded; the rule is pysteps' ``X_min`` rule: values below 0.1 mm/h are zero,
  pairs where truth and all members are dry are left out, and the truth's rank among equal members
  is drawn uniformly (so it is flat for a calibrated ensemble, with or without zeros).
* **Reliability / Brier / ROC** (:class:`ProbabilityAccumulator`): pysteps' ``reldiag_accum`` applies
  ``min_count`` per *update call* (bins with few pixels in one slot are silently dropped), and its
  ROC probability thresholds ``linspace(0, 1, n)`` do not fall between the ensemble's probabilities
  ``k/m``.  We keep one table of pixel counts per (number of members at or above the threshold k,
  observed event yes/no); the reliability diagram (pysteps' bin edges), the Brier score and the ROC
  curve at every ``P >= k/m`` follow exactly from it, whatever the number of slots.

Events are ``R >= thr`` (as in pysteps' probscores).  The forecast probability is the fraction of
members at or above the threshold.  Callers pass only valid pixels (truth not NaN): arrays
``(m, n)`` for members and ``(n,)`` for truth, except :class:`CRPSAccumulator`, which takes fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

WET_MM_H = 0.1
POOL_SIZES: tuple[int, ...] = (1, 2, 4)


def crps_pixels(members: np.ndarray, truth: np.ndarray, fair: bool = False) -> np.ndarray:
    """CRPS (mm/h) of each pixel: ``members`` (m, n), ``truth`` (n,) -> (n,).

    Empirical-CDF CRPS ``E|X - y| - E|X - X'| / 2`` with the m^2 normalisation (the same score as
    pysteps' ``CRPS``); a single member gives the absolute error. ``fair``: the spread term over the
    m(m-1) distinct pairs instead (Ferro 2014, Zamo & Naveau 2018 "eFAIR", WeatherBench 2's CRPS), an
    unbiased estimate of the CRPS of the distribution the members are drawn from: the m^2 form adds
    ``E|X - X'| / (2m)``, which favours larger ensembles (about 10 % of the score with 8 members).
    """
    error, spread = _crps_terms(members, truth)
    m = members.shape[0]
    return error - spread / (m * (m - 1) if fair and m > 1 else m**2)


def _crps_terms(members: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mean_i |X_i - y|`` and ``sum_ij |X_i - X_j| / 2`` per pixel (sorted members: one sort)."""
    m = members.shape[0]
    ordered = np.sort(members, axis=0)
    weights = (2.0 * np.arange(m) - m + 1.0)[:, None]
    return np.abs(members - truth).mean(axis=0), (weights * ordered).sum(axis=0)


def block_mean(field: np.ndarray, block: int) -> np.ndarray:
    """Mean over ``block`` x ``block`` pixel blocks of the last two axes (edges that do not fill a block are
    cropped); a block with any NaN is NaN."""
    if block == 1:
        return field
    ny, nx = field.shape[-2] // block, field.shape[-1] // block
    cropped = field[..., : ny * block, : nx * block]
    return cropped.reshape(*field.shape[:-2], ny, block, nx, block).mean(axis=(-3, -1))


class CRPSAccumulator:
    """Mean CRPS (mm/h) per pixel and on block-averaged (pooled) fields, e.g. 2 x 2 and 4 x 4 pixels;
    also the fair CRPS per pixel (:func:`crps_pixels`)."""

    def __init__(self, pool_sizes: Sequence[int] = POOL_SIZES):
        self.pool_sizes = [int(b) for b in pool_sizes]
        self.sums = {b: 0.0 for b in self.pool_sizes}
        self.counts = {b: 0 for b in self.pool_sizes}
        self.fair_sum = 0.0

    def update(self, members: np.ndarray, truth: np.ndarray) -> None:
        """Add one slot: ``members`` (m, y, x) and ``truth`` (y, x) in mm/h, NaN where invalid.

        A pooled block is scored only when all its pixels are valid.
        """
        for b in self.pool_sizes:
            f, o = block_mean(members, b), block_mean(truth, b)
            ok = np.isfinite(o) & np.isfinite(f).all(axis=0)
            if ok.any():
                error, spread = _crps_terms(f[:, ok], o[ok])  # the m^2 and the fair form share one sort
                m = f.shape[0]
                self.sums[b] += float((error - spread / m**2).sum())
                self.counts[b] += int(ok.sum())
                if b == 1:
                    self.fair_sum += float((error - spread / (m * (m - 1) if m > 1 else 1)).sum())

    def compute(self) -> dict:
        """``{"1x1": crps, "2x2": ..., "n_1x1": pixels, ..., "fair_1x1": fair crps}`` in mm/h."""
        out: dict = {}
        for b in self.pool_sizes:
            out[f"{b}x{b}"] = self.sums[b] / self.counts[b] if self.counts[b] else float("nan")
            out[f"n_{b}x{b}"] = self.counts[b]
        if 1 in self.counts:
            out["fair_1x1"] = self.fair_sum / self.counts[1] if self.counts[1] else float("nan")
        return out


class RankHistogram:
    """Rank histogram of the truth among m members (m + 1 bins), seeded random tie-breaking."""

    def __init__(self, members: int, wet_mm_h: float | None = WET_MM_H, seed: int = 0):
        self.m = int(members)
        self.wet_mm_h = wet_mm_h
        self.counts = np.zeros(self.m + 1, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def update(self, members: np.ndarray, truth: np.ndarray) -> None:
        """Add valid pixels: ``members`` (m, n), ``truth`` (n,) in mm/h.

        With ``wet_mm_h`` set, values below it count as 0 and all-dry pairs are left out.
        """
        if members.shape[0] != self.m:
            raise ValueError(f"expected {self.m} members, got {members.shape[0]}")
        if self.wet_mm_h is not None:
            keep = (truth >= self.wet_mm_h) | (members >= self.wet_mm_h).any(axis=0)
            members = np.where(members[:, keep] >= self.wet_mm_h, members[:, keep], 0.0)
            truth = np.where(truth[keep] >= self.wet_mm_h, truth[keep], 0.0)
        below = (members < truth).sum(axis=0)
        equal = (members == truth).sum(axis=0)
        rank = below + np.floor(self.rng.random(truth.size) * (equal + 1)).astype(np.int64)
        self.counts += np.bincount(np.minimum(rank, below + equal), minlength=self.m + 1)

    def compute(self) -> dict:
        """Counts, relative frequencies and the chi-square statistic against a flat histogram."""
        n = int(self.counts.sum())
        freq = self.counts / n if n else np.full(self.m + 1, np.nan)
        expected = n / (self.m + 1)
        chi2 = float(((self.counts - expected) ** 2 / expected).sum()) if n else float("nan")
        return {"counts": [int(c) for c in self.counts], "frequencies": [float(v) for v in freq],
                "pairs": n, "chi2": chi2, "dof": self.m}


class SpreadSkill:
    """Spread/skill ratio ``sqrt(mean ensemble variance) * sqrt(1 + 1/m) / RMSE(ensemble mean)``.

    Variance with ddof=1 per pixel, averaged over all valid pixels and slots; the sqrt(1 + 1/m) factor
    makes the ratio 1 for a calibrated finite ensemble (Fortin et al. 2014).
    """

    def __init__(self) -> None:
        self.var_sum = self.sq_err_sum = 0.0
        self.n = 0
        self.m: int | None = None

    def update(self, members: np.ndarray, truth: np.ndarray) -> None:
        """Add valid pixels: ``members`` (m, n), ``truth`` (n,) in mm/h (m >= 2)."""
        self.m = members.shape[0]
        self.var_sum += float(members.var(axis=0, ddof=1).sum())
        self.sq_err_sum += float(((members.mean(axis=0) - truth) ** 2).sum())
        self.n += truth.size

    def compute(self) -> dict:
        """``{"spread", "rmse_mean", "ratio"}`` (mm/h, mm/h, unitless)."""
        if not self.n or not self.m:
            return {"spread": float("nan"), "rmse_mean": float("nan"), "ratio": float("nan")}
        spread = np.sqrt(self.var_sum / self.n)
        rmse = np.sqrt(self.sq_err_sum / self.n)
        ratio = spread * np.sqrt(1.0 + 1.0 / self.m) / rmse if rmse > 0 else float("nan")
        return {"spread": float(spread), "rmse_mean": float(rmse), "ratio": float(ratio)}


def reliability_bin_edges(n_bins: int = 10) -> np.ndarray:
    """Probability bin edges of the reliability diagram (pysteps' ``reldiag_init`` edges)."""
    return np.linspace(-1e-6, 1 + 1e-6, int(n_bins + 1))


def probability_scores(table: np.ndarray, n_bins: int = 10, min_count: int = 10) -> dict:
    """Brier score, ROC and reliability diagram from a count table ``(m + 1, 2)``.

    ``table[k, e]`` is the number of pixels with k members at or above the threshold and observed
    event ``e`` (0/1).  The ROC has one point per decision rule ``P >= k/m`` (k = m..1) plus (0, 0) and
    (1, 1); its area is the trapezoid rule.  Reliability bins with fewer than ``min_count`` pixels
    get NaN probability and frequency (their counts are still reported).
    """
    m = table.shape[0] - 1
    p = np.arange(m + 1) / m
    n0, n1 = table[:, 0].astype(float), table[:, 1].astype(float)
    n = n0.sum() + n1.sum()
    nan = float("nan")
    brier = float((n1 * (p - 1.0) ** 2 + n0 * p**2).sum() / n) if n else nan
    hits, fas = np.cumsum(n1[::-1])[::-1], np.cumsum(n0[::-1])[::-1]   # pixels with >= k members
    with np.errstate(divide="ignore", invalid="ignore"):
        pod = np.append(hits / n1.sum(), 0.0)        # k = 0..m, then "never" (0, 0)
        pofd = np.append(fas / n0.sum(), 0.0)
        area = float(np.sum((pofd[:-1] - pofd[1:]) * (pod[:-1] + pod[1:]) / 2.0))
    idx = np.digitize(p, reliability_bin_edges(n_bins), right=True) - 1
    count = np.bincount(idx, weights=n0 + n1, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        fc = np.bincount(idx, weights=(n0 + n1) * p, minlength=n_bins) / count
        obs = np.bincount(idx, weights=n1, minlength=n_bins) / count
    small = count < max(min_count, 1)
    fc[small], obs[small] = np.nan, np.nan
    return {"pixels": int(n), "base_rate": float(n1.sum() / n) if n else nan, "brier": brier,
            "roc": {"prob_thresholds": [float(v) for v in p[1:]], "pod": [float(v) for v in pod[1:-1]],
                    "pofd": [float(v) for v in pofd[1:-1]], "area": area},
            "reliability": {"bin_edges": [float(v) for v in reliability_bin_edges(n_bins)],
                            "forecast_probability": [float(v) for v in fc],
                            "observed_frequency": [float(v) for v in obs],
                            "counts": [int(c) for c in count]}}


class ProbabilityAccumulator:
    """Count tables (k members at or above threshold, observed event) per threshold label."""

    def __init__(self, labels: Sequence[str], members: int, n_bins: int = 10, min_count: int = 10):
        self.m = int(members)
        self.tables = {label: np.zeros((self.m + 1, 2), dtype=np.int64) for label in labels}
        self.n_bins, self.min_count = int(n_bins), int(min_count)

    def update(self, members: np.ndarray, truth: np.ndarray, thresholds: Mapping[str, float | None]) -> None:
        """Add valid pixels (``members`` (m, n), ``truth`` (n,), mm/h) with this slot's thresholds (mm/h);
        a label whose threshold is ``None`` is skipped for the slot."""
        for label, table in self.tables.items():
            thr = thresholds.get(label)
            if thr is None:
                continue
            k = (members >= thr).sum(axis=0)
            event = (truth >= thr).astype(np.int64)
            table += np.bincount(2 * k + event, minlength=2 * (self.m + 1)).reshape(self.m + 1, 2)

    def compute(self) -> dict:
        """``{label: probability_scores(...)}``."""
        return {label: probability_scores(t, self.n_bins, self.min_count) for label, t in self.tables.items()}
