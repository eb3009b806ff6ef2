"""Satip zipped-Zarr reader on the real Meteosat-11 Rapid Scan sample
(2023-12-20 11:35-12:30 UTC, 5-minute slots, cropped to lat 47.5-65.4, lon -36.5-10)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from zarr.storage import ZipStore

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.errors import InputFileError
from qpe_core.grids import lonlats
from qpe_core.readers import resample
from qpe_core.readers.satip import SATIP_RANGES, read_satip, stored_scaling

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SATIP_DIR = DATA / "seviri" / "satip-rss-20231220"
IR108_MIN, IR108_MAX = SATIP_RANGES["IR_108"]


@pytest.fixture(scope="session")
def satip_dir() -> Path:
    if not SATIP_DIR.is_dir():
        pytest.skip(f"real Satip sample not found at {SATIP_DIR}")
    return SATIP_DIR


@pytest.fixture(scope="session")
def lut_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("satip-lut")


@pytest.fixture(scope="session")
def noon(satip_dir, lut_cache):
    return read_satip(satip_dir / "202312201200.zarr.zip", cache_dir=lut_cache)


def _raw(path: Path, channel: str) -> np.ndarray:
    group = zarr.open_group(ZipStore(path, mode="r"), mode="r")
    variables = [str(v) for v in group["variable"][:]]
    return group["data"][0, :, :, variables.index(channel)], dict(group["data"].attrs)


def test_scaling_is_not_stored_so_satip_constants_apply(satip_dir):
    _, attrs = _raw(satip_dir / "202312201200.zarr.zip", "IR_108")
    assert stored_scaling(attrs, "IR_108") is None
    assert (IR108_MIN, IR108_MAX) == pytest.approx((199.10, 313.28), abs=0.01)
    assert stored_scaling({"IR_108_min": 200.0, "IR_108_max": 300.0}, "IR_108") == (200.0, 300.0)
    assert stored_scaling({"variable_order": ["IR_087", "IR_108"], "mins": [1, 2], "maxs": [3, 4]},
                          "IR_108") == (2.0, 4.0)


def test_ir108_decode_within_stored_range(satip_dir, noon):
    raw, _ = _raw(satip_dir / "202312201200.zarr.zip", "IR_108")
    assert raw.min() >= 0 and raw.max() <= 1023
    bt = noon.bt.sel(channel="IR_108").values
    valid = bt[np.isfinite(bt)]
    assert IR108_MIN <= valid.min() and valid.max() <= IR108_MAX
    assert 200.0 < valid.min() < valid.max() < 300.0  # plausible December scene
    decoded = (IR108_MIN + raw.astype("float32") / 1023 * (IR108_MAX - IR108_MIN)).astype("float32")
    assert np.isin(valid, decoded).all()  # nearest neighbour: every value is a decoded source pixel
    assert noon.attrs["scaling_source"].startswith("Satip Compressor defaults")


def test_output_on_grid(noon):
    ds = noon
    assert ds.bt.shape == (len(DEFAULT_CHANNELS), 384, 384) and ds.bt.dtype == np.float32
    assert list(ds.channel.values) == DEFAULT_CHANNELS
    assert "3035" in ds.spatial_ref.attrs["crs_wkt"] or "LAEA" in ds.spatial_ref.attrs["crs_wkt"]
    assert ds.attrs["platform_name"] == "Meteosat-11" and ds.attrs["reader"] == "satip_zarr"
    bt = ds.bt.sel(channel="IR_108").values
    _, lat = lonlats("france-3km")
    assert np.isnan(bt[lat < 47.4]).all()  # south of the crop
    assert np.isfinite(bt[lat > 48.0]).all()
    assert 0.30 < np.isfinite(bt).mean() < 0.37
    assert not (ds.bt.values == 0).any()
    for ch in DEFAULT_CHANNELS:
        assert np.array_equal(np.isfinite(ds.bt.sel(channel=ch).values), np.isfinite(bt))


def test_time_and_channel_order(satip_dir, noon, lut_cache):
    ds = read_satip(satip_dir / "202312201200.zarr.zip", channels=["IR_134", "WV_062", "IR_108"],
                    cache_dir=lut_cache)
    # the 12:00 file holds the scan 11:55-12:00: its slot starts at 11:55
    assert pd.Timestamp(ds.time.values) == pd.Timestamp("2023-12-20T11:55")
    assert ds.attrs["file_time"] == "2023-12-20T12:00Z"
    assert ds.attrs["scan_start_time"].startswith("2023-12-20T11:55")
    assert list(ds.channel.values) == ["IR_134", "WV_062", "IR_108"]
    np.testing.assert_array_equal(ds.bt.values, noon.bt.sel(channel=["IR_134", "WV_062", "IR_108"]).values)


def test_four_15_minute_slots(satip_dir, lut_cache):
    times = pd.date_range("2023-12-20T11:30", "2023-12-20T12:15", freq="15min")
    labels = times + pd.Timedelta(minutes=5)
    slots = [read_satip(satip_dir / f"{t:%Y%m%d%H%M}.zarr.zip", channels=["IR_108"], cache_dir=lut_cache)
             for t in labels]
    assert [pd.Timestamp(s.time.values) for s in slots] == list(times)
    masks = [np.isfinite(s.bt.values) for s in slots]
    assert all(np.array_equal(m, masks[0]) for m in masks)
    assert not np.array_equal(slots[0].bt.values, slots[-1].bt.values, equal_nan=True)


def test_cache_files_and_identical_result(satip_dir, noon, tmp_path):
    resample.clear_memory_cache()
    first = read_satip(satip_dir / "202312201200.zarr.zip", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("nnlut-*france-3km*.npy"))) == 1
    resample.clear_memory_cache()
    second = read_satip(satip_dir / "202312201200.zarr.zip", cache_dir=tmp_path)
    np.testing.assert_array_equal(first.bt.values, second.bt.values)
    np.testing.assert_array_equal(first.bt.values, noon.bt.values)


def test_missing_channel_names_it(satip_dir):
    with pytest.raises(InputFileError, match=r"HRV.*absent.*present: IR_016"):
        read_satip(satip_dir / "202312201200.zarr.zip", channels=["IR_108", "HRV"])


def test_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "202312201200.zarr.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputFileError, match=bad.name):
        read_satip(bad)
    not_satip = tmp_path / "202312201205.zarr.zip"
    with zipfile.ZipFile(not_satip, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(InputFileError, match=not_satip.name):
        read_satip(not_satip)
