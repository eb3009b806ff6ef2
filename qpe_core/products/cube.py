"""The product cube: one Zarr v3 store per grid holding every QPE ensemble and its statistics.

Layout (``x``/``y`` grid coordinates, ``spatial_ref`` CF grid mapping)::

    qpe(time, member, y, x)       float32  mm h-1  ensemble members (chunk: one member of one slot)
    mean, p50, p90(time, y, x)    float32  mm h-1  ensemble statistics (see ensemble_stats)
    prob_gt_*(time, y, x)         float32  1       exceedance probabilities
    slot_metadata(time)           string           JSON per slot: datetime, model kind/card, members,
                                                   seed, steps, input slots, missing inputs
    n_missing_inputs(time)        int16            number of missing input slots (-1: slot absent)
    qpe_coverage(time)            float32  1       completion marker: fraction of finite ``mean``
                                                   pixels; NaN while the slot is not complete
    time(time)                    int64    minutes since 1970-01-01 (explicit encoding, UTC)

It shares the archive cube's time-axis machinery (:class:`qpe_core.timecube.TimeCube`):
a regular slot grid from ``time_origin`` preallocated in blocks of ``ALLOC_BLOCK``
slots, time chunks of 1 so writers of different slots never touch the same chunk, a file
lock to grow the axis on local stores (call :meth:`ProductCube.ensure_range` once before
parallel writers on object stores).  :meth:`ProductCube.write_slot` is a region write:
marker <- NaN, members, statistics, metadata, marker <- coverage.  Readers only see slots
whose marker is finite, so a crash mid-write hides the slot, and a re-run with the same
inputs and seed rewrites identical bytes.  The member count is fixed when the cube is created.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

from qpe_core.errors import ArchiveError, MissingSlotError
from qpe_core.grids import attach_grid, get_spec
from qpe_core.products.ensemble_stats import STAT_VARS, ensemble_stats, product_metadata, stat_attrs
from qpe_core.slots import RAIN_ATTRS
from qpe_core.timecube import GRID_MAPPING, SlotWrite, TimeCube, coord_array, create_group, data_array, month_start
from qpe_core.timeutil import iso, to_utc

MARKER = "qpe_coverage"
SLOT_VARS = ("qpe", *STAT_VARS, "slot_metadata", "n_missing_inputs", MARKER)  # all on the time axis


class ProductCube(TimeCube):
    """A handle on a product cube.  Create with :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    KIND = "product cube"
    VERSION_ATTR = "qpe_product_version"
    TIME_VARS = SLOT_VARS
    REQUIRED_ATTRS = ("area", "slot_minutes", "members")

    def __init__(self, url, group, storage_options=None):
        super().__init__(url, group, storage_options)
        self.members: int = int(self.attrs["members"])

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, url: str, area: str, members: int, slot_minutes: int = 15, origin=None,
               storage_options: dict | None = None) -> ProductCube:
        """Create an empty product cube for ``members``-member ensembles on ``area``."""
        if int(members) < 1:
            raise ArchiveError(f"a product cube needs at least one member, got {members}")
        spec = get_spec(area)
        group = create_group(url, storage_options, area, "valid time (nominal slot start, UTC)")
        ny, nx, nm = spec.height, spec.width, int(members)
        coord_array(group, "member", np.arange(nm, dtype="int32"), ("member",),
               {"standard_name": "realization", "long_name": "ensemble member", "units": "1"})
        grid = GRID_MAPPING
        data_array(group, "qpe", (0, nm, ny, nx), (1, 1, ny, nx), ["time", "member", "y", "x"],
               {**RAIN_ATTRS, "long_name": "ensemble member surface rain rate", **grid})
        for name in STAT_VARS:
            data_array(group, name, (0, ny, nx), (1, ny, nx), ["time", "y", "x"], {**stat_attrs(name), **grid})
        group.create_array("slot_metadata", shape=(0,), chunks=(1,), dtype=str, dimension_names=["time"],
                           attributes={"long_name": "JSON description of the slot (STAC-style properties); "
                                                    "empty when the slot was never written"})
        group.create_array("n_missing_inputs", shape=(0,), chunks=(1,), dtype="int16", fill_value=-1,
                           dimension_names=["time"], attributes={
                               "long_name": "number of input SEVIRI slots missing from the stack",
                               "units": "1"})
        data_array(group, MARKER, (0,), (1,), ["time"], {
            "long_name": "fraction of grid with a valid estimate; NaN while the slot is not complete",
            "units": "1"})
        group.attrs.update({
            cls.VERSION_ATTR: cls.FORMAT_VERSION, "area": area, "members": nm,
            "slot_minutes": slot_minutes, "time_origin": month_start(origin), "Conventions": "CF-1.10",
            "title": f"qpe ensemble rainfall products on {area}",
            "institution": "qpe-seviri", "source": "MSG SEVIRI, conditional generative ensemble",
            "completion_marker": MARKER})
        cube = cls(url, group, storage_options)
        cube.consolidate()
        return cube

    @classmethod
    def open_or_create(cls, url: str, area: str, members: int, slot_minutes: int = 15, origin=None,
                       storage_options: dict | None = None) -> ProductCube:
        """Open ``url`` for writing, creating it if needed; check area, members and slot length."""
        cube = cls._open_or_create(url, storage_options,
                                   lambda: cls.create(url, area, members, slot_minutes, origin, storage_options))
        cube.check_compatible(area=area, members=members, slot_minutes=slot_minutes)
        return cube

    def check_compatible(self, area: str | None = None, members: int | None = None,
                         slot_minutes: int | None = None) -> None:
        """Raise :class:`ArchiveError` saying what differs from the cube."""
        diffs = []
        if area is not None and area != self.area:
            diffs.append(f"area {area!r} != cube area {self.area!r}")
        if members is not None and int(members) != self.members:
            diffs.append(f"{members} members != cube's {self.members} members (fixed at creation)")
        if slot_minutes is not None and slot_minutes != self.slot_minutes:
            diffs.append(f"slot length {slot_minutes} min != cube {self.slot_minutes} min")
        if diffs:
            raise ArchiveError(f"{self.url}: " + "; ".join(diffs))

    # ------------------------------------------------------------------ writing
    def write_slot(self, ds: xr.Dataset, stats: xr.Dataset | None = None) -> SlotWrite:
        """Write one ensemble ``rain(member, y, x)`` (mm/h, scalar ``time``) and its statistics
        as a region write; idempotent.  ``stats`` defaults to :func:`ensemble_stats` of ``ds``."""
        if "rain" not in ds:
            raise ArchiveError(f"dataset has no 'rain' variable (have {list(ds.data_vars)})")
        if "time" not in ds.coords or ds["time"].ndim:
            raise ArchiveError("ensemble needs one scalar 'time' coordinate (the valid time)")
        ts = to_utc(ds["time"].values)
        rain = ds["rain"]
        if rain.dims != ("member", "y", "x"):
            raise ArchiveError(f"ensemble {iso(ts)}: rain must be (member, y, x), got {rain.dims}")
        self.check_compatible(area=ds.attrs.get("area", self.area), members=rain.sizes["member"])
        spec = get_spec(self.area)
        if rain.shape[-2:] != (spec.height, spec.width):
            raise ArchiveError(f"ensemble {iso(ts)} has shape {rain.shape}, cube grid {self.area} is "
                               f"{spec.height} x {spec.width}")
        stats = ensemble_stats(ds) if stats is None else stats
        if "time" in stats.coords and to_utc(stats["time"].values) != ts:
            raise ArchiveError(f"statistics are for {iso(stats['time'].values)}, ensemble for {iso(ts)}")
        meta = product_metadata(ds)
        members = rain.values.astype("float32")
        coverage = float(np.isfinite(stats["mean"].values).mean())

        with self.writing("product", ts):
            self.ensure_range(ts)
            i = self.index_of(ts)
            marker = self.group[MARKER]
            marker[i] = np.nan  # hide the slot while it is rewritten
            self.group["qpe"][i] = members
            for name in STAT_VARS:
                self.group[name][i] = stats[name].values.astype("float32")
            self.group["slot_metadata"][i] = json.dumps(meta, sort_keys=True, separators=(",", ":"))
            self.group["n_missing_inputs"][i] = np.int16(len(meta["missing_inputs"]))
            marker[i] = np.float32(coverage)  # the slot becomes visible only now
        return SlotWrite(ts, i, coverage)

    # ------------------------------------------------------------------ reading
    def coverage(self) -> pd.Series:
        """Coverage of every complete slot, indexed by UTC valid time."""
        return self.marker_series(MARKER)

    def times(self) -> pd.DatetimeIndex:
        """UTC valid times of the complete slots."""
        return self.coverage().index

    def has_slot(self, time) -> bool:
        return self.marker_set(MARKER, time)

    def _index_complete(self, time) -> int:
        if not self.has_slot(time):
            raise MissingSlotError(f"product slot {iso(time)} is not in {self.url}")
        return self.index_of(time)

    def slot_metadata(self, time) -> dict:
        """The JSON metadata of a complete slot."""
        return json.loads(str(self.group["slot_metadata"][self._index_complete(time)]))

    def read_slot(self, time) -> xr.Dataset:
        """One complete slot: ``rain(member, y, x)`` and the statistics, with CRS and metadata attrs."""
        i = self._index_complete(time)
        meta = json.loads(str(self.group["slot_metadata"][i]))
        data = {"rain": (("member", "y", "x"), self.group["qpe"][i], dict(RAIN_ATTRS))}
        for name in STAT_VARS:
            data[name] = (("y", "x"), self.group[name][i], stat_attrs(name))
        ds = xr.Dataset(data, coords={"member": np.arange(self.members),
                                      "time": to_utc(time).to_datetime64()},
                        attrs={k: v for k, v in meta.items() if k not in ("datetime", "area")})
        return attach_grid(ds, self.area)
