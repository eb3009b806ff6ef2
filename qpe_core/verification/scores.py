"""Streaming scores for deterministic fields and ensembles, in mm/h.

pysteps' accumulators do the categorical scores (CSI) and the fractions skill score
(FSS); the ensemble CRPS is :func:`qpe_core.verification.ensemble.crps_pixels` (exact
empirical-CDF form: pysteps' ``CRPS_accum`` is wrong when the truth equals a member,
e.g. members (0, 1) and truth 0 give 0 instead of 0.25 mm/h, the common case at
zero rain); this module adds the continuous and realism figures
(MAE, wet fraction, quantiles, spread/skill) and keeps everything streaming:
``update()`` once per slot, ``compute()`` at the end.  Pixels where the truth is
NaN (no radar) are left out everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pysteps.verification import detcatscores, spatialscores

from qpe_core.verification.ensemble import crps_pixels

WET_MM_H = 0.1


class Scorer:
    """Scores of one model over many slots.

    ``update(members, truth)`` takes ``members`` (member, y, x) and ``truth`` (y, x) in mm/h.
    Deterministic scores use the ensemble mean and member 0 ("a single member").
    """

    def __init__(self, thresholds: Sequence[float] = (1.0,), fss_scales: Sequence[int] = (1, 8, 32),
                 quantile_sample: int = 20000, seed: int = 0):
        self.thresholds, self.fss_scales = list(thresholds), list(fss_scales)
        self.cat = {thr: detcatscores.det_cat_fct_init(thr) for thr in self.thresholds}
        self.fss = {(thr, s): spatialscores.fss_init(thr, s) for thr in self.thresholds for s in self.fss_scales}
        self.fss_member = {(thr, s): spatialscores.fss_init(thr, s) for thr in self.thresholds
                           for s in self.fss_scales}
        self.crps_sum, self.crps_n = 0.0, 0
        self.abs_err = self.sq_err_mean = self.var_sum = 0.0
        self.n_pix = 0
        self.members = None
        self.wet_f = self.wet_o = 0.0
        self.rng = np.random.default_rng(seed)
        self.samples_f: list[np.ndarray] = []
        self.samples_o: list[np.ndarray] = []
        self.quantile_sample = quantile_sample

    def update(self, members: np.ndarray, truth: np.ndarray) -> None:
        members = np.asarray(members, dtype="float64")
        truth = np.asarray(truth, dtype="float64")
        ok = np.isfinite(truth) & np.isfinite(members).all(axis=0)
        f = np.where(ok, members, np.nan)
        o = np.where(ok, truth, np.nan)
        mean = np.nanmean(f, axis=0) if f.shape[0] > 1 else f[0]
        self.members = f.shape[0]
        for thr in self.thresholds:
            detcatscores.det_cat_fct_accum(self.cat[thr], mean, o)
            for s in self.fss_scales:
                spatialscores.fss_accum(self.fss[(thr, s)], mean, o)
                spatialscores.fss_accum(self.fss_member[(thr, s)], f[0], o)
        if f.shape[0] > 1:
            self.crps_sum += float(crps_pixels(f[:, ok], o[ok]).sum())
            self.crps_n += int(ok.sum())
            self.var_sum += float(np.sum(np.var(f[:, ok], axis=0, ddof=1)))
        self.abs_err += float(np.sum(np.abs(mean[ok] - o[ok])))
        self.sq_err_mean += float(np.sum((mean[ok] - o[ok]) ** 2))
        self.n_pix += int(ok.sum())
        self.wet_f += float(np.sum(f[:, ok] > WET_MM_H)) / f.shape[0]
        self.wet_o += float(np.sum(o[ok] > WET_MM_H))
        idx = self.rng.choice(int(ok.sum()), size=min(self.quantile_sample, int(ok.sum())), replace=False)
        self.samples_f.append(f[:, ok][:, idx].ravel())
        self.samples_o.append(o[ok][idx])

    def compute(self) -> dict:
        """All scores as a flat dict of floats (NaN where undefined, e.g. CRPS of one member)."""
        n = max(self.n_pix, 1)
        out = {"pixels": self.n_pix, "members": self.members, "MAE": self.abs_err / n}
        for thr in self.thresholds:
            out[f"CSI_{thr:g}"] = float(detcatscores.det_cat_fct_compute(self.cat[thr], ["CSI"])["CSI"])
            for s in self.fss_scales:
                out[f"FSS_{thr:g}_{s}px"] = float(spatialscores.fss_compute(self.fss[(thr, s)]))
                out[f"FSS_member_{thr:g}_{s}px"] = float(spatialscores.fss_compute(self.fss_member[(thr, s)]))
        m = self.members or 1
        if m > 1:
            out["CRPS"] = self.crps_sum / self.crps_n if self.crps_n else float("nan")
            spread = np.sqrt(self.var_sum / n)
            rmse = np.sqrt(self.sq_err_mean / n)
            out["spread_skill"] = float(np.sqrt((m + 1) / m) * spread / rmse) if rmse > 0 else float("nan")
        else:
            out["CRPS"] = out["MAE"]  # the CRPS of a single deterministic value is its absolute error
            out["spread_skill"] = float("nan")
        out["wet_fraction"] = self.wet_f / n
        out["wet_fraction_truth"] = self.wet_o / n
        f, o = np.concatenate(self.samples_f), np.concatenate(self.samples_o)
        out["q99"], out["q99_truth"] = float(np.quantile(f, 0.99)), float(np.quantile(o, 0.99))
        return out
