"""Catalogue of bad inputs: each gives a clear error naming the file, slot or field at fault, and
leaves the archive untouched (every file of the store with its size and hash, and the
completion markers, compared before and after).

Bad files are built from copies of the real samples in ``../shared/data`` (truncated, garbled,
renamed HRIT segments; OPERA ODIM HDF5 composites modified with h5py); tests needing them skip
with the reason when the folder is absent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from faults.audit import markers, snapshot
from faults.conftest import HRIT_CHANNELS, SLOT, SLOT_LABEL, zero_deg_product
from qpe_core.errors import ArchiveError, ConfigError, InputFileError, QpeError

IR108 = "H-000-MSG2__-MSG2________-IR_108___-000008___-201001191200-C_"
PRO = "H-000-MSG2__-MSG2________-_________-PRO______-201001191200-__"


# ----------------------------------------------------------------------------- the archive under guard

@pytest.fixture(scope="module")
def archive_url(tmp_path_factory, hrit_files, opera_files, lut_dir) -> str:
    """A real archive: the HRIT slot 2010-01-19 12:00 (IR_108, IR_134) and two OPERA radar slots."""
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_radar, ingest_seviri

    url = str(tmp_path_factory.mktemp("guarded") / "archive.zarr")
    arc = Archive.create(url, "france-3km", HRIT_CHANNELS)
    assert not ingest_seviri(hrit_files, arc, cache_dir=lut_dir).failed
    assert not ingest_radar(opera_files[:2], arc, cache_dir=lut_dir).failed
    return url


class Guard:
    """Snapshot of a store (files, sizes, hashes, markers) to compare after a refused input."""

    def __init__(self, url: str):
        self.url = url
        self.before = (snapshot(url), markers(url))

    def untouched(self) -> bool:
        after = (snapshot(self.url), markers(self.url))
        assert after == self.before, "the archive changed"
        return True


@pytest.fixture
def guard(archive_url):
    return Guard(archive_url)


@pytest.fixture
def hrit_copy(hrit_files, tmp_path) -> Path:
    """A writable copy of the five HRIT files."""
    folder = tmp_path / "hrit"
    folder.mkdir()
    for f in hrit_files:
        shutil.copyfile(f, folder / f.name)
    return folder


def _ingest(files, archive_url, lut_dir):
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_seviri

    return ingest_seviri(sorted(files), Archive.open(archive_url, "a"), cache_dir=lut_dir)


def _failed_reason(report) -> str:
    assert [r.status for r in report.results] == ["failed"], report.results
    return report.results[0].reason


# ----------------------------------------------------------------------------- SEVIRI files

def test_truncated_hrit_segment(hrit_copy, guard, lut_dir, record):
    rec = record("HRIT IR_108 segment truncated to half", "bad-input")
    f = hrit_copy / IR108
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    reason = _failed_reason(_ingest(hrit_copy.iterdir(), guard.url, lut_dir))
    assert IR108 in reason and "truncated file" in reason, reason
    rec.flag(reason)
    assert guard.untouched()


def test_garbled_hrit_header(hrit_copy, guard, lut_dir, record):
    rec = record("HRIT IR_108 header records garbled", "bad-input")
    f = hrit_copy / IR108
    data = bytearray(f.read_bytes())
    data[16:200] = np.random.default_rng(0).integers(0, 256, 184, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))
    reason = _failed_reason(_ingest(hrit_copy.iterdir(), guard.url, lut_dir))
    assert IR108 in reason and "corrupt header record at byte 16" in reason, reason
    rec.flag(reason)
    assert guard.untouched()


def test_garbled_hrit_compressed_data(hrit_copy, guard, lut_dir, record):
    rec = record("HRIT IR_108 wavelet-compressed data garbled", "bad-input")
    f = hrit_copy / IR108
    data = bytearray(f.read_bytes())
    n = len(data) // 3
    data[n:n + 20_000] = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))
    reason = _failed_reason(_ingest(hrit_copy.iterdir(), guard.url, lut_dir))
    assert f"corrupt data in channel(s) IR_108 ({IR108})" in reason and SLOT_LABEL in reason, reason
    rec.flag(reason)
    assert guard.untouched()


def test_zeroed_hrit_data_is_read_as_missing_lines(hrit_copy, tmp_path, lut_dir, record):
    """Not an error, by design: a segment whose second half decodes to zero counts gives NaN
    lines (as missing data do), and the slot's coverage says so."""
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_seviri

    rec = record("HRIT IR_108 second half zeroed (decodes as missing lines)", "bad-input")
    f = hrit_copy / IR108
    data = bytearray(f.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    f.write_bytes(bytes(data))
    arc = Archive.create(str(tmp_path / "other.zarr"), "france-3km", HRIT_CHANNELS)
    (res,) = ingest_seviri(sorted(hrit_copy.iterdir()), arc, cache_dir=lut_dir).results
    assert res.status == "written" and 0.5 < res.coverage < 0.68  # 0.69 for the intact slot
    bt = arc.read_bt(SLOT)
    assert np.isfinite(bt[0]).mean() < np.isfinite(bt[1]).mean() - 0.05  # IR_108 lost lines, IR_134 not
    rec.recover(note=f"accepted with reduced coverage {res.coverage:.3f} (IR_108 lines NaN)")


def test_hrit_renamed_to_another_slot(hrit_copy, guard, lut_dir, record):
    rec = record("HRIT files renamed to slot 12:15 (headers say 12:00)", "bad-input")
    for f in list(hrit_copy.iterdir()):
        f.rename(f.with_name(f.name.replace("201001191200", "201001191215")))
    reason = _failed_reason(_ingest(hrit_copy.iterdir(), guard.url, lut_dir))
    assert "201001191215" in reason and "disagrees with its header annotation" in reason, reason
    rec.flag(reason)
    assert guard.untouched()


def test_hrit_segment_of_another_satellite(hrit_copy, guard, lut_dir, record):
    rec = record("one HRIT segment of another satellite (MSG3)", "bad-input")
    f = hrit_copy / IR108
    f.rename(f.with_name(IR108.replace("MSG2", "MSG3")))
    from qpe_core.readers.seviri import read_seviri

    with pytest.raises(InputFileError, match=r"several satellites.*MSG2.*MSG3|several satellites.*MSG3.*MSG2") as err:
        read_seviri(sorted(hrit_copy.iterdir()), channels=HRIT_CHANNELS, cache_dir=lut_dir)
    assert IR108.replace("MSG2", "MSG3") in str(err.value)
    rec.flag(str(err.value))
    assert guard.untouched()


def test_missing_channel_and_missing_prologue(hrit_copy, guard, lut_dir, record, tmp_path):
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_seviri

    rec = record("channel WV_062 absent from the granule; PRO file missing", "bad-input")
    other = Archive.create(str(tmp_path / "wv.zarr"), "france-3km", ["IR_108", "WV_062"])
    reason = _failed_reason(ingest_seviri(sorted(hrit_copy.iterdir()), other, cache_dir=lut_dir))
    assert "channel(s) WV_062 not in slot 2010-01-19T12:00Z" in reason and "present: " in reason, reason
    assert not Archive.open(other.url).times("bt").size
    (hrit_copy / PRO).unlink()
    reason2 = _failed_reason(_ingest(hrit_copy.iterdir(), guard.url, lut_dir))
    assert "lack the PRO file" in reason2 and SLOT_LABEL in reason2, reason2
    rec.flag(reason + " | " + reason2, 2)
    assert guard.untouched()


@pytest.mark.parametrize("size", [100, 600_000])
def test_garbled_native_file(tmp_path, guard, lut_dir, record, size):
    """A ``.nat`` file (no real one in the samples): the native header magic, then garbage."""
    rec = record(f"garbled SEVIRI native file ({size} bytes)", "bad-input")
    nat = tmp_path / "MSG2-SEVI-MSG15-0100-NA-20100119121241.713000000Z-NA.nat"
    head = b"FormatName                  : NATIVE\n"
    nat.write_bytes(head + np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8).tobytes())
    reason = _failed_reason(_ingest([nat], guard.url, lut_dir))
    assert nat.name in reason, reason
    assert ("truncated file" in reason) if size < 445_286 else ("seviri_l1b_native cannot open" in reason), reason
    rec.flag(reason)
    assert guard.untouched()


