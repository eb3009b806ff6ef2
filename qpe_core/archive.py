"""The archive cube: one Zarr v3 store per grid holding every slot ever ingested.

Layout (all arrays share the ``time`` axis; ``x``/``y`` are grid coordinates)::

    bt(time, channel, y, x)   float32  K      SEVIRI brightness temperature
    rain(time, y, x)          float32  mm/h   radar rain rate
    rain_quality(time, y, x)  float32  1      radar quality index (NaN if unknown)
    bt_coverage(time)         float32  1      fraction of finite bt pixels; NaN = slot not complete
    rain_coverage(time)       float32  1      fraction of finite rain pixels; NaN = slot not complete
    time(time)                int64    minutes since 1970-01-01 (explicit encoding, UTC)

The time axis, its growth and locking are those of :class:`qpe_core.timecube.TimeCube`.
Write protocol for one slot: coverage <- NaN, data chunks, coverage <- value.  A
reader treats a slot as present only when its coverage is finite, so a crash
mid-write never exposes a half slot, and a rewrite with the same data leaves the
same bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from qpe_core.errors import ArchiveError, MissingSlotError
from qpe_core.grids import get_spec
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY, below_quality_to_nan
from qpe_core.slots import BT_ATTRS, QUALITY_ATTRS, RAIN_ATTRS
from qpe_core.timecube import (
    ALLOC_BLOCK,  # noqa: F401  (re-exported for callers and tests)
    GRID_MAPPING,
    SlotWrite,
    TimeCube,
    coord_array,
    create_group,
    data_array,
    month_start,
)
from qpe_core.timeutil import iso, to_utc


class Archive(TimeCube):
    """A handle on an archive cube.  Create with :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    KIND = "archive"
    VERSION_ATTR = "qpe_archive_version"
    TIME_VARS = ("bt", "rain", "rain_quality", "bt_coverage", "rain_coverage")
    REQUIRED_ATTRS = ("area", "slot_minutes", "channels")

    def __init__(self, url, group, storage_options=None):
        super().__init__(url, group, storage_options)
        self.channels: list[str] = list(self.attrs["channels"])

    @classmethod
    def create(cls, url: str, area: str, channels: list[str], slot_minutes: int = 15, origin=None,
               storage_options: dict | None = None) -> Archive:
        """Create an empty archive.  The time axis starts on the first day of the month of
        ``origin`` (UTC), by default of the first slot written; earlier slots cannot be written."""
        spec = get_spec(area)
        group = create_group(url, storage_options, area, "nominal slot start (UTC)")
        ny, nx, nc = spec.height, spec.width, len(channels)
        coord_array(group, "channel", np.array(channels, dtype=str), ("channel",), {"long_name": "SEVIRI channel"})
        data_array(group, "bt", (0, nc, ny, nx), (1, 1, ny, nx), ["time", "channel", "y", "x"],
                   {**BT_ATTRS, **GRID_MAPPING})
        data_array(group, "rain", (0, ny, nx), (1, ny, nx), ["time", "y", "x"], {**RAIN_ATTRS, **GRID_MAPPING})
        data_array(group, "rain_quality", (0, ny, nx), (1, ny, nx), ["time", "y", "x"],
                   {**QUALITY_ATTRS, **GRID_MAPPING})
        for kind in ("bt", "rain"):
            data_array(group, f"{kind}_coverage", (0,), (1,), ["time"], {
                "long_name": f"fraction of grid with valid {kind}; NaN while the slot is not complete",
                "units": "1"})
        group.attrs.update({
            cls.VERSION_ATTR: cls.FORMAT_VERSION, "area": area, "channels": list(channels),
            "slot_minutes": slot_minutes, "time_origin": month_start(origin), "Conventions": "CF-1.10",
            "title": f"qpe archive cube on {area}"})
        cube = cls(url, group, storage_options)
        cube.consolidate()
        return cube

    @classmethod
    def open_or_create(cls, url: str, area: str, channels: list[str], slot_minutes: int = 15, origin=None,
                       storage_options: dict | None = None) -> Archive:
        """Open ``url`` for appending, creating it if needed; check it matches area and slot length."""
        arc = cls._open_or_create(url, storage_options,
                                  lambda: cls.create(url, area, channels, slot_minutes, origin, storage_options))
        arc.check_compatible(area=area, slot_minutes=slot_minutes)
        return arc

    def check_compatible(self, area: str | None = None, channels: list[str] | None = None,
                         slot_minutes: int | None = None) -> None:
        """Raise :class:`ArchiveError` saying what differs from the archive."""
        diffs = []
        if area is not None and area != self.area:
            diffs.append(f"area {area!r} != archive area {self.area!r}")
        if channels is not None and set(channels) != set(self.channels):
            missing = sorted(set(self.channels) - set(channels))
            extra = sorted(set(channels) - set(self.channels))
            diffs.append(f"channels differ (missing {missing}, not in archive {extra})")
        if slot_minutes is not None and slot_minutes != self.slot_minutes:
            diffs.append(f"slot length {slot_minutes} min != archive {self.slot_minutes} min")
        if diffs:
            raise ArchiveError(f"{self.url}: " + "; ".join(diffs))

    # ------------------------------------------------------------------ writing
    def write_seviri(self, ds: xr.Dataset) -> SlotWrite:
        """Write one SEVIRI slot (``bt(channel, y, x)`` in K) atomically; idempotent."""
        self._check_slot(ds, "bt")
        got = [str(c) for c in ds["channel"].values]
        self.check_compatible(channels=got)
        bt = ds["bt"].sel(channel=self.channels).values.astype("float32")
        return self._write(ds, "bt", {"bt": bt}, float(np.isfinite(bt).mean()))

    @staticmethod
    def _refuse_empty(ds: xr.Dataset, what: str, coverage: float) -> None:
        """An all-NaN slot says nothing and would pass for a complete one: refuse it."""
        if coverage == 0.0:
            files = ds.attrs.get("source_files") or ds.attrs.get("source_file")
            origin = f" (from {', '.join(files) if isinstance(files, list) else files})" if files else ""
            raise ArchiveError(f"{what} slot {iso(ds['time'].values)}{origin} has no valid pixel on the "
                               f"archive grid (all NaN): not written")

    def write_radar(self, ds: xr.Dataset) -> SlotWrite:
        """Write one radar slot (``rain(y, x)`` in mm/h, optional ``quality``) atomically; idempotent."""
        self._check_slot(ds, "rain")
        rain = ds["rain"].values.astype("float32")
        if np.nanmin(rain, initial=0.0) < 0:
            raise ArchiveError(f"radar slot {iso(ds['time'].values)}: negative rain rates")
        quality = (ds["quality"].values.astype("float32") if "quality" in ds
                   else np.full_like(rain, np.nan))
        return self._write(ds, "rain", {"rain": rain, "rain_quality": quality}, float(np.isfinite(rain).mean()))

    def _check_slot(self, ds: xr.Dataset, var: str) -> None:
        if var not in ds:
            raise ArchiveError(f"dataset has no {var!r} variable (have {list(ds.data_vars)})")
        if "time" not in ds.coords or ds["time"].ndim:
            raise ArchiveError(f"{var} slot needs one scalar 'time' coordinate")
        self.check_compatible(area=ds.attrs.get("area", self.area))
        spec = get_spec(self.area)
        if ds[var].shape[-2:] != (spec.height, spec.width):
            raise ArchiveError(f"{var} slot {iso(ds['time'].values)} has shape {ds[var].shape}, "
                               f"archive grid {self.area} is {spec.height} x {spec.width}")

    def _write(self, ds: xr.Dataset, kind: str, arrays: dict[str, np.ndarray], coverage: float) -> SlotWrite:
        ts = to_utc(ds["time"].values)
        what = "SEVIRI" if kind == "bt" else "radar"
        self._refuse_empty(ds, what, coverage)
        with self.writing(what, ts):
            self.ensure_range(ts)
            i = self.index_of(ts)
            marker = self.group[f"{kind}_coverage"]
            marker[i] = np.nan  # hide the slot while it is rewritten
            for name, values in arrays.items():
                self.group[name][i] = values
            marker[i] = np.float32(coverage)  # the slot becomes visible only now
        return SlotWrite(ts, i, coverage)

    # ------------------------------------------------------------------ reading
    # ------------------------------------------------------------------ reading
    def coverage(self, kind: str = "bt") -> pd.Series:
        """Coverage of every complete slot of ``kind`` ('bt' or 'rain'), indexed by UTC time."""
        return self.marker_series(f"{kind}_coverage")

    def times(self, kind: str = "bt") -> pd.DatetimeIndex:
        """UTC times of the complete slots of ``kind``."""
        return self.coverage(kind).index

    def has_slot(self, time, kind: str = "bt") -> bool:
        return self.marker_set(f"{kind}_coverage", time)

    def read_bt(self, time, channels: list[str] | None = None) -> np.ndarray:
        """``bt(channel, y, x)`` in K of a complete slot (raises MissingSlotError otherwise)."""
        if not self.has_slot(time, "bt"):
            raise MissingSlotError(f"SEVIRI slot {iso(time)} is not in {self.url}")
        sel = [self.channels.index(c) for c in (channels or self.channels)]
        return self.group["bt"][self.index_of(time)][sel]

    def read_rain(self, time) -> np.ndarray:
        """``rain(y, x)`` in mm/h of a complete radar slot."""
        if not self.has_slot(time, "rain"):
            raise MissingSlotError(f"radar slot {iso(time)} is not in {self.url}")
        return self.group["rain"][self.index_of(time)]

    def read_rain_quality(self, time) -> np.ndarray:
        """``rain_quality(y, x)`` (0-1, NaN = not assessed) of a complete radar slot."""
        if not self.has_slot(time, "rain"):
            raise MissingSlotError(f"radar slot {iso(time)} is not in {self.url}")
        return self.group["rain_quality"][self.index_of(time)]

    def read_truth(self, time, min_quality: float = MIN_RAIN_QUALITY) -> np.ndarray:
        """``rain(y, x)`` mm/h as truth: NaN where the stored ``rain_quality`` is below ``min_quality``
        (NaN quality = not assessed = kept; :mod:`qpe_core.readers.radar_qc`)."""
        quality = self.group["rain_quality"][self.index_of(time)] if min_quality > 0 else None
        return below_quality_to_nan(self.read_rain(time), quality, min_quality)


