"""Zarr v3 cubes on a regular slot time axis: the machinery shared by the archive cube
(:mod:`qpe_core.archive`) and the product cube (:mod:`qpe_core.products.cube`).

The time axis is a regular slot grid from ``time_origin`` (group attribute, the first
day of the month of the first slot written unless given): slot ``t`` lives at index
``(t - origin) / slot_minutes``, so writers of different slots never touch the same
chunk (time chunks are 1).  The axis is preallocated in blocks of ``ALLOC_BLOCK`` slots;
unwritten chunks cost nothing (fill value NaN).  Each cube has completion markers
(float arrays on the time axis, NaN = slot not complete) written last.  Growing the
axis and writing a slot take a lock: a file lock on local stores, a lock object created with an
exclusive write on object stores (:mod:`qpe_core.object_lock`).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from qpe_core.errors import ArchiveError
from qpe_core.grids import crs_attrs, grid_xy
from qpe_core.object_lock import object_lock
from qpe_core.timeutil import check_on_grid, iso, to_utc

ALLOC_BLOCK = 2976  # slots added per extension: 31 days of 15-minute slots
#: How far beyond the current UTC time a slot may lie: later ones are refused (a garbled or
#: mistyped date would otherwise grow the time axis by years, or set the origin in the future).
MAX_LEAD = pd.Timedelta(days=1)
TIME_UNITS = "minutes since 1970-01-01 00:00:00"
GRID_MAPPING = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
_EPOCH = pd.Timestamp("1970-01-01")
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle),)


def open_store(url: str, storage_options: dict | None = None):
    """A zarr store for a local path or an fsspec URL (``s3://...``)."""
    if "://" in url and not url.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(url, storage_options=storage_options or {})
    return zarr.storage.LocalStore(url.removeprefix("file://"))


def epoch_minutes(ts: pd.Timestamp) -> int:
    """Whole minutes since 1970-01-01 UTC."""
    return int((ts - _EPOCH) // pd.Timedelta(minutes=1))


def month_start(time) -> str | None:
    """ISO string of 00:00 UTC on the first day of the month of ``time`` (None stays None)."""
    return None if time is None else to_utc(time).to_period("M").start_time.isoformat()


def coord_array(group: zarr.Group, name: str, values: np.ndarray, dims: tuple[str, ...], attrs: dict) -> None:
    """A small coordinate array written at creation (strings as variable-length UTF-8)."""
    dtype = str if values.dtype.kind == "U" else values.dtype
    arr = group.create_array(name, shape=values.shape, dtype=dtype, dimension_names=list(dims),
                             attributes=attrs)
    arr[...] = values


def data_array(group: zarr.Group, name: str, shape, chunks, dims, attrs) -> None:
    """A compressed float32 array filled with NaN."""
    group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan,
                       compressors=_COMPRESSORS, dimension_names=dims, attributes=attrs)


def create_group(url: str, storage_options: dict | None, area: str, time_long_name: str) -> zarr.Group:
    """A new group with ``x``, ``y``, ``spatial_ref`` and an empty ``time`` axis (error if it exists)."""
    try:
        group = zarr.open_group(open_store(url, storage_options), mode="w-", zarr_format=3)
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError) as exc:
        raise ArchiveError(f"{url} already exists") from exc
    x, y = grid_xy(area)
    coord_array(group, "x", x, ("x",), {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"})
    coord_array(group, "y", y, ("y",), {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"})
    group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0, attributes=crs_attrs(area))
    group.create_array("time", shape=(0,), chunks=(ALLOC_BLOCK,), dtype="int64", fill_value=-1,
                       dimension_names=["time"], attributes={
                           "standard_name": "time", "long_name": time_long_name,
                           "units": TIME_UNITS, "calendar": "proleptic_gregorian"})
    return group


@dataclass(frozen=True)
class SlotWrite:
    """What a write did: the slot, its index on the time axis and its coverage."""

    time: pd.Timestamp
    index: int
    coverage: float


@contextlib.contextmanager
def _file_lock(lock_file: Path, timeout: float = 120):
    """Inter-process lock on ``lock_file`` (its folder is created)."""
    from filelock import FileLock

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_file), timeout=timeout):
        yield


def _cube_lock(url: str, storage_options: dict | None, name: str = "", timeout: float = 120, what: str = ""):
    """Lock ``<cube>.lock`` (``name`` empty) or ``<cube>.locks/<name>`` beside the cube: a file lock
    for a local cube, a lock object for a cube on an object store (``s3://...``)."""
    url = url.rstrip("/")
    if "://" in url and not url.startswith("file://"):
        lock_url = f"{url}.locks/{name}" if name else f"{url}.lock"
        return object_lock(lock_url, storage_options, timeout=timeout, what=what or url)
    root = Path(url.removeprefix("file://"))
    return _file_lock(root.parent / (root.name + (f".locks/{name}" if name else ".lock")), timeout=timeout)


class TimeCube:
    """Base of the cubes: opening, the slot time axis, locking, markers.  Subclasses set
    ``KIND`` (for messages), ``VERSION_ATTR`` and ``TIME_VARS`` (arrays on the time axis)."""

    KIND = "cube"
    VERSION_ATTR = ""
    FORMAT_VERSION = 1
    TIME_VARS: tuple[str, ...] = ()
    REQUIRED_ATTRS: tuple[str, ...] = ("area", "slot_minutes")

    def __init__(self, url: str, group: zarr.Group, storage_options: dict | None = None):
        self.url, self.group, self.storage_options = url, group, storage_options
        attrs = group.attrs.asdict()
        if attrs.get(self.VERSION_ATTR) != self.FORMAT_VERSION:
            raise ArchiveError(f"{url} is not a qpe {self.KIND} (format {self.FORMAT_VERSION})")
        missing = [k for k in self.REQUIRED_ATTRS if k not in attrs]
        if missing:  # seen while another process creates it: _open_or_create then waits on its lock
            raise ArchiveError(f"{url}: incomplete {self.KIND} metadata (no {', '.join(missing)}); "
                               "is another process creating it?")
        self.attrs = attrs
        self.area: str = attrs["area"]
        self.slot_minutes: int = int(attrs["slot_minutes"])
        self.origin = pd.Timestamp(attrs["time_origin"]) if attrs.get("time_origin") else None

    @classmethod
    def open(cls, url: str, mode: str = "r", storage_options: dict | None = None):
        """Open an existing cube (``mode`` 'r' or 'a')."""
        try:
            group = zarr.open_group(open_store(url, storage_options), mode="r+" if mode == "a" else "r",
                                    zarr_format=3, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise ArchiveError(f"no {cls.KIND} at {url}") from exc
        return cls(url, group, storage_options)

    @classmethod
    def _open_or_create(cls, url: str, storage_options: dict | None, create):
        """Open, or create under the cube's lock: zarr's ``mode='w-'`` does not make creation
        exclusive, and parallel first writers of a backfill collided in it."""
        try:
            return cls.open(url, "a", storage_options)
        except ArchiveError:
            pass
        with _cube_lock(url, storage_options, what=f"{url}: creation"):
            try:
                return cls.open(url, "a", storage_options)
            except ArchiveError:
                return create()

    # ------------------------------------------------------------------ time axis
    def __len__(self) -> int:
        return int(self.group["time"].shape[0])

    def index_of(self, time) -> int:
        """Index of slot ``time`` on the time axis (it may lie beyond the allocated length)."""
        ts = check_on_grid(time, self.slot_minutes, "slot")
        self._catch_up()
        if self.origin is None:
            raise ArchiveError(f"{self.url} is empty: slot {iso(ts)} is not in it")
        if ts < self.origin:
            raise ArchiveError(f"slot {iso(ts)} precedes the archive origin {iso(self.origin)} of {self.url}; "
                               f"create a new {self.KIND} with an earlier origin")
        return int((ts - self.origin) // pd.Timedelta(minutes=self.slot_minutes))

    def time_of(self, index: int) -> pd.Timestamp:
        return self.origin + pd.Timedelta(minutes=self.slot_minutes * int(index))

    def ensure_range(self, start, end=None) -> None:
        """Make sure slots ``start``..``end`` (UTC) are allocated on the time axis.  Slots off
        the slot grid or more than :data:`MAX_LEAD` in the future are refused before anything
        is written."""
        for value in (start, end) if end is not None else (start,):
            ts = check_on_grid(value, self.slot_minutes, "slot")
            now = pd.Timestamp.now("UTC").tz_localize(None)
            if ts > now + MAX_LEAD:
                raise ArchiveError(f"slot {iso(ts)} is in the future (now {iso(now)}): {self.url} refuses "
                                   f"slots more than {MAX_LEAD / pd.Timedelta(hours=1):.0f} h ahead")
        if self.origin is not None and self.index_of(end if end is not None else start) < len(self):
            self.index_of(start)  # raises if before the origin
            return
        with self._lock():
            self._refresh()
            if self.origin is None:  # first write decides where the time axis starts
                self.origin = pd.Timestamp(month_start(start))
                self.group.attrs["time_origin"] = self.origin.isoformat()
            self.index_of(start)
            need = self.index_of(end if end is not None else start) + 1
            if need > len(self):
                self._grow(-(-need // ALLOC_BLOCK) * ALLOC_BLOCK)
            self.consolidate()

    def consolidate(self) -> None:
        """Rewrite the consolidated metadata (zarr v3, in the root ``zarr.json``) so that
        ``xr.open_zarr(url)`` opens the cube in one read and without a warning. Called on creation
        and whenever the time axis grows (under the cube's lock); the cube's own code always reads
        the arrays' metadata itself (``use_consolidated=False``), so a stale copy is never used."""
        with warnings.catch_warnings():  # "not part of the Zarr v3 specification": zarr-python and xarray read it
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            zarr.consolidate_metadata(self.group.store)

    def _grow(self, new_len: int) -> None:
        old = len(self)
        for name in self.TIME_VARS + ("time",):  # time last: it is what readers size the axis by
            arr = self.group[name]
            arr.resize((new_len,) + arr.shape[1:])
        minutes = epoch_minutes(self.origin) + self.slot_minutes * np.arange(old, new_len, dtype="int64")
        self.group["time"][old:new_len] = minutes

    def _catch_up(self) -> None:
        """Re-read the cube while it has no time origin: another writer may have started the time
        axis since this one was opened (a stale empty view re-wrote a slot under its lock)."""
        if self.origin is None:
            self._refresh()

    def _refresh(self) -> None:
        store = self.group.store  # a read-only view stays read-only
        mode = "r" if store.read_only else "r+"
        self.group = zarr.open_group(store, mode=mode, zarr_format=3, use_consolidated=False)
        origin = self.group.attrs.get("time_origin")
        self.origin = pd.Timestamp(origin) if origin else None

    @contextlib.contextmanager
    def writing(self, what: str, ts: pd.Timestamp):
        """Turn storage failures (disk full, object store errors) during the write of slot
        ``ts`` into an :class:`ArchiveError` naming the cube, the slot and the cause.  The
        completion marker is set last, so the slot is not shown as complete by this write."""
        try:
            yield
        except OSError as exc:
            raise ArchiveError(f"{self.url}: cannot write {what} slot {iso(ts)} "
                               f"({type(exc).__name__}: {str(exc)[:300]}); the slot is not marked "
                               "complete by this write, re-run it") from exc

    @contextlib.contextmanager
    def slot_lock(self, time):
        """Exclusive right to write slot ``time``: concurrent cycles share lag slots, and rewriting
        a complete slot clears its marker for a moment, which failed a neighbour reading it (seen
        with two backfill workers, and with duplicate nowcast runs publishing one product slot)."""
        ts = check_on_grid(time, self.slot_minutes, "slot")
        with _cube_lock(self.url, self.storage_options, f"{ts.strftime('%Y%m%dT%H%M')}.lock", timeout=600,
                        what=f"{self.url}: slot {iso(ts)}"):
            yield

    def _lock(self):
        """The whole cube's lock (growing the time axis)."""
        return _cube_lock(self.url, self.storage_options, what=f"{self.url}: time axis")

    def marker_series(self, marker: str) -> pd.Series:
        """Values of completion marker ``marker`` for every complete slot, indexed by UTC time."""
        self._catch_up()
        arr = self.group[marker]
        idx = self._stored_chunks(marker)
        values = arr.get_coordinate_selection(idx) if len(idx) else np.zeros(0, "float32")
        idx, values = idx[np.isfinite(values)], values[np.isfinite(values)]
        times = pd.DatetimeIndex([self.time_of(i) for i in idx]) if len(idx) else pd.DatetimeIndex([])
        return pd.Series(values, index=times, name=marker)

    def marker_set(self, marker: str, time) -> bool:
        """Whether slot ``time`` is complete according to ``marker``."""
        try:
            i = self.index_of(time)
        except ArchiveError:
            return False
        return i < len(self) and bool(np.isfinite(self.group[marker][i]))

    def to_xarray(self) -> xr.Dataset:
        """The whole cube as a lazy xarray Dataset (incomplete slots have a NaN marker)."""
        store = open_store(self.url, self.storage_options)
        return xr.open_zarr(store, consolidated=None, zarr_format=3, decode_coords="all")

    def _stored_chunks(self, name: str) -> np.ndarray:
        """Indices of the chunks of 1-D array ``name`` that exist in the store: one listing
        instead of one read per slot (unwritten and NaN chunks are not stored)."""
        from zarr.core.sync import sync

        async def keys():
            return [k async for k in self.group.store.list_prefix(f"{name}/c/")]

        # names that are not chunk indices are temporary files of a writer killed mid-write
        # (zarr writes ``<index>.<uuid>.partial`` then renames it): not chunks, not slots
        names = (k.rsplit("/", 1)[-1] for k in sync(keys()))
        found = sorted(int(n) for n in names if n.isdigit())
        return np.array([i for i in found if i < len(self)], dtype="int64")