def test_data_store_granule_of_another_slot(datastore, make_ds_source, granule_zip, hrit_checkpoint, tmp_path,
                                            record):
    """The Data Store announces a product for 12:15 whose files hold 12:00: the cycle for 12:15
    refuses it before writing (it used to ingest it as 12:00 and report 12:15 missing)."""
    from qpe_core.archive import Archive
    from qpe_core.nowcast import run_cycle

    rec = record("Data Store granule announced for 12:15 holding slot 12:00", "bad-input")
    later = SLOT + pd.Timedelta(minutes=15)
    datastore.products.clear()
    datastore.add(zero_deg_product(later, granule_zip))
    url = str(tmp_path / "archive.zarr")
    Archive.create(url, "france-3km", HRIT_CHANNELS)
    before = (snapshot(url), markers(url))
    res = run_cycle(url, str(tmp_path / "products"), hrit_checkpoint, make_ds_source(cache=tmp_path / "cache"),
                    slot=later, now=later + pd.Timedelta(minutes=30), members=2, cache_dir=str(tmp_path / "cache"))
    assert res.status == "failed"
    assert "fetched for slot 2010-01-19T12:15Z hold slot(s) 2010-01-19T12:00Z" in res.reason, res.reason
    rec.flag(res.reason)
    assert (snapshot(url), markers(url)) == before


