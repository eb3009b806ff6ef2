"""Slot-time helpers.  All times are UTC and handled as naive ``datetime64[ns]``
(``pandas.Timestamp`` without tz) once parsed; inputs with an offset are
converted to UTC first."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from qpe_core.errors import QpeError

SLOT_MINUTES = 15


def to_utc(value: str | dt.datetime | np.datetime64 | pd.Timestamp) -> pd.Timestamp:
    """Parse ``value`` (ISO string, datetime, numpy datetime) to a naive UTC Timestamp."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise QpeError(f"cannot parse time {value!r}: expected ISO 8601, e.g. 2024-06-01T12:00Z") from exc
    if ts is pd.NaT:
        raise QpeError(f"cannot parse time {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    try:
        return ts.as_unit("ns")
    except ValueError:  # out of bounds: "June" parses as year 1
        raise QpeError(f"cannot parse time {value!r}: expected ISO 8601, e.g. 2024-06-01T12:00Z "
                       f"(read as {ts}, outside 1677-2262)") from None


def floor_slot(value, minutes: int = SLOT_MINUTES) -> pd.Timestamp:
    """Start of the ``minutes`` slot that contains ``value`` (UTC)."""
    return to_utc(value).floor(f"{minutes}min")


def check_on_grid(value, minutes: int = SLOT_MINUTES, what: str = "time") -> pd.Timestamp:
    """Return ``value`` as UTC if it lies exactly on the slot grid, else raise."""
    ts = to_utc(value)
    if ts != ts.floor(f"{minutes}min"):
        raise QpeError(
            f"{what} {ts.isoformat()}Z is not on the {minutes}-minute slot grid "
            f"(nearest slot start {ts.floor(f'{minutes}min').isoformat()}Z)"
        )
    return ts


def slot_range(start, periods: int, minutes: int = SLOT_MINUTES) -> pd.DatetimeIndex:
    """``periods`` consecutive slot start times from ``start`` (on the grid)."""
    return pd.date_range(check_on_grid(start, minutes, "start"), periods=periods, freq=f"{minutes}min")


def iso(ts) -> str:
    """Compact ISO string with a Z suffix, e.g. ``2024-06-01T12:00Z``."""
    return to_utc(ts).strftime("%Y-%m-%dT%H:%MZ")
