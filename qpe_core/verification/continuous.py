"""Streaming continuous scores of rain rates (mm/h): bias, MAE, RMSE and Pearson r.

All scores come from pysteps' ``detcontscores`` streaming accumulator (``det_cont_fct_init`` /
``_accum`` / ``_compute``, numerically stable parallel updates of means, variances and covariance),
on two pixel sets:

* ``"all"``: every valid pixel (truth not NaN);
* ``"wet"``: valid pixels where the truth **or** the forecast is at or above 0.1 mm/h
  (``truth >= 0.1 or forecast >= 0.1``), i.e. pysteps' "single" conditioning with our ``>=``
  convention; pairs that are dry in both are left out.

``bias`` is the mean error forecast - truth (mm/h).  The caller passes 1-D arrays of valid pixels;
a slot with no pixel in a set is skipped for that set (pysteps' update would turn its empty means
into NaN and spoil the totals).
"""

from __future__ import annotations

import numpy as np
from pysteps.verification import detcontscores

WET_MM_H = 0.1


def _empty() -> dict:
    nan = float("nan")
    return {"n": 0, "bias": nan, "MAE": nan, "RMSE": nan, "r": nan, "mean_forecast": nan, "mean_truth": nan}


class ContinuousAccumulator:
    """Continuous scores of one forecast on all and on wet pixels, accumulated slot by slot."""

    def __init__(self, wet_mm_h: float = WET_MM_H):
        self.wet_mm_h = float(wet_mm_h)
        self.err = {"all": detcontscores.det_cont_fct_init(), "wet": detcontscores.det_cont_fct_init()}
        self.n = {"all": 0, "wet": 0}

    def update(self, forecast: np.ndarray, truth: np.ndarray) -> None:
        """Add one slot: 1-D arrays of valid pixels in mm/h."""
        forecast = np.asarray(forecast, dtype="float64")
        truth = np.asarray(truth, dtype="float64")
        wet = (truth >= self.wet_mm_h) | (forecast >= self.wet_mm_h)
        for key, (f, o) in {"all": (forecast, truth), "wet": (forecast[wet], truth[wet])}.items():
            if f.size:
                detcontscores.det_cont_fct_accum(self.err[key], f, o)
                self.n[key] += int(f.size)

    def compute(self) -> dict:
        """``{"all"|"wet": {"n", "bias", "MAE", "RMSE", "r", "mean_forecast", "mean_truth"}}`` (mm/h; r unitless)."""
        out = {}
        for key, err in self.err.items():
            if not self.n[key]:
                out[key] = _empty()
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                res = detcontscores.det_cont_fct_compute(err, ["ME", "MAE", "RMSE", "corr_p"])
            out[key] = {"n": self.n[key], "bias": float(res["ME"]), "MAE": float(res["MAE"]),
                        "RMSE": float(res["RMSE"]), "r": float(res["corr_p"]),
                        "mean_forecast": float(err["mpred"]), "mean_truth": float(err["mobs"])}
        return out
