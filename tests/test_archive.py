"""Archive cube: round trips, idempotence, growth, concurrency, crash consistency."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import crash_at_marker, random_bt
from qpe_core.archive import ALLOC_BLOCK, Archive, find_gaps, summarize
from qpe_core.errors import ArchiveError, MissingSlotError, QpeError
from qpe_core.slots import radar_slot, seviri_slot

AREA = "france-3km"
CH = ["IR_108", "IR_120", "WV_062"]


def _sev(t, seed=0, channels=CH):
    return seviri_slot(random_bt(seed, len(channels)), channels, t, AREA)


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_cf_and_crs(tmp_path):
    arc = Archive.create(str(tmp_path / "a.zarr"), AREA, CH)
    sev = _sev("2024-06-01T12:00")
    rain = np.abs(np.random.default_rng(1).normal(0, 2, (384, 384))).astype("float32")
    rain[:10] = np.nan
    arc.write_seviri(sev)
    arc.write_radar(radar_slot(rain, "2024-06-01T12:00", AREA))
    np.testing.assert_array_equal(arc.read_bt("2024-06-01T12:00"), sev["bt"].values)
    np.testing.assert_array_equal(arc.read_rain("2024-06-01T12:00"), rain)
    ds = Archive.open(arc.url).to_xarray()
    assert ds["time"].dtype == "datetime64[ns]"
    assert ds["time"].encoding["dtype"] == np.dtype("int64")
    assert ds["time"].encoding["units"].startswith("minutes since 1970-01-01")
    got = ds["bt"].sel(time="2024-06-01T12:00").values
    np.testing.assert_array_equal(got, sev["bt"].values)
    import rioxarray  # noqa: F401

    assert ds["rain"].rio.crs.to_epsg() == 3035
    assert ds["bt"].attrs["units"] == "K" and ds["rain"].attrs["units"] == "mm h-1"
    assert float(ds["rain_coverage"].sel(time="2024-06-01T12:00")) == pytest.approx(1 - 10 / 384)


def test_channels_reordered_and_mismatch_named(tmp_path):
    arc = Archive.create(str(tmp_path / "a.zarr"), AREA, CH)
    sev = _sev("2024-06-01T12:00", channels=CH[::-1])
    arc.write_seviri(sev)
    np.testing.assert_array_equal(arc.read_bt("2024-06-01T12:00", ["WV_062"])[0], sev["bt"].values[0])
    with pytest.raises(ArchiveError, match=r"missing \['WV_062'\].*not in archive \['IR_134'\]"):
        arc.write_seviri(_sev("2024-06-01T12:15", channels=["IR_108", "IR_120", "IR_134"]))
    assert list(arc.times()) == [pd.Timestamp("2024-06-01T12:00")]


def test_rewrite_is_idempotent_bytes(tmp_path):
    path = tmp_path / "a.zarr"
    arc = Archive.create(str(path), AREA, CH)
    for k in range(3):
        arc.write_seviri(_sev(f"2024-06-01T12:{15 * k:02d}", seed=k))
    before = _tree_digest(path)
    arc.write_seviri(_sev("2024-06-01T12:15", seed=1))  # same data again
    assert _tree_digest(path) == before
    arc.write_seviri(_sev("2024-06-01T12:15", seed=9))  # new data replaces the slot
    np.testing.assert_array_equal(arc.read_bt("2024-06-01T12:15"), random_bt(9, 3))
    assert _tree_digest(path) != before


def test_growth_keeps_earlier_slots_and_origin_rules(tmp_path):
    arc = Archive.create(str(tmp_path / "a.zarr"), AREA, CH)
    arc.write_seviri(_sev("2024-06-10T00:00", seed=1))
    assert str(arc.origin) == "2024-06-01 00:00:00" and len(arc) == ALLOC_BLOCK
    late = pd.Timestamp("2024-06-01") + pd.Timedelta(minutes=15 * (ALLOC_BLOCK + 5))
    arc.write_seviri(_sev(late, seed=2))
    assert len(arc) == 2 * ALLOC_BLOCK
    np.testing.assert_array_equal(arc.read_bt("2024-06-10T00:00"), random_bt(1, 3))
    reopened = Archive.open(arc.url)
    assert list(reopened.times()) == [pd.Timestamp("2024-06-10"), late]
    assert reopened.to_xarray().sizes["time"] == 2 * ALLOC_BLOCK
    # consolidated metadata follows the growth: a plain xr.open_zarr opens without a warning and
    # gives the cube's own dataset
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(arc.url)
        full = xr.open_zarr(arc.url, decode_coords="all")
    assert plain.sizes["time"] == 2 * ALLOC_BLOCK and plain.attrs["area"] == AREA
    own = reopened.to_xarray()
    assert full.sizes == own.sizes and full.attrs == own.attrs and list(full.data_vars) == list(own.data_vars)
    pick = [arc.index_of("2024-06-10T00:00"), arc.index_of(late)]
    xr.testing.assert_identical(full.isel(time=pick), own.isel(time=pick))
    xr.testing.assert_equal(plain.isel(time=pick).drop_vars("spatial_ref"), own.isel(time=pick).drop_vars("spatial_ref"))
    complete = plain["bt_coverage"].notnull().compute()  # the completion marker selects complete slots
    assert list(plain["time"][complete].values.astype("datetime64[m]")) == [np.datetime64("2024-06-10T00:00"),
                                                                           late.to_datetime64().astype("datetime64[m]")]
    with pytest.raises(ArchiveError, match="precedes the archive origin 2024-06-01T00:00Z"):
        arc.write_seviri(_sev("2024-05-31T23:45"))
    with pytest.raises(QpeError, match="not on the 15-minute slot grid"):
        arc.write_seviri(_sev("2024-06-10T00:05"))


def test_summary_reports_gaps(tmp_path):
    arc = Archive.create(str(tmp_path / "a.zarr"), AREA, CH)
    times = pd.date_range("2024-06-01T00:00", periods=10, freq="15min").delete([3, 4, 7])
    for t in times:
        arc.write_seviri(_sev(t))
    info = summarize(arc)
    assert info["bt"]["slots"] == 7 and info["rain"]["slots"] == 0
    assert info["bt"]["first"] == "2024-06-01T00:00Z" and info["bt"]["last"] == "2024-06-01T02:15Z"
    assert info["bt"]["gaps"] == [{"from": "2024-06-01T00:45Z", "to": "2024-06-01T01:00Z", "slots": 2},
                                  {"from": "2024-06-01T01:45Z", "to": "2024-06-01T01:45Z", "slots": 1}]
    assert info["bt"]["missing_slots"] == 3
    assert find_gaps(pd.DatetimeIndex([]), 15) == []


def _writer(url: str, times: list[str], seed: int) -> None:
    arc = Archive.open(url, "a")
    for k, t in enumerate(times):
        arc.write_seviri(seviri_slot(random_bt(seed + k, 3), CH, t, AREA))


def test_concurrent_writers_of_different_slots(tmp_path):
    url = str(tmp_path / "a.zarr")
    Archive.create(url, AREA, CH)
    # both writers start beyond the allocated axis, so both race to grow it
    t_a = [str(t) for t in pd.date_range("2024-06-01", periods=6, freq="30min")]
    t_b = [str(t) for t in pd.date_range("2024-06-01T00:15", periods=6, freq="30min")]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, t_a, 100)), ctx.Process(target=_writer, args=(url, t_b, 200))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    arc = Archive.open(url)
    assert len(arc.times()) == 12
    for k, t in enumerate(t_a):
        np.testing.assert_array_equal(arc.read_bt(t), random_bt(100 + k, 3))
    for k, t in enumerate(t_b):
        np.testing.assert_array_equal(arc.read_bt(t), random_bt(200 + k, 3))


def test_crash_between_data_and_marker_hides_slot(tmp_path):
    url = str(tmp_path / "a.zarr")
    arc = Archive.create(url, AREA, CH)
    arc.write_seviri(_sev("2024-06-01T12:15", seed=1))  # a complete slot the crash rewrites
    proc = crash_at_marker("_coverage", f"""
