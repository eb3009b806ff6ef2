"""Ensemble statistics: ``rain(member, y, x)`` in mm/h -> mean, quantiles, exceedance probabilities.

Variables of the result (all ``(y, x)`` float32, NaN where any member is NaN):

==================  =====  ===================================================
``mean``            mm/h   ensemble mean rain rate
``p50``, ``p90``    mm/h   50th / 90th percentile over members
``prob_gt_0p1``     1      fraction of members with rain rate > 0.1 mm/h
``prob_gt_1``       1      ... > 1 mm/h
``prob_gt_5``       1      ... > 5 mm/h
``prob_gt_10``      1      ... > 10 mm/h
==================  =====  ===================================================

Quantiles are ``numpy.quantile(..., method="linear")`` over the member axis
(Hyndman & Fan type 7, numpy's default), computed in float64 and stored as float32.
Probabilities are counts of members strictly above the threshold divided by the
member count, so with ``M`` members they are exact multiples of ``1/M``; the comparison
is made in the input's precision (a float32 rain rate equal to ``float32(0.1)`` is not
above 0.1 mm/h).

Coordinates (``x``, ``y``, ``time``, ``spatial_ref``) and the ``grid_mapping`` of the
input are kept, so the CRS travels with the statistics (``ds.rio.crs`` works).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from qpe_core.errors import QpeError
from qpe_core.slots import RAIN_ATTRS
from qpe_core.timeutil import iso, to_utc

THRESHOLDS: tuple[float, ...] = (0.1, 1.0, 5.0, 10.0)  # mm/h
QUANTILES: dict[str, float] = {"p50": 0.5, "p90": 0.9}
QUANTILE_METHOD = "linear"
UNITS = RAIN_ATTRS["units"]  # "mm h-1" (CF/UDUNITS spelling of mm/h)


def prob_name(threshold: float) -> str:
    """Variable name of P(R > threshold): 0.1 -> ``prob_gt_0p1``, 1 -> ``prob_gt_1``."""
    text = f"{float(threshold):g}".replace(".", "p").replace("-", "m")
    return f"prob_gt_{text}"


PROB_VARS: tuple[str, ...] = tuple(prob_name(t) for t in THRESHOLDS)
STAT_VARS: tuple[str, ...] = ("mean", *QUANTILES, *PROB_VARS)


def stat_attrs(name: str) -> dict:
    """CF attributes of statistic ``name`` (one of :data:`STAT_VARS`)."""
    if name == "mean":
        return {"standard_name": "rainfall_rate", "long_name": "ensemble mean surface rain rate",
                "units": UNITS, "cell_methods": "realization: mean"}
    if name in QUANTILES:
        q = QUANTILES[name]
        attrs = {"standard_name": "rainfall_rate",
                 "long_name": f"{round(q * 100)}th percentile over members of surface rain rate",
                 "units": UNITS, "quantile": q,
                 "quantile_method": f"numpy.quantile method={QUANTILE_METHOD!r} (Hyndman-Fan type 7)"}
        if q == 0.5:
            attrs["cell_methods"] = "realization: median"
        return attrs
    for thr in THRESHOLDS:
        if name == prob_name(thr):
            # CF has no standard name for an exceedance probability; the threshold is described
            # in attributes (as IMPROVER / CF probability conventions do).
            return {"long_name": f"probability of surface rain rate above {thr:g} mm/h",
                    "units": "1", "valid_range": [0.0, 1.0], "threshold": float(thr),
                    "threshold_units": UNITS, "relative_to_threshold": "greater_than",
                    "comment": "fraction of ensemble members with rain rate strictly above the threshold"}
    raise KeyError(f"unknown statistic {name!r}; known: {', '.join(STAT_VARS)}")


def _rain(ens: xr.Dataset | xr.DataArray) -> xr.DataArray:
    rain = ens["rain"] if isinstance(ens, xr.Dataset) else ens
    if "member" not in rain.dims or rain.dims[-2:] != ("y", "x"):
        raise QpeError(f"ensemble must be rain(member, y, x), got dims {rain.dims}")
    return rain


def ensemble_stats(ens: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """Mean, p50, p90 and exceedance probabilities of ``rain(member, y, x)`` (mm/h).

    ``ens`` is the Dataset of :func:`qpe_core.training.inference.predict` (or its ``rain``
    DataArray); its attributes (model_kind, members, seed, input_slots, ...) are kept.
    """
    rain = _rain(ens)
    raw = np.moveaxis(np.asarray(rain.values), rain.dims.index("member"), 0)
    if raw.dtype.kind != "f":
        raw = raw.astype("float32")
    members = raw.shape[0]
    if members < 1:
        raise QpeError("ensemble has no members")
    invalid = np.isnan(raw).any(axis=0)
    raw = np.where(invalid[None], raw.dtype.type(0), raw)  # no NaN warnings; invalid pixels reset below
    filled = raw.astype("float64")

    out: dict[str, np.ndarray] = {"mean": filled.mean(axis=0)}
    qs = np.quantile(filled, list(QUANTILES.values()), axis=0, method=QUANTILE_METHOD)
    out.update(zip(QUANTILES, qs))
    for thr in THRESHOLDS:
        # compare in the data's own precision: a float32 0.1 is not "above 0.1 mm/h"
        out[prob_name(thr)] = (raw > raw.dtype.type(thr)).sum(axis=0) / members
    grid_mapping = rain.attrs.get("grid_mapping", "spatial_ref" if "spatial_ref" in rain.coords else None)
    data_vars = {}
    for name in STAT_VARS:
        arr = out[name].astype("float32")
        arr[invalid] = np.nan
        attrs = stat_attrs(name)
        if grid_mapping:
            attrs["grid_mapping"] = grid_mapping
        data_vars[name] = (rain.dims[-2:], arr, attrs)
    coords = {k: v for k, v in rain.coords.items() if "member" not in v.dims}
    attrs = dict(ens.attrs) if isinstance(ens, xr.Dataset) else {}
    attrs.update({"members": int(members), "thresholds_mm_h": list(THRESHOLDS),
                  "quantile_method": QUANTILE_METHOD})
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def product_metadata(ds: xr.Dataset) -> dict:
    """Deterministic, JSON-able description of one product slot (STAC-style property names).

    Taken from the attributes :func:`~qpe_core.training.inference.predict` sets; run-dependent
    values (wall-clock ``seconds``) are left out so that re-running a slot gives the same bytes.
    """
    if "time" not in ds.coords or ds["time"].ndim:
        raise QpeError("product needs one scalar 'time' coordinate (the valid time)")
    a = ds.attrs
    members = int(a.get("members", ds.sizes.get("member", 0)))
    return {
        "datetime": to_utc(ds["time"].values).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "area": a.get("area"),
        "model_kind": str(a.get("model_kind", "unknown")),
        "model_card": str(a.get("model_card", a.get("checkpoint", ""))),
        "members": members,
        "seed": int(a.get("seed", 0)),
        "steps": int(a.get("steps", 0)),
        "input_slots": [iso(t) for t in _as_list(a.get("input_slots"))],
        "missing_inputs": [iso(t) for t in _as_list(a.get("missing_inputs"))],
    }


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.replace(";", ",").split(",") if v.strip()]
    return list(np.atleast_1d(value).tolist())
