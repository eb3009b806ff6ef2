"""Temporal stack: the model input for one valid time, read from the archive cube.

``stack(lag, channel, y, x)`` holds SEVIRI brightness temperatures (K) at
``valid_time + lag`` for each lag (minutes, 0 first, then older slots).  Policy for
missing slots:

* ``gaps="error"`` (default): any missing lag slot raises :class:`MissingSlotError`
  naming every missing slot;
* ``gaps="mask"``: older lags may be missing (filled with NaN, ``available`` = 0);
  the current slot (lag 0) is always required.

``valid(lag, y, x)`` is 1 where every channel is finite, the pixel-level mask a model
receives as an extra input channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from qpe_core.archive import Archive
from qpe_core.config import DEFAULT_LAGS
from qpe_core.errors import MissingSlotError, QpeError
from qpe_core.grids import attach_grid
from qpe_core.slots import BT_ATTRS
from qpe_core.timeutil import check_on_grid, iso


def lag_times(valid_time, lags: Sequence[int] = DEFAULT_LAGS, slot_minutes: int = 15) -> list[pd.Timestamp]:
    """Slot times ``valid_time + lag`` (UTC) for each lag in minutes; lags must be whole slots."""
    t = check_on_grid(valid_time, slot_minutes, "valid time")
    bad = [lag for lag in lags if lag % slot_minutes or lag > 0]
    if bad:
        raise QpeError(f"lags {bad} are not non-positive multiples of the {slot_minutes}-minute slot")
    return [t + pd.Timedelta(minutes=int(lag)) for lag in lags]


def missing_lags(archive: Archive, valid_time, lags: Sequence[int] = DEFAULT_LAGS) -> list[pd.Timestamp]:
    """Slots of the stack for ``valid_time`` that are not complete in ``archive``."""
    return [t for t in lag_times(valid_time, lags, archive.slot_minutes) if not archive.has_slot(t, "bt")]


def temporal_stack(archive: Archive, valid_time, lags: Sequence[int] = DEFAULT_LAGS,
                   channels: Sequence[str] | None = None, gaps: str = "error") -> xr.Dataset:
    """Read the ``(lag, channel, y, x)`` stack for ``valid_time`` (UTC) from ``archive``.

    Returns a Dataset with ``bt`` (K), ``valid`` (1/0 per pixel) and ``available`` (1/0 per lag),
    on the archive grid with its CRS.
    """
    if gaps not in ("error", "mask"):
        raise QpeError(f"gap policy must be 'error' or 'mask', got {gaps!r}")
    channels = list(channels or archive.channels)
    unknown = [c for c in channels if c not in archive.channels]
    if unknown:
        raise QpeError(f"channels {unknown} are not in archive {archive.url} (has {archive.channels})")
    times = lag_times(valid_time, lags, archive.slot_minutes)
    missing = [t for t in times if not archive.has_slot(t, "bt")]
    if missing and (gaps == "error" or times[0] in missing):
        names = ", ".join(f"{iso(t)} (lag {int((t - times[0]) / pd.Timedelta(minutes=1))} min)" for t in missing)
        raise MissingSlotError(f"stack for {iso(times[0])}: missing SEVIRI slot(s) {names} in {archive.url}")
    ny, nx = archive.group["bt"].shape[-2:]
    bt = np.full((len(times), len(channels), ny, nx), np.nan, dtype="float32")
    for k, t in enumerate(times):
        if t not in missing:
            bt[k] = archive.read_bt(t, channels)
    available = np.array([t not in missing for t in times], dtype="uint8")
    ds = xr.Dataset(
        {
            "bt": (("lag", "channel", "y", "x"), bt, dict(BT_ATTRS)),
            "valid": (("lag", "y", "x"), np.isfinite(bt).all(axis=1).astype("uint8"),
                      {"long_name": "1 where all channels are finite", "units": "1"}),
            "available": (("lag",), available, {"long_name": "1 if the lag slot is in the archive"}),
        },
        coords={
            "lag": ("lag", np.asarray(lags, dtype="int32"), {"units": "min", "long_name": "lag from valid time"}),
            "channel": ("channel", channels),
            "slot_time": ("lag", np.array(times, dtype="datetime64[ns]")),
            "time": times[0].to_datetime64(),
        },
        attrs={"archive": archive.url, "missing_slots": [iso(t) for t in missing]},
    )
    return attach_grid(ds, archive.area)
