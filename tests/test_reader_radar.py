"""Radar readers: OPERA ODIM HDF5 (real ODYSSEY files + synthetic NIMBUS-style DBZH),
MeteoNet npz samples, and the area-averaging regridder."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from pyresample.geometry import AreaDefinition

from qpe_core.errors import InputFileError
from qpe_core.grids import OPERA_PROJ, lonlats
from qpe_core.readers.meteonet import rain_rate, read_meteonet
from qpe_core.readers.odim import dbz_to_rain, read_odim
from qpe_core.readers.regrid import clear_memory_cache, get_regridder, regrid

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPERA_DIR = DATA / "radar" / "opera-odyssey-20180824"
OPERA_20 = OPERA_DIR / "T_PAAH21_C_EUOC_20180824200000.hdf"
METEONET = DATA / "meteonet" / "radar"

needs_opera = pytest.mark.skipif(not OPERA_20.is_file(), reason=f"OPERA sample data absent ({OPERA_DIR})")
needs_meteonet = pytest.mark.skipif(not (METEONET / "rainfall_NW_2016_08.3.npz").is_file(),
                                    reason=f"MeteoNet sample data absent ({METEONET})")

OPERA_CORNERS = {  # outer corners of the OPERA 2 km grid, as in the ODYSSEY files
    "LL_lat": 31.746215319325056, "LL_lon": -10.434576838640398, "LR_lat": 31.98765027794496,
    "LR_lon": 29.421038635578032, "UL_lat": 67.02283275830867, "UL_lon": -39.5357864125034,
    "UR_lat": 67.62103710275053, "UR_lon": 57.81196475014995,
}


def _raw_opera_rate(path: Path) -> np.ndarray:
    """The 2 km RATE field decoded by hand: nodata -> NaN, undetect -> 0."""
    with h5py.File(path, "r") as f:
        raw = f["dataset1/data1/data"][:]
        what = f["dataset1/what"].attrs
        rate = raw * what["gain"] + what["offset"]
        rate[raw == what["nodata"]] = np.nan
        rate[raw == what["undetect"]] = 0.0
    return rate


def _block_mean(a: np.ndarray, k: int = 2) -> np.ndarray:
    """k x k block mean of covered pixels; NaN if fewer than half of the block is covered."""
    ny, nx = a.shape[0] // k, a.shape[1] // k
    blocks = a[: ny * k, : nx * k].reshape(ny, k, nx, k).transpose(0, 2, 1, 3).reshape(ny, nx, k * k)
    n = np.isfinite(blocks).sum(-1)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(blocks, -1) / n
    return np.where(2 * n >= k * k, mean, np.nan)


# --------------------------------------------------------------------------- OPERA, real files


@pytest.fixture(scope="module")
def france_20():
    return read_odim(OPERA_20, area="france-3km")


@needs_opera
def test_opera_france_time_values_and_heavy_rain(france_20):
    ds = france_20
    rain = ds["rain"].values
    assert ds["time"].values == np.datetime64("2018-08-24T20:00:00")
    assert rain.shape == (384, 384) and rain.dtype == np.float32
    finite = np.isfinite(rain)
    assert np.all(rain[finite] >= 0)
    wet = (rain[finite] > 0.1).mean()
    heavy = int((rain > 10).sum())
    print(f"france-3km 20:00Z: covered {finite.mean():.3f}, wet(>0.1) {wet:.3f}, >10 mm/h {heavy} cells, "
          f"max {np.nanmax(rain):.1f} mm/h")
    assert heavy >= 10  # thunderstorms over France that evening
    assert 0.01 < wet < 0.5
    assert np.nanmax(rain) < 500
    q = ds["quality"].values
    assert np.nanmin(q) >= 0 and np.nanmax(q) <= 1 and np.isfinite(q).any()
    assert ds.attrs["quantity"] == "RATE" and ds.attrs["source_file"] == OPERA_20.name
    assert ds.attrs["nodes_count"] > 100 and ds.attrs["regrid_method"] == "area_average"
    assert "ODYSSEY" in ds.attrs["odim_layout"] and ds["rain"].attrs["units"] == "mm h-1"


@needs_opera
def test_opera_france_nan_only_far_from_radars(france_20):
    rain = france_20["rain"].values
    lon, lat = lonlats("france-3km")
    nan = np.isnan(rain)
    print(f"france-3km NaN cells: {nan.sum()}, northernmost at {lat[nan].max():.2f} N")
    assert 0 < nan.sum() < 0.05 * rain.size
    # no coverage only at the Bay of Biscay / Mediterranean / Spain edges, never inland France; the
    # few NaN further north are pixels quality control removed (radar_qc), counted in qc_removed
    assert 0 < (lat[nan] >= 47.0).sum() <= sum(france_20.attrs["qc_removed"].values())


@needs_opera
def test_opera_europe_4km_is_block_mean_of_source():
    ds = read_odim(OPERA_20, area="europe-opera-4km")
    rain = ds["rain"].values
    src = _raw_opera_rate(OPERA_20)
    from qpe_core.readers.radar_qc import quality_control

    expected, _ = quality_control(_block_mean(src, 2))  # the reader's quality control after the block mean
    np.testing.assert_array_equal(np.isnan(rain), np.isnan(expected))
    np.testing.assert_allclose(rain, expected, rtol=1e-5, atol=1e-4, equal_nan=True)
    # outside coverage: grid corners and the open Atlantic (45 N, 30 W) are NaN
    assert np.isnan(rain[[0, 0, -1, -1], [0, -1, 0, -1]]).all()
    lon, lat = lonlats("europe-opera-4km")
    i = np.unravel_index(np.argmin((lon + 30) ** 2 + (lat - 45) ** 2), lon.shape)
    assert np.isnan(rain[i])
    print(f"europe-opera-4km: NaN fraction {np.isnan(rain).mean():.3f}")


@needs_opera
def test_opera_france_agrees_with_pyresample_bucket_average(france_20):
    """Same binning as pyresample's BucketResampler (the library reference), except for
    the cells our half-coverage rule sets to NaN."""
    da = pytest.importorskip("dask.array")
    from pyresample.bucket import BucketResampler

    from qpe_core.grids import get_area

    source = AreaDefinition("opera", "opera", "opera", OPERA_PROJ, 1900, 2200, (0.0, -4_400_000.0, 3_800_000.0, 0.0))
    lons, lats = source.get_lonlats(chunks=1100)
    reference = BucketResampler(get_area("france-3km"), lons, lats).get_average(
        da.from_array(_raw_opera_rate(OPERA_20), chunks=1100)).compute()
    ours = france_20["rain"].values
    extra_nan = np.isnan(ours) & np.isfinite(reference)
    print(f"cells NaN by the half-coverage rule only: {extra_nan.sum()}")
    assert extra_nan.sum() < 0.001 * ours.size  # our extra NaNs are few ...
    assert np.all(np.isnan(ours[np.isnan(reference)]))  # ... and we never invent values
    both = np.isfinite(ours)
    np.testing.assert_allclose(ours[both], reference[both], rtol=1e-5, atol=1e-5)


@needs_opera
def test_opera_undetect_gives_zero():
    with h5py.File(OPERA_20, "r") as f:
        raw = f["dataset1/data1/data"][:]
        undetect = f["dataset1/what"].attrs["undetect"]
    all_undetect = _block_mean((raw == undetect).astype(float), 2) == 1.0
    rain = read_odim(OPERA_20, area="europe-opera-4km")["rain"].values
    assert all_undetect.sum() > 10_000
    assert np.all(rain[all_undetect] == 0.0)


@needs_opera
def test_opera_cache_dir_round_trip(tmp_path, france_20):
    clear_memory_cache()
    first = read_odim(OPERA_20, area="france-3km", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("regrid-*.npz"))) == 1
    clear_memory_cache()
    second = read_odim(OPERA_20, area="france-3km", cache_dir=tmp_path)  # from the disk cache
    np.testing.assert_array_equal(first["rain"].values, second["rain"].values)
    np.testing.assert_array_equal(first["rain"].values, france_20["rain"].values)


# --------------------------------------------------------------------------- regridding, synthetic


def _area(res: float, nx: int, ny: int, x0: float = 3_600_000.0, y0: float = 2_600_000.0) -> AreaDefinition:
    return AreaDefinition("t", "t", "t", "EPSG:3035", nx, ny, (x0, y0, x0 + nx * res, y0 + ny * res))


def test_area_average_equals_block_mean_with_nan_rule():
    target = _area(3000.0, 4, 3)
    source = _area(1500.0, 8, 6)
    data = np.arange(48, dtype="float64").reshape(6, 8) / 4.0
    data[0:2, 0:2] = 0.0  # undetect block -> 0
    data[0, 2] = np.nan  # 1 of 4 missing -> mean of 3
    data[0:2, 4] = np.nan  # 2 of 4 missing -> mean of 2 (exactly half is kept)
    data[0:2, 6:8] = np.nan
    data[1, 6] = 7.0  # 3 of 4 missing -> NaN
    data[2:4, 0:2] = np.nan  # no coverage -> NaN
    out = regrid(data, source, target)
    assert get_regridder(source, target).method == "area_average"
    expected = _block_mean(data, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)
    assert out[0, 0] == 0.0
    assert out[0, 1] == pytest.approx(np.mean([data[0, 3], data[1, 2], data[1, 3]]), rel=1e-6)
    assert out[0, 2] == pytest.approx(np.mean(data[0:2, 5]), rel=1e-6)
    assert np.isnan(out[0, 3]) and np.isnan(out[1, 0])


def test_area_average_nan_outside_source_footprint():
    target = _area(3000.0, 4, 2)
    source = _area(1000.0, 6, 6)  # covers only the two western target columns
    out = regrid(np.ones((6, 6)), source, target)
    np.testing.assert_array_equal(out[:, :2], 1.0)
    assert np.isnan(out[:, 2:]).all()


def test_coarser_source_falls_back_to_nearest():
    target = _area(1000.0, 6, 4)
    source = _area(2000.0, 3, 2)
    data = np.array([[1.0, 2.0, np.nan], [4.0, 0.0, 6.0]])
    out = regrid(data, source, target)
    assert get_regridder(source, target).method == "nearest"
    np.testing.assert_array_equal(out, np.repeat(np.repeat(data, 2, axis=0), 2, axis=1))


def test_lonlat_swath_and_area_sources_agree():
    """A 0.01 deg lon/lat raster given as a SwathDefinition regrids like its AreaDefinition."""
    from pyresample.geometry import SwathDefinition

    from qpe_core.readers.meteonet import lonlat_source

    lats, lons = np.meshgrid(48.5 - 0.01 * np.arange(150), -2.0 + 0.01 * np.arange(200), indexing="ij")
    rng = np.random.default_rng(0)
    data = rng.gamma(0.5, 2.0, lats.shape)
    data[rng.random(lats.shape) < 0.3] = np.nan
    area = lonlat_source(lats, lons)
    assert isinstance(area, AreaDefinition)
    by_area = regrid(data, area, "france-3km")
    by_swath = regrid(data, SwathDefinition(lons=lons, lats=lats), "france-3km")
    both = np.isfinite(by_area) & np.isfinite(by_swath)
    assert both.sum() > 500
    np.testing.assert_allclose(by_area[both], by_swath[both], rtol=1e-6)
    assert (np.isfinite(by_area) != np.isfinite(by_swath)).sum() < 0.05 * both.sum()  # footprint edge only


# --------------------------------------------------------------------------- ODIM, synthetic files


def _write_odim(path: Path, datasets: list[dict], projdef: str = OPERA_PROJ) -> None:
    """A NIMBUS-style ODIM file on the OPERA 2 km grid: what attributes in datasetN/dataM/what."""
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_("ODIM_H5/V2_4")
        root_what = f.create_group("what")
        for key, value in {"object": "COMP", "date": "20240901", "time": "121500", "source": "ORG:247"}.items():
            root_what.attrs[key] = np.bytes_(value)
        where = f.create_group("where")
        where.attrs["projdef"] = np.bytes_(projdef)
        for key, value in {"xsize": 1900, "ysize": 2200, "xscale": 2000.0, "yscale": 2000.0, **OPERA_CORNERS}.items():
            where.attrs[key] = value
        f.create_group("how").attrs["nodes"] = np.bytes_("'frabb','frale','frbla'")
        for n, spec in enumerate(datasets, start=1):
            data = f.create_group(f"dataset{n}").create_group("data1")
            data.create_dataset("data", data=spec.pop("array"), compression="gzip")
            what = data.create_group("what")
            for key, value in spec.items():
                what.attrs[key] = np.bytes_(value) if isinstance(value, str) else value


def _packed(fill: int = 0) -> np.ndarray:
    return np.full((2200, 1900), fill, dtype="uint8")


def _dbzh_spec(raw: np.ndarray) -> dict:
    return {"array": raw, "quantity": "DBZH", "gain": 0.5, "offset": -32.0, "nodata": 255.0, "undetect": 0.0}


def test_dbzh_marshall_palmer_numbers():
    r = dbz_to_rain(np.array([23.0, 43.0]))
    # Z = 10^(dBZ/10) = 199.53 / 19952.6 mm6 m-3; R = (Z / 200)^(1 / 1.6)
    assert r[0] == pytest.approx(0.998519, rel=1e-5)
    assert r[1] == pytest.approx(17.7555, rel=1e-4)
    np.testing.assert_allclose(200.0 * r ** 1.6, [10 ** 2.3, 10 ** 4.3], rtol=1e-12)


def test_synthetic_nimbus_dbzh_file(tmp_path):
    raw = _packed(0)  # undetect everywhere
    raw[1000:1100, 400:500] = 110  # 0.5 * 110 - 32 = 23 dBZ
    raw[1100:1200, 400:500] = 150  # 43 dBZ
    raw[1200:1300, 400:500] = 255  # nodata
    qind = np.full((2200, 1900), 200, dtype="uint8")  # 200 / 250 = 0.8
    path = tmp_path / "nimbus_dbzh.h5"
    _write_odim(path, [_dbzh_spec(raw), {"array": qind, "quantity": "QIND", "gain": 1 / 250, "offset": 0.0,
                                         "nodata": 255.0, "undetect": 0.0}])
    ds = read_odim(path, area="europe-opera-4km")
    rain = ds["rain"].values
    assert ds["time"].values == np.datetime64("2024-09-01T12:15:00")
    assert rain[510, 210] == pytest.approx(0.998519, rel=1e-5)
    assert rain[560, 210] == pytest.approx(17.7555, rel=1e-4)
    assert np.isnan(rain[610, 210])  # nodata -> NaN
    assert rain[100, 100] == 0.0  # undetect -> 0
    assert np.nanmax(ds["quality"].values) == pytest.approx(0.8, rel=1e-6)
    assert ds.attrs["quantity"] == "DBZH" and ds.attrs["zr_a"] == 200.0 and ds.attrs["zr_b"] == 1.6
    assert "Z = 200 R^1.6" in ds.attrs["zr_relation"] and "NIMBUS" in ds.attrs["odim_layout"]
    assert ds.attrs["nodes_count"] == 3
    other = read_odim(path, area="europe-opera-4km", zr=(300.0, 1.5))["rain"].values
    assert other[510, 210] == pytest.approx((10 ** 2.3 / 300.0) ** (1 / 1.5), rel=1e-5)


def test_wrong_quantity_names_file_and_quantities(tmp_path):
    path = tmp_path / "acrr_only.h5"
    _write_odim(path, [{"array": _packed(), "quantity": "ACRR", "gain": 0.1, "offset": 0.0},
                       {"array": _packed(), "quantity": "QIND", "gain": 0.01, "offset": 0.0}])
    with pytest.raises(InputFileError, match="acrr_only.h5") as err:
        read_odim(path)
    assert "RATE or DBZH" in str(err.value) and "ACRR" in str(err.value) and "QIND" in str(err.value)


def test_not_hdf5_names_file(tmp_path):
    path = tmp_path / "not_radar.hdf"
    path.write_text("this is not HDF5\n")
    with pytest.raises(InputFileError, match="not_radar.hdf.*not an HDF5"):
        read_odim(path)
    with pytest.raises(InputFileError, match="missing.hdf"):
        read_odim(tmp_path / "missing.hdf")


def test_missing_where_and_unknown_projection(tmp_path):
    path = tmp_path / "no_where.h5"
    with h5py.File(path, "w") as f:
        f.create_group("what").attrs["date"] = np.bytes_("20240901")
    with pytest.raises(InputFileError, match="no_where.h5.*'where'"):
        read_odim(path)
    bad = tmp_path / "bad_proj.h5"
    _write_odim(bad, [_dbzh_spec(_packed())], projdef="+proj=nosuchproj +units=m")
    with pytest.raises(InputFileError, match="bad_proj.h5.*unknown projection"):
        read_odim(bad)


# --------------------------------------------------------------------------- MeteoNet


def test_meteonet_unit_conversion():
    np.testing.assert_allclose(rain_rate(np.array([-1, 0, 1, 100, 254], dtype="int16")),
                               [np.nan, 0.0, 0.12, 12.0, 30.48], rtol=1e-6)
    dbz = rain_rate(np.array([0, 23, 255], dtype="int16"), kind="reflectivity_old")
    assert dbz[0] == 0.0 and dbz[1] == pytest.approx(0.998519, rel=1e-5) and np.isnan(dbz[2])


@needs_meteonet
def test_meteonet_rainfall_sample():
    path = METEONET / "rainfall_NW_2016_08.3.npz"
    slots = read_meteonet(path, area="france-3km")
    with np.load(path, allow_pickle=True) as z:
        dates = [pd.Timestamp(d) for d in z["dates"]]
    assert len(slots) == 45
    assert [pd.Timestamp(s["time"].values) for s in slots] == dates
    assert slots[0]["time"].values == np.datetime64("2016-08-21T00:10")
    assert sum(s.attrs["on_15min_grid"] for s in slots) == 15
    rain = np.stack([s["rain"].values for s in slots])
    finite = np.isfinite(rain)
    assert np.all(rain[finite] >= 0) and np.nanmax(rain) < 200
    lon, lat = lonlats("france-3km")
    in_zone = (lat > 46.4) & (lat < 51.0) & (lon > -5.6) & (lon < 1.8)
    assert np.isnan(rain[:, lat < 46.1]).all()  # south of the NW zone
    assert np.isnan(rain[:, lon > 2.2]).all()  # east of the NW zone
    assert finite[:, in_zone].mean() > 0.7  # land and near-shore covered; far sea is -1 in the source
    wet = np.nanmax(rain, axis=(1, 2))
    print(f"MeteoNet NW: {len(slots)} steps, max rain per step {np.round(wet[:6], 1)} mm/h, "
          f"wet(>0.1) fraction {np.nanmean(rain > 0.1):.4f}")
    assert (wet > 1.0).sum() >= 5


@needs_meteonet
def test_meteonet_reflectivity_sample():
    slots = read_meteonet(METEONET / "reflectivity_old_SE_2016_08.3.npz", area="france-3km")
    assert len(slots) == 29
    rain = np.stack([s["rain"].values for s in slots])
    assert np.nanmin(rain) == 0.0 and 1.0 < np.nanmax(rain) < 300
    assert slots[0].attrs["zr_a"] == 200.0 and slots[0].attrs["product"] == "reflectivity_old"


def test_meteonet_times_from_name_when_dates_absent(tmp_path):
    kept = [dt.datetime(2016, 8, 21, 0, 0), dt.datetime(2016, 8, 25, 12, 15), dt.datetime(2016, 8, 31, 23, 55)]
    period = pd.date_range("2016-08-21", "2016-08-31 23:55", freq="5min")
    missing = np.array([t.to_pydatetime() for t in period if t not in kept], dtype=object)
    data = np.full((3, 20, 30), 50, dtype="int16")
    data[1] = -1
    path = tmp_path / "rainfall_NW_2016_08.3.npz"
    np.savez(path, data=data, miss_dates=missing)
    lats, lons = np.meshgrid(48.5 - 0.01 * np.arange(20), -1.0 + 0.01 * np.arange(30), indexing="ij")
    slots = read_meteonet(path, coords=(lats, lons))
    assert [pd.Timestamp(s["time"].values) for s in slots] == [pd.Timestamp(t) for t in kept]
    assert "miss_dates" in slots[0].attrs["time_source"]
    assert np.nanmax(slots[0]["rain"].values) == pytest.approx(6.0)  # 0.5 mm in 5 min
    assert np.isnan(slots[1]["rain"].values).all()


def test_meteonet_bad_name(tmp_path):
    path = tmp_path / "rainfall_mean_quality-code_NW_2016_08.3.npz"
    np.savez(path, data=np.zeros((1, 2, 2)))
    with pytest.raises(InputFileError, match="rainfall_mean_quality-code_NW_2016_08.3.npz"):
        read_meteonet(path)