def find_gaps(times: pd.DatetimeIndex, slot_minutes: int) -> list[tuple[pd.Timestamp, pd.Timestamp, int]]:
    """Runs of missing slots between the first and last of ``times``: (first missing, last missing, n)."""
    if len(times) < 2:
        return []
    step = pd.Timedelta(minutes=slot_minutes)
    t = times.sort_values()
    jumps = np.flatnonzero(np.diff(t.as_unit("ns").asi8) > step.value)
    return [(t[j] + step, t[j + 1] - step, int((t[j + 1] - t[j]) / step) - 1) for j in jumps]


def summarize(archive: Archive) -> dict:
    """Times, channels, coverage and gaps of an archive, as plain JSON-able values."""
    out = {"url": archive.url, "area": archive.area, "channels": archive.channels,
           "slot_minutes": archive.slot_minutes,
           "time_origin": iso(archive.origin) if archive.origin is not None else None,
           "allocated_slots": len(archive)}
    for kind in ("bt", "rain"):
        cov = archive.coverage(kind)
        gaps = find_gaps(cov.index, archive.slot_minutes)
        out[kind] = {
            "slots": int(len(cov)),
            "first": iso(cov.index.min()) if len(cov) else None,
            "last": iso(cov.index.max()) if len(cov) else None,
            "mean_coverage": round(float(cov.mean()), 4) if len(cov) else None,
            "min_coverage": round(float(cov.min()), 4) if len(cov) else None,
            "missing_slots": int(sum(g[2] for g in gaps)),
            "gaps": [{"from": iso(a), "to": iso(b), "slots": n} for a, b, n in gaps],
        }
    both = archive.times("bt").intersection(archive.times("rain"))
    out["paired_slots"] = int(len(both))
    return out
