"""The "calibrated slot on the grid" boundary: the one xarray form every reader
and the simulator produce and the archive consumes.

* SEVIRI slot: ``bt(channel, y, x)`` float32 brightness temperature in K, NaN for
  space pixels, missing segments and anything not observed.
* Radar slot: ``rain(y, x)`` float32 rain rate in mm/h, NaN outside radar coverage,
  0 where the radar saw no echo; optional ``quality(y, x)`` in [0, 1].

Both carry a scalar ``time`` coordinate (nominal slot start, naive UTC), grid
coordinates ``x``/``y`` and a ``spatial_ref`` grid mapping (see :mod:`qpe_core.grids`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from qpe_core.grids import attach_grid, get_spec
from qpe_core.timeutil import to_utc

BT_ATTRS = {"standard_name": "toa_brightness_temperature", "long_name": "SEVIRI brightness temperature",
            "units": "K"}
RAIN_ATTRS = {"standard_name": "rainfall_rate", "long_name": "surface rain rate", "units": "mm h-1"}
QUALITY_ATTRS = {"long_name": "radar quality index", "units": "1", "valid_range": [0.0, 1.0]}


def _check_shape(arr: np.ndarray, area: str, what: str) -> None:
    spec = get_spec(area)
    if arr.shape[-2:] != (spec.height, spec.width):
        raise ValueError(f"{what} has shape {arr.shape}, grid {area} needs (..., {spec.height}, {spec.width})")


def seviri_slot(bt: np.ndarray, channels: Sequence[str], time, area: str, **attrs) -> xr.Dataset:
    """Wrap ``bt`` (channel, y, x) in K as a SEVIRI slot Dataset on ``area``."""
    bt = np.asarray(bt, dtype="float32")
    _check_shape(bt, area, "bt")
    if bt.ndim != 3 or bt.shape[0] != len(channels):
        raise ValueError(f"bt must be (channel, y, x) with {len(channels)} channels, got {bt.shape}")
    ds = xr.Dataset(
        {"bt": (("channel", "y", "x"), bt, dict(BT_ATTRS))},
        coords={"channel": ("channel", list(channels)), "time": to_utc(time).to_datetime64()},
        attrs=dict(attrs),
    )
    ds["time"].attrs.update({"standard_name": "time", "long_name": "nominal slot start (UTC)"})
    return attach_grid(ds, area)


def radar_slot(rain: np.ndarray, time, area: str, quality: np.ndarray | None = None, **attrs) -> xr.Dataset:
    """Wrap ``rain`` (y, x) in mm/h (and optional quality) as a radar slot Dataset."""
    rain = np.asarray(rain, dtype="float32")
    _check_shape(rain, area, "rain")
    data = {"rain": (("y", "x"), rain, dict(RAIN_ATTRS))}
    if quality is not None:
        quality = np.asarray(quality, dtype="float32")
        _check_shape(quality, area, "quality")
        data["quality"] = (("y", "x"), quality, dict(QUALITY_ATTRS))
    ds = xr.Dataset(data, coords={"time": to_utc(time).to_datetime64()}, attrs=dict(attrs))
    ds["time"].attrs.update({"standard_name": "time", "long_name": "nominal slot start (UTC)"})
    return attach_grid(ds, area)