def test_all_nan_scenes_are_refused(guard, opera_files, tmp_path, lut_dir, record):
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_radar
    from qpe_core.slots import seviri_slot

    rec = record("all-NaN SEVIRI scene; OPERA composite with nodata everywhere", "bad-input")
    arc = Archive.open(guard.url, "a")
    empty = seviri_slot(np.full((2, 384, 384), np.nan, "float32"), HRIT_CHANNELS, "2010-01-19T12:15", "france-3km",
                        source_files=["empty.nat"])
    with pytest.raises(ArchiveError, match=r"SEVIRI slot 2010-01-19T12:15Z \(from empty.nat\) has no valid pixel"):
        arc.write_seviri(empty)
    bad = tmp_path / opera_files[2].name
    shutil.copyfile(opera_files[2], bad)
    with h5py.File(bad, "r+") as h:
        h["dataset1/data1/data"][...] = h["dataset1/what"].attrs["nodata"]
    reason = _failed_reason(ingest_radar([bad], arc, cache_dir=lut_dir))
    assert "radar slot 2018-08-24T18:30Z" in reason and bad.name in reason and "all NaN" in reason, reason
    rec.flag(reason, 2)
    assert guard.untouched()


# ----------------------------------------------------------------------------- radar files

def _odim_copy(src: Path, tmp_path: Path, edit) -> Path:
    bad = tmp_path / src.name
    shutil.copyfile(src, bad)
    with h5py.File(bad, "r+") as h:
        edit(h)
    return bad


@pytest.mark.parametrize("case,edit,expect", [
    ("wrong quantity (TH)", lambda h: h["dataset1/what"].attrs.modify("quantity", np.bytes_(b"TH")),
     r"no RATE or DBZH dataset \(field what/quantity\); quantities found: QIND, TH"),
    ("projection garbage", lambda h: h["where"].attrs.modify("projdef", np.bytes_(b"+proj=nonsense +units=m")),
     r"unknown projection where/projdef="),
    ("projection of another centre", lambda h: h["where"].attrs.modify(
        "projdef", np.bytes_(b"+proj=laea +lat_0=48.0 +lon_0=2.0 +x_0=0 +y_0=0 +units=m +ellps=WGS84")),
     r"where/xscale=2000.0 disagrees with the corners"),
    ("no projection", lambda h: h["where"].attrs.__delitem__("projdef"), r"where/projdef is missing"),
    ("grid size disagrees with data", lambda h: h["where"].attrs.modify("xsize", 1800),
     r"where/xscale=2000.0 disagrees with the corners|dataset1/data1/data has shape"),
    ("bad nominal time", lambda h: h["what"].attrs.modify("time", np.bytes_(b"25xx00")),
     r"bad nominal time what/date='20180824' what/time='25xx00'"),
])
def test_bad_radar_files(opera_files, guard, tmp_path, lut_dir, record, case, edit, expect):
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_radar

    rec = record(f"OPERA ODIM: {case}", "bad-input")
    bad = _odim_copy(opera_files[3], tmp_path, edit)
    reason = _failed_reason(ingest_radar([bad], Archive.open(guard.url, "a"), cache_dir=lut_dir))
    assert bad.name in reason, reason
    assert re.search(expect, reason), reason
    rec.flag(reason)
    assert guard.untouched()


