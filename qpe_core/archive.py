"""The archive cube: one Zarr v3 store per grid holding every slot ever ingested.

Layout (all arrays share the ``time`` axis; ``x``/``y`` are grid coordinates)::

    bt(time, channel, y, x)   float32  K      SEVIRI brightness temperature
    rain(time, y, x)          float32  mm/h   radar rain rate
    rain_quality(time, y, x)  float32  1      radar quality index (NaN if unknown)
    bt_coverage(time)         float32  1      fraction of finite bt pixels; NaN = slot not complete
    rain_coverage(time)       float32  1      fraction of finite rain pixels; NaN = slot not complete
    time(time)                int64    minutes since 1970-01-01 (explicit encoding, UTC)

The time axis is a regular slot grid from ``time_origin`` (group attribute): slot
``t`` lives at index ``(t - origin) / slot_minutes``, so writers of different slots
never touch the same chunk (time chunks are 1).  The axis is preallocated in blocks
of ``ALLOC_BLOCK`` slots; unwritten chunks cost nothing (fill value NaN).

Write protocol for one slot: coverage <- NaN, data chunks, coverage <- value.  A
reader treats a slot as present only when its coverage is finite, so a crash
mid-write never exposes a half slot, and a rewrite with the same data leaves the
same bytes.  Growing the time axis takes a file lock on local stores; on object
stores call :meth:`Archive.ensure_range` once before parallel writers start.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from qpe_core.errors import ArchiveError
from qpe_core.grids import crs_attrs, get_spec, grid_xy
from qpe_core.slots import BT_ATTRS, QUALITY_ATTRS, RAIN_ATTRS
from qpe_core.timeutil import check_on_grid, iso, to_utc

FORMAT_VERSION = 1
ALLOC_BLOCK = 2976  # slots added per extension: 31 days of 15-minute slots
TIME_UNITS = "minutes since 1970-01-01 00:00:00"
_EPOCH = pd.Timestamp("1970-01-01")
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle),)
TIME_VARS = ("time", "bt", "rain", "rain_quality", "bt_coverage", "rain_coverage")


def _store(url: str, storage_options: dict | None = None):
    """A zarr store for a local path or an fsspec URL (``s3://...``)."""
    if "://" in url and not url.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(url, storage_options=storage_options or {})
    return zarr.storage.LocalStore(url.removeprefix("file://"))


def _minutes(ts: pd.Timestamp) -> int:
    return int((ts - _EPOCH) // pd.Timedelta(minutes=1))


@dataclass(frozen=True)
class SlotWrite:
    """What a write did: the slot, its index on the time axis and its coverage."""

    time: pd.Timestamp
    index: int
    coverage: float


class Archive:
    """A handle on an archive cube.  Create with :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    def __init__(self, url: str, group: zarr.Group, storage_options: dict | None = None):
        self.url, self.group, self.storage_options = url, group, storage_options
        attrs = group.attrs.asdict()
        if attrs.get("qpe_archive_version") != FORMAT_VERSION:
            raise ArchiveError(f"{url} is not a qpe archive (format {FORMAT_VERSION})")
        self.area: str = attrs["area"]
        self.channels: list[str] = list(attrs["channels"])
        self.slot_minutes: int = int(attrs["slot_minutes"])
        self.origin = pd.Timestamp(attrs["time_origin"]) if attrs.get("time_origin") else None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, url: str, area: str, channels: list[str], slot_minutes: int = 15, origin=None,
               storage_options: dict | None = None) -> Archive:
        """Create an empty archive.  The time axis starts on the first day of the month of
        ``origin`` (UTC), by default of the first slot written; earlier slots cannot be written."""
        spec = get_spec(area)
        store = _store(url, storage_options)
        try:
            group = zarr.open_group(store, mode="w-", zarr_format=3)
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError) as exc:
            raise ArchiveError(f"{url} already exists") from exc
        x, y = grid_xy(area)
        ny, nx, nc = spec.height, spec.width, len(channels)
        _array(group, "x", x, ("x",), {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"})
        _array(group, "y", y, ("y",), {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"})
        _array(group, "channel", np.array(channels, dtype=str), ("channel",), {"long_name": "SEVIRI channel"})
        group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0, attributes=crs_attrs(area))
        group.create_array("time", shape=(0,), chunks=(ALLOC_BLOCK,), dtype="int64", fill_value=-1,
                           dimension_names=["time"], attributes={
                               "standard_name": "time", "long_name": "nominal slot start (UTC)",
                               "units": TIME_UNITS, "calendar": "proleptic_gregorian"})
        grid = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
        _data(group, "bt", (0, nc, ny, nx), (1, 1, ny, nx), ["time", "channel", "y", "x"], {**BT_ATTRS, **grid})
        _data(group, "rain", (0, ny, nx), (1, ny, nx), ["time", "y", "x"], {**RAIN_ATTRS, **grid})
        _data(group, "rain_quality", (0, ny, nx), (1, ny, nx), ["time", "y", "x"], {**QUALITY_ATTRS, **grid})
        for kind in ("bt", "rain"):
            _data(group, f"{kind}_coverage", (0,), (1,), ["time"], {
                "long_name": f"fraction of grid with valid {kind}; NaN while the slot is not complete",
                "units": "1"})
        group.attrs.update({
            "qpe_archive_version": FORMAT_VERSION, "area": area, "channels": list(channels),
            "slot_minutes": slot_minutes, "time_origin": _month_start(origin), "Conventions": "CF-1.10",
            "title": f"qpe archive cube on {area}"})
        return cls(url, group, storage_options)

    @classmethod
    def open(cls, url: str, mode: str = "r", storage_options: dict | None = None) -> Archive:
        """Open an existing archive (``mode`` 'r' or 'a')."""
        try:
            group = zarr.open_group(_store(url, storage_options), mode="r+" if mode == "a" else "r",
                                    zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise ArchiveError(f"no archive at {url}") from exc
        return cls(url, group, storage_options)

    @classmethod
    def open_or_create(cls, url: str, area: str, channels: list[str], slot_minutes: int = 15, origin=None,
                       storage_options: dict | None = None) -> Archive:
        """Open ``url`` for appending, creating it if needed; check it matches area and channels."""
        try:
            arc = cls.open(url, "a", storage_options)
        except ArchiveError:
            with contextlib.suppress(ArchiveError):
                return cls.create(url, area, channels, slot_minutes, origin, storage_options)
            arc = cls.open(url, "a", storage_options)  # another process created it meanwhile
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

    # ------------------------------------------------------------------ time axis
    def __len__(self) -> int:
        return int(self.group["time"].shape[0])

    def index_of(self, time) -> int:
        """Index of slot ``time`` on the time axis (it may lie beyond the allocated length)."""
        ts = check_on_grid(time, self.slot_minutes, "slot")
        if self.origin is None:
            raise ArchiveError(f"{self.url} is empty: slot {iso(ts)} is not in it")
        if ts < self.origin:
            raise ArchiveError(f"slot {iso(ts)} precedes the archive origin {iso(self.origin)} of {self.url}; "
                               f"create a new archive with an earlier --origin")
        return int((ts - self.origin) // pd.Timedelta(minutes=self.slot_minutes))

    def time_of(self, index: int) -> pd.Timestamp:
        return self.origin + pd.Timedelta(minutes=self.slot_minutes * int(index))

    def ensure_range(self, start, end=None) -> None:
        """Make sure slots ``start``..``end`` (UTC) are allocated on the time axis."""
        if self.origin is not None and self.index_of(end if end is not None else start) < len(self):
            self.index_of(start)  # raises if before the origin
            return
        with self._lock():
            self._refresh()
            if self.origin is None:  # first write decides where the time axis starts
                self.origin = pd.Timestamp(_month_start(start))
                self.group.attrs["time_origin"] = self.origin.isoformat()
            self.index_of(start)
            need = self.index_of(end if end is not None else start) + 1
            if need > len(self):
                self._grow(-(-need // ALLOC_BLOCK) * ALLOC_BLOCK)

    def _grow(self, new_len: int) -> None:
        old = len(self)
        for name in TIME_VARS[1:] + ("time",):  # time last: it is what readers size the axis by
            arr = self.group[name]
            arr.resize((new_len,) + arr.shape[1:])
        minutes = _minutes(self.origin) + self.slot_minutes * np.arange(old, new_len, dtype="int64")
        self.group["time"][old:new_len] = minutes

    def _refresh(self) -> None:
        self.group = zarr.open_group(self.group.store, mode="r+", zarr_format=3)
        origin = self.group.attrs.get("time_origin")
        self.origin = pd.Timestamp(origin) if origin else None

    @contextlib.contextmanager
    def _lock(self):
        store = self.group.store
        if isinstance(store, zarr.storage.LocalStore):
            from filelock import FileLock

            root = Path(store.root)
            with FileLock(str(root.with_name(root.name + ".lock")), timeout=120):
                yield
        else:
            yield

    # ------------------------------------------------------------------ writing
    def write_seviri(self, ds: xr.Dataset) -> SlotWrite:
        """Write one SEVIRI slot (``bt(channel, y, x)`` in K) atomically; idempotent."""
        self._check_slot(ds, "bt")
        got = [str(c) for c in ds["channel"].values]
        self.check_compatible(channels=got)
        bt = ds["bt"].sel(channel=self.channels).values.astype("float32")
        return self._write(ds, "bt", {"bt": bt}, float(np.isfinite(bt).mean()))

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
        self.ensure_range(ts)
        i = self.index_of(ts)
        marker = self.group[f"{kind}_coverage"]
        marker[i] = np.nan  # hide the slot while it is rewritten
        for name, values in arrays.items():
            self.group[name][i] = values
        marker[i] = np.float32(coverage)  # the slot becomes visible only now
        return SlotWrite(ts, i, coverage)

    # ------------------------------------------------------------------ reading
    def coverage(self, kind: str = "bt") -> pd.Series:
        """Coverage of every complete slot of ``kind`` ('bt' or 'rain'), indexed by UTC time."""
        marker = self.group[f"{kind}_coverage"]
        idx = self._stored_chunks(f"{kind}_coverage")
        values = marker.get_coordinate_selection(idx) if len(idx) else np.zeros(0, "float32")
        idx, values = idx[np.isfinite(values)], values[np.isfinite(values)]
        times = pd.DatetimeIndex([self.time_of(i) for i in idx]) if len(idx) else pd.DatetimeIndex([])
        return pd.Series(values, index=times, name=f"{kind}_coverage")

    def _stored_chunks(self, name: str) -> np.ndarray:
        """Indices of the chunks of 1-D array ``name`` that exist in the store: one listing
        instead of one read per slot (unwritten and NaN chunks are not stored)."""
        from zarr.core.sync import sync

        async def keys():
            return [k async for k in self.group.store.list_prefix(f"{name}/c/")]

        found = sorted(int(k.rsplit("/", 1)[-1]) for k in sync(keys()))
        return np.array([i for i in found if i < len(self)], dtype="int64")

    def times(self, kind: str = "bt") -> pd.DatetimeIndex:
        """UTC times of the complete slots of ``kind``."""
        return self.coverage(kind).index

    def has_slot(self, time, kind: str = "bt") -> bool:
        try:
            i = self.index_of(time)
        except ArchiveError:
            return False
        return i < len(self) and bool(np.isfinite(self.group[f"{kind}_coverage"][i]))

    def read_bt(self, time, channels: list[str] | None = None) -> np.ndarray:
        """``bt(channel, y, x)`` in K of a complete slot (raises MissingSlotError otherwise)."""
        from qpe_core.errors import MissingSlotError

        if not self.has_slot(time, "bt"):
            raise MissingSlotError(f"SEVIRI slot {iso(time)} is not in {self.url}")
        sel = [self.channels.index(c) for c in (channels or self.channels)]
        return self.group["bt"][self.index_of(time)][sel]

    def read_rain(self, time) -> np.ndarray:
        """``rain(y, x)`` in mm/h of a complete radar slot."""
        from qpe_core.errors import MissingSlotError

        if not self.has_slot(time, "rain"):
            raise MissingSlotError(f"radar slot {iso(time)} is not in {self.url}")
        return self.group["rain"][self.index_of(time)]

    def to_xarray(self) -> xr.Dataset:
        """The whole cube as a lazy xarray Dataset (incomplete slots are NaN in their coverage)."""
        store = _store(self.url, self.storage_options)
        return xr.open_zarr(store, consolidated=False, zarr_format=3, decode_coords="all")


def _month_start(time) -> str | None:
    """ISO string of 00:00 UTC on the first day of the month of ``time`` (None stays None)."""
    return None if time is None else to_utc(time).to_period("M").start_time.isoformat()


def _array(group: zarr.Group, name: str, values: np.ndarray, dims: tuple[str, ...], attrs: dict) -> None:
    dtype = str if values.dtype.kind == "U" else values.dtype  # variable-length UTF-8 strings
    arr = group.create_array(name, shape=values.shape, dtype=dtype, dimension_names=list(dims),
                             attributes=attrs)
    arr[...] = values


def _data(group: zarr.Group, name: str, shape, chunks, dims, attrs) -> None:
    group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan,
                       compressors=_COMPRESSORS, dimension_names=dims, attributes=attrs)


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