from conftest import random_bt
from qpe_core.archive import Archive
from qpe_core.slots import seviri_slot
arc = Archive.open({url!r}, "a")
arc.write_seviri(seviri_slot(random_bt(7, 3), {CH!r}, "2024-06-01T12:15", "france-3km"))
""")
    assert proc.returncode == 9, proc.stderr
    arc = Archive.open(url, "a")
    assert not arc.has_slot("2024-06-01T12:15")
    assert len(arc.times()) == 0
    with pytest.raises(MissingSlotError, match="2024-06-01T12:15Z"):
        arc.read_bt("2024-06-01T12:15")
    ds = arc.to_xarray()
    assert np.isnan(float(ds["bt_coverage"].sel(time="2024-06-01T12:15")))
    arc.write_seviri(_sev("2024-06-01T12:15", seed=7))  # the re-run completes the slot
    np.testing.assert_array_equal(arc.read_bt("2024-06-01T12:15"), random_bt(7, 3))


def test_open_errors(tmp_path):
    with pytest.raises(ArchiveError, match="no archive at"):
        Archive.open(str(tmp_path / "missing.zarr"))
    url = str(tmp_path / "a.zarr")
    Archive.create(url, AREA, CH)
    with pytest.raises(ArchiveError, match="already exists"):
        Archive.create(url, AREA, CH)
    with pytest.raises(ArchiveError, match="area 'europe-opera-4km' != archive area 'france-3km'"):
        Archive.open_or_create(url, "europe-opera-4km", CH)
    arc = Archive.open(url, "a")
    bad = xr.Dataset({"bt": (("channel", "y", "x"), np.zeros((3, 10, 10), "f4"))},
                     coords={"channel": CH, "time": np.datetime64("2024-06-01T12:00")})
    with pytest.raises(ArchiveError, match=r"shape \(3, 10, 10\)"):
        arc.write_seviri(bad)
    with pytest.raises(ArchiveError, match="negative rain"):
        arc.write_radar(radar_slot(-np.ones((384, 384)), "2024-06-01T12:00", AREA))
    assert len(arc.times("rain")) == 0


def _open_or_create_worker(url: str) -> str:
    arc = Archive.open_or_create(url, "france-3km", ["IR_108"], 15, origin="2024-06-01T00:00Z")
    return f"{arc.area} {arc.channels}"


def test_concurrent_open_or_create_all_succeed(tmp_path):
    """Several processes creating the same new archive at once (a backfill's first slots): the
    losers wait for the winner's attributes instead of failing with 'not a qpe archive'."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    url = str(tmp_path / "race.zarr")
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_open_or_create_worker, [url] * 8))
    assert results == ["france-3km ['IR_108']"] * 8