# ----------------------------------------------------------------------------- checkpoints, config, times

def _card_variant(checkpoint: str, tmp_path: Path, **changes) -> str:
    out = tmp_path / "ck-variant"
    shutil.copytree(checkpoint, out)
    card = json.loads((out / "card.json").read_text())
    card.update(changes)
    (out / "card.json").write_text(json.dumps(card))
    return str(out)


def test_checkpoint_card_not_matching_the_archive(guard, hrit_checkpoint, tmp_path, record):
    from qpe_core.archive import Archive
    from qpe_core.nowcast import run_cycle
    from qpe_core.sources import make_source
    from qpe_core.training.inference import predict

    rec = record("checkpoint card: channels / grid not those of the archive", "bad-input")
    wrong_channels = _card_variant(hrit_checkpoint, tmp_path, channels=["WV_062", "IR_108"])
    # the source delivers what the archive holds: without the early card check the cycle wrote
    # the input slot into the archive, then failed at inference
    src = make_source("simulated", area="france-3km", seed=1, channels=HRIT_CHANNELS)
    slot = "2010-01-19T12:15"
    res = run_cycle(guard.url, str(tmp_path / "products"), wrong_channels, src, slot=slot,
                    now="2010-01-19T12:30Z", members=2)
    assert res.status == "failed"
    assert "archive lacks channels ['WV_062']" in res.reason and "checkpoint" in res.reason, res.reason
    with pytest.raises(QpeError, match=r"grid 'france-3km' != checkpoint grid 'europe-opera-4km'"):
        predict(Archive.open(guard.url), SLOT, _card_variant(hrit_checkpoint, tmp_path / "b",
                                                              area="europe-opera-4km"), members=1)
    res2 = run_cycle(guard.url, str(tmp_path / "products"), _card_variant(hrit_checkpoint, tmp_path / "c",
                     area="europe-opera-4km"), src, slot=slot, now="2010-01-19T12:30Z", members=2)
    assert res2.status == "failed" and "area 'europe-opera-4km' != archive area 'france-3km'" in res2.reason
    rec.flag(res.reason + " | " + res2.reason, 3)
    assert guard.untouched()
    assert not (tmp_path / "products").exists() or not list((tmp_path / "products").rglob("*.tif"))


@pytest.mark.parametrize("env,field", [
    ({"QPE_LAGS": "0,-15,soon"}, "lags"),
    ({"QPE_SLOT_MINUTES": "7"}, "slot_minutes"),
    ({"QPE_AREA": "mars-1km"}, "area"),
    ({"QPE_CHANNELS": "IR_108,IR_999"}, "channels"),
    ({"QPE_MIN_RADAR_COVERAGE": "2"}, "min_radar_coverage"),
    ({"QPE_STACK_GAPS": "maybe"}, "stack_gaps"),
    ({"QPE_LAGS": "15,0"}, "lags"),
])
def test_malformed_config_values(monkeypatch, env, field, record):
    from qpe_core.config import load_settings

    rec = record(f"config: {field}={next(iter(env.values()))!r}", "bad-input")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert field in str(err.value) and "environment" in str(err.value), str(err.value)
    rec.flag(str(err.value))


