"""SEVIRI satpy reader on the real HRIT sample (Meteosat-9, 2010-01-19 12:00 UTC,
IR_039 / IR_108 / IR_134, segment 8 only: the disk north of ~44N)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qpe_core.errors import InputFileError
from qpe_core.grids import lonlats
from qpe_core.readers import resample
from qpe_core.readers.seviri import detect_format, group_slots, read_seviri

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HRIT_DIR = DATA / "seviri" / "hrit-20100119"
CHANNELS = ["IR_039", "IR_108", "IR_134"]
SLOT = pd.Timestamp("2010-01-19T12:00")


@pytest.fixture(scope="session")
def hrit_files() -> list[Path]:
    if not HRIT_DIR.is_dir():
        pytest.skip(f"real HRIT sample not found at {HRIT_DIR}")
    return sorted(HRIT_DIR.iterdir())


@pytest.fixture(scope="session")
def lut_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("seviri-lut")


@pytest.fixture(scope="session")
def hrit_slot(hrit_files, lut_cache):
    return read_seviri(hrit_files, channels=CHANNELS, cache_dir=lut_cache)


def _copy_renamed(files, dest: Path, old: str, new: str) -> list[Path]:
    dest.mkdir(exist_ok=True)
    out = []
    for f in files:
        target = dest / f.name.replace(old, new)
        shutil.copy(f, target)
        out.append(target)
    return out


# ----------------------------------------------------------------------------- detection / grouping

def test_detect_format_hrit(hrit_files):
    assert {detect_format(f) for f in hrit_files} == {"seviri_l1b_hrit"}


def test_detect_format_by_content(tmp_path):
    nat = tmp_path / "whatever.bin"
    nat.write_bytes(b"FormatName                  : NATIVE" + b"\0" * 100)
    nc = tmp_path / "W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20231220120009.nc"
    nc.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert detect_format(nat) == "seviri_l1b_native"
    assert detect_format(nc) == "seviri_l1b_nc"


def test_detect_format_garbage_names_file(tmp_path):
    bad = tmp_path / "MSG4-SEVI-MSG15-0100-NA-20231220121241.570000000Z-NA.nat"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(InputFileError, match=bad.name):
        detect_format(bad)
    empty_zip = tmp_path / "granule.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("manifest.xml", "<manifest/>")
    with pytest.raises(InputFileError, match="granule.zip.*no SEVIRI file"):
        detect_format(empty_zip)


def test_group_slots(hrit_files, tmp_path):
    later = _copy_renamed(hrit_files, tmp_path, "201001191200", "201001191215")
    groups = group_slots(list(hrit_files) + later)
    assert list(groups) == [SLOT, SLOT + pd.Timedelta("15min")]
    assert sorted(groups[SLOT]) == sorted(hrit_files)
    assert sorted(groups[SLOT + pd.Timedelta("15min")]) == sorted(later)


# ----------------------------------------------------------------------------- the slot on the grid

def test_hrit_on_france_grid(hrit_slot, hrit_files):
    ds = hrit_slot
    assert ds.bt.dims == ("channel", "y", "x") and ds.bt.shape == (3, 384, 384)
    assert ds.bt.dtype == np.float32 and ds.bt.attrs["units"] == "K"
    assert list(ds.channel.values) == CHANNELS
    assert pd.Timestamp(ds.time.values) == SLOT
    assert "LAEA" in ds.spatial_ref.attrs["crs_wkt"] or "3035" in ds.spatial_ref.attrs["crs_wkt"]
    assert ds.bt.attrs["grid_mapping"] == "spatial_ref"
    assert ds.attrs["platform_name"] == "Meteosat-9" and ds.attrs["sensor"] == "seviri"
    assert ds.attrs["reader"] == "seviri_l1b_hrit"
    assert ds.attrs["source_files"] == [f.name for f in hrit_files]


def test_hrit_north_valid_south_nan(hrit_slot):
    bt = hrit_slot.bt.sel(channel="IR_108").values
    _, lat = lonlats("france-3km")
    north, south = bt[lat > 45.0], bt[lat < 43.5]
    assert np.isfinite(north).all()
    assert 200.0 <= north.min() and north.max() <= 290.0
    assert np.isnan(south).all()  # segments 1-7 are missing
    assert 0.6 < np.isfinite(bt).mean() < 0.75
    assert not (hrit_slot.bt.values == 0).any()
    for ch in CHANNELS:  # all channels share the segment-8 footprint
        assert np.array_equal(np.isfinite(hrit_slot.bt.sel(channel=ch).values), np.isfinite(bt))


def test_channel_order_as_requested(hrit_files, hrit_slot, lut_cache):
    ds = read_seviri(hrit_files, channels=["IR_134", "IR_108"], cache_dir=lut_cache)
    assert list(ds.channel.values) == ["IR_134", "IR_108"]
    np.testing.assert_array_equal(ds.bt.values, hrit_slot.bt.sel(channel=["IR_134", "IR_108"]).values)


def test_zip_input(hrit_files, hrit_slot, lut_cache, tmp_path):
    archive = tmp_path / "MSG2-SEVI-HRIT-20100119120000.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in hrit_files:
            zf.write(f, f"data/{f.name}")
        zf.writestr("manifest.xml", "<manifest/>")
    assert detect_format(archive) == "seviri_l1b_hrit"
    assert group_slots([archive]) == {SLOT: [archive]}
    ds = read_seviri([archive], channels=CHANNELS, cache_dir=lut_cache, expect_time="2010-01-19T12:00Z")
    np.testing.assert_array_equal(ds.bt.values, hrit_slot.bt.values)
    assert ds.attrs["source_files"] == [archive.name]


def test_lut_cache_hit_is_identical(hrit_files, hrit_slot, tmp_path):
    cache = tmp_path / "cache"
    resample.clear_memory_cache()
    first = read_seviri(hrit_files, channels=CHANNELS, cache_dir=cache)
    files = list(cache.glob("nnlut-*.npy"))
    assert len(files) == 1 and "france-3km" in files[0].name
    resample.clear_memory_cache()  # the second read must come from disk
    second = read_seviri(hrit_files, channels=CHANNELS, cache_dir=cache)
    assert list(cache.glob("nnlut-*.npy")) == files
    np.testing.assert_array_equal(first.bt.values, second.bt.values)
    np.testing.assert_array_equal(first.bt.values, hrit_slot.bt.values)


# ----------------------------------------------------------------------------- errors

def test_missing_channel_names_it(hrit_files, lut_cache):
    with pytest.raises(InputFileError, match=r"WV_062.*present: IR_039, IR_108, IR_134"):
        read_seviri(hrit_files, channels=["IR_108", "WV_062"], cache_dir=lut_cache)


def test_mixing_slots_is_an_error(hrit_files, tmp_path):
    later = _copy_renamed(hrit_files[:1], tmp_path, "201001191200", "201001191215")
    with pytest.raises(InputFileError, match=r"several slots.*2010-01-19T12:00Z.*2010-01-19T12:15Z"):
        read_seviri(list(hrit_files) + later, channels=["IR_108"])


def test_mixing_satellites_is_an_error(hrit_files, tmp_path):
    other = _copy_renamed(hrit_files[:1], tmp_path, "MSG2", "MSG3")
    with pytest.raises(InputFileError, match=r"several satellites.*MSG2.*MSG3|several satellites.*MSG3.*MSG2"):
        read_seviri(list(hrit_files) + other, channels=["IR_108"])


def test_garbage_file_error_names_file(tmp_path):
    bad = tmp_path / "H-000-MSG2__-MSG2________-IR_108___-000008___-201001191200-C_"
    bad.write_bytes(b"\xde\xad\xbe\xef" * 64)
    with pytest.raises(InputFileError, match=bad.name):
        read_seviri([bad], channels=["IR_108"])


def test_empty_list_error():
    with pytest.raises(InputFileError, match="no SEVIRI file"):
        read_seviri([])


def test_truncated_file_error_names_file(hrit_files, tmp_path):
    files = _copy_renamed(hrit_files, tmp_path, "", "")
    victim = next(f for f in files if "IR_108" in f.name)
    victim.write_bytes(victim.read_bytes()[:100_000])
    with pytest.raises(InputFileError, match=rf"{victim.name}.*truncated"):
        read_seviri(files, channels=["IR_108"])


def test_missing_prologue_error(hrit_files):
    with pytest.raises(InputFileError, match=r"slot 2010-01-19T12:00Z lack the PRO file"):
        read_seviri([f for f in hrit_files if "PRO" not in f.name], channels=["IR_108"])


def test_expect_time_mismatch(hrit_files, lut_cache):
    with pytest.raises(InputFileError, match=r"got slot 2010-01-19T12:00Z, expected 2010-01-19T12:15Z"):
        read_seviri(hrit_files, channels=["IR_108"], cache_dir=lut_cache, expect_time="2010-01-19T12:15Z")