def test_a_cube_opened_empty_sees_slots_another_writer_adds(tmp_path):
    """Two cycles open the same new archive, one writes a slot: the other must see it complete
    (it used to keep the empty cube's missing time origin, re-wrote the slot under the slot lock and
    hid it for a moment from the first cycle's reader: one of two duplicate runs failed)."""
    url = str(tmp_path / "a.zarr")
    a = Archive.open_or_create(url, AREA, CH)
    b = Archive.open_or_create(url, AREA, CH)
    a.write_seviri(_sev("2024-06-01T01:00", seed=3))
    assert b.has_slot("2024-06-01T01:00", "bt")
    np.testing.assert_array_equal(b.read_bt("2024-06-01T01:00"), random_bt(3, len(CH)))
    assert list(b.times()) == [pd.Timestamp("2024-06-01T01:00")]
    later = pd.Timestamp("2024-06-01T01:00") + pd.Timedelta(minutes=15 * (ALLOC_BLOCK + 3))  # a grows the axis
    a.write_seviri(_sev(str(later), seed=4))
    assert b.has_slot(later, "bt") and len(b.times()) == 2


def test_a_read_only_view_of_an_empty_cube_stays_read_only(tmp_path):
    """Opening an empty archive read-only and asking for its slots used to re-open the store for
    writing (zarr refused: 'Store is read-only'), which broke the fault suites' snapshots."""
    url = str(tmp_path / "a.zarr")
    Archive.create(url, AREA, CH)
    ro = Archive.open(url, mode="r")
    assert list(ro.times()) == []
    Archive.open(url, mode="a").write_seviri(_sev("2024-06-01T01:00", seed=3))
    assert list(ro.times()) == [pd.Timestamp("2024-06-01T01:00")]