def test_malformed_config_file_through_the_cli(guard, tmp_path, record, opera_files):
    from conftest import run_qpe

    rec = record("config file: unknown key and a lags string (CLI)", "bad-input")
    bad = tmp_path / "qpe.yaml"
    bad.write_text("area: france-3km\nlags: soon\ncolour: red\n")
    proc = run_qpe("--config", str(bad), "ingest", "radar", str(opera_files[4]), "--archive", guard.url)
    assert proc.returncode != 0
    err = " ".join((proc.stderr or proc.stdout).split())  # the console wraps long lines
    assert "qpe.yaml" in err and "lags" in err and "colour" in err, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    rec.flag(err)
    assert guard.untouched()


def test_times_off_the_slot_grid(guard, opera_files, tmp_path, lut_dir, record, hrit_checkpoint):
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_radar
    from qpe_core.nowcast import run_cycle
    from qpe_core.sources import make_source

    rec = record("times off the 15-minute grid (cycle slot, radar file, empty archive)", "bad-input")
    src = make_source("simulated", area="france-3km", seed=1, channels=HRIT_CHANNELS)
    with pytest.raises(QpeError, match=r"slot 2010-01-19T12:05:00Z is not on the 15-minute slot grid"):
        run_cycle(guard.url, str(tmp_path / "p"), hrit_checkpoint, src, slot="2010-01-19T12:05",
                  now="2010-01-19T12:30Z")
    bad = _odim_copy(opera_files[4], tmp_path, lambda h: h["what"].attrs.modify("time", np.bytes_(b"190500")))
    (res,) = ingest_radar([bad], Archive.open(guard.url, "a"), cache_dir=lut_dir).results
    assert res.status == "skipped" and "not on the archive's 15-minute slots" in res.reason
    empty_url = str(tmp_path / "empty.zarr")
    empty = Archive.create(empty_url, "france-3km", HRIT_CHANNELS)
    before = snapshot(empty_url)
    from qpe_core.slots import seviri_slot

    off = seviri_slot(np.full((2, 384, 384), 250.0, "float32"), HRIT_CHANNELS, "2024-06-01T00:07", "france-3km")
    with pytest.raises(QpeError, match=r"slot 2024-06-01T00:07:00Z is not on the 15-minute slot grid"):
        empty.write_seviri(off)
    assert snapshot(empty_url) == before  # not even the time origin was set
    assert Archive.open(empty_url).origin is None
    rec.flag("refused / skipped with the slot named", 3)
    assert guard.untouched()


def test_far_future_times(guard, opera_files, tmp_path, lut_dir, record, hrit_checkpoint):
    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_radar
    from qpe_core.nowcast import run_cycle
    from qpe_core.sources import make_source
    from qpe_core.slots import seviri_slot

    rec = record("far-future times (year 2100: cycle, radar file, empty archive)", "bad-input")
    src = make_source("simulated", area="france-3km", seed=1, channels=HRIT_CHANNELS)
    res = run_cycle(guard.url, str(tmp_path / "p"), hrit_checkpoint, src, slot="2100-01-01T00:00")
    assert res.status == "stale" and "2100-01-01T00:00Z is in the future" in res.reason
    bad = _odim_copy(opera_files[4], tmp_path, lambda h: h["what"].attrs.modify("date", np.bytes_(b"21000824")))
    (r,) = ingest_radar([bad], Archive.open(guard.url, "a"), cache_dir=lut_dir).results
    assert r.status == "failed" and "slot 2100-08-24T19:00Z is in the future" in r.reason, r.reason
    empty_url = str(tmp_path / "empty.zarr")
    empty = Archive.create(empty_url, "france-3km", HRIT_CHANNELS)
    before = snapshot(empty_url)
    future = seviri_slot(np.full((2, 384, 384), 250.0, "float32"), HRIT_CHANNELS, "2100-01-01T00:00", "france-3km")
    with pytest.raises(ArchiveError, match="2100-01-01T00:00Z is in the future"):
        empty.write_seviri(future)
    assert snapshot(empty_url) == before and Archive.open(empty_url).origin is None
    rec.flag(r.reason, 3)
    assert guard.untouched()
