"""The `qpe` command end to end (real subprocesses): ingest, info, stack, and its error style."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_qpe


def test_areas_lists_both_grids():
    res = run_qpe("areas")
    assert res.returncode == 0
    assert "france-3km" in res.stdout and "europe-opera-4km" in res.stdout and "384 × 384" in res.stdout


def test_ingest_hrit_and_opera_then_info(shared_data, tmp_path):
    url = str(tmp_path / "arc.zarr")
    hrit = sorted(str(p) for p in (shared_data / "seviri" / "hrit-20100119").glob("H-*"))
    res = run_qpe("ingest", "seviri", *hrit, "--channels", "IR_039,IR_108,IR_134", "--archive", url,
                  "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr
    assert "written seviri 2010-01-19T12:00Z coverage 68.9%" in res.stdout
    radar = sorted(str(p) for p in (shared_data / "radar" / "opera-odyssey-20180824").glob("*.hdf"))[:3]
    # radar of 2018 into an archive that starts in January 2010: same grid, later slots
    res = run_qpe("ingest", "radar", *radar, "--archive", url)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("written radar 2018-08-24T18") == 3
    info = json.loads(run_qpe("archive", "info", url, "--json").stdout)
    assert info["channels"] == ["IR_039", "IR_108", "IR_134"]
    assert info["bt"]["slots"] == 1 and info["bt"]["first"] == "2010-01-19T12:00Z"
    assert info["rain"]["slots"] == 3 and info["rain"]["gaps"] == []
    assert 0.6 < info["bt"]["mean_coverage"] < 0.75
    text = run_qpe("archive", "info", url).stdout
    assert "2018-08-24T18:30Z" in text and "IR_039, IR_108, IR_134" in text


def test_corrupt_file_fails_with_one_line_naming_it(tmp_path):
    bad = tmp_path / "H-000-MSG2__-MSG2________-IR_108___-000008___-201001191200-C_"
    bad.write_bytes(b"\x00garbage" * 100)
    res = run_qpe("ingest", "seviri", str(bad), "--archive", str(tmp_path / "a.zarr"))
    assert res.returncode == 2
    assert bad.name in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3  # one message (wrapped at most by the terminal width)
    dbg = run_qpe("--debug", "ingest", "seviri", str(bad), "--archive", str(tmp_path / "a.zarr"))
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def test_corrupt_radar_file_fails_that_slot_only(shared_data, tmp_path):
    good = sorted((shared_data / "radar" / "opera-odyssey-20180824").glob("*.hdf"))[0]
    bad = tmp_path / "T_PAAH21_C_EUOC_20180824181500.hdf"
    bad.write_bytes(good.read_bytes()[:5000])  # truncated HDF5
    url = str(tmp_path / "a.zarr")
    res = run_qpe("ingest", "radar", str(good), str(bad), "--archive", url)
    assert res.returncode == 1
    assert "written radar 2018-08-24T18:00Z" in res.stdout
    assert bad.name in res.stderr and "Traceback" not in res.stderr
    info = json.loads(run_qpe("archive", "info", url, "--json").stdout)
    assert info["rain"]["slots"] == 1  # the failed slot left nothing behind


def test_unknown_channel_is_a_config_error(tmp_path):
    res = run_qpe("ingest", "seviri", "x", "--channels", "IR_108,IR_999", "--archive", str(tmp_path / "a.zarr"))
    assert res.returncode == 2
    assert "unknown channel(s) ['IR_999']" in res.stderr and "Traceback" not in res.stderr


def test_missing_channel_in_files_names_it(shared_data, tmp_path):
    hrit = sorted(str(p) for p in (shared_data / "seviri" / "hrit-20100119").glob("H-*"))
    res = run_qpe("ingest", "seviri", *hrit, "--archive", str(tmp_path / "a.zarr"))  # default 7 channels
    assert res.returncode == 1
    assert "WV_062" in res.stderr and "IR_039, IR_108, IR_134" in res.stderr


def test_file_of_another_slot_or_satellite(shared_data, tmp_path):
    src = shared_data / "seviri" / "hrit-20100119"
    files = []
    for p in sorted(src.glob("H-*")):
        dst = tmp_path / p.name.replace("MSG2", "MSG3") if "IR_108" in p.name else tmp_path / p.name
        shutil.copy(p, dst)
        files.append(str(dst))
    res = run_qpe("ingest", "seviri", *files, "--channels", "IR_108", "--archive", str(tmp_path / "a.zarr"))
    assert res.returncode != 0 and "several satellites" in res.stderr and "Traceback" not in res.stderr


def test_empty_file_list_and_missing_file(tmp_path):
    res = run_qpe("ingest", "radar", "--archive", str(tmp_path / "a.zarr"))
    assert res.returncode == 2 and "Missing argument" in res.stderr and "Traceback" not in res.stderr
    res = run_qpe("ingest", "seviri", str(tmp_path / "nope.nat"), "--archive", str(tmp_path / "a.zarr"))
    assert res.returncode == 2 and "not found" in res.stderr and "nope.nat" in res.stderr


@pytest.mark.parametrize("args, message", [
    (("archive", "info", "/nonexistent/a.zarr"), "no archive at /nonexistent/a.zarr"),
    (("--config", "/nonexistent.yaml", "areas"), "config file /nonexistent.yaml does not exist"),
])
def test_user_errors_are_one_line(args, message):
    res = run_qpe(*args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_simulate_then_info_and_stack(tmp_path):
    url = str(tmp_path / "sim.zarr")
    res = run_qpe("simulate", "--start", "2024-06-01T00:00Z", "--periods", "8", "--seed", "4", "--archive", url)
    assert res.returncode == 0, res.stderr
    assert "simulated 8 slots" in res.stdout
    info = json.loads(run_qpe("archive", "info", url, "--json").stdout)
    assert info["bt"]["slots"] == info["rain"]["slots"] == info["paired_slots"] == 8
    assert info["bt"]["mean_coverage"] == 1.0 and info["bt"]["gaps"] == []
    res = run_qpe("archive", "stack", url, "--time", "2024-06-01T01:45Z")
    assert res.returncode == 0 and res.stdout.count("available 1") == 2  # the default lags 0, -15
    res = run_qpe("archive", "stack", url, "--time", "2024-06-01T00:30Z", "--lags", "0,-15,-30,-45")
    assert res.returncode == 2 and "missing SEVIRI slot(s) 2024-05-31T23:45Z (lag -45 min)" in res.stderr
    res = run_qpe("archive", "stack", url, "--time", "2024-06-01T00:00Z")
    assert res.returncode == 2 and "missing SEVIRI slot(s) 2024-05-31T23:45Z (lag -15 min)" in res.stderr
    res = run_qpe("simulate", "--start", "2024-06-01T00:07Z", "--archive", url)
    assert res.returncode == 2 and "not on the 15-minute slot grid" in res.stderr


def test_demo_runs_a_nowcast_cycle(tmp_path):
    res = run_qpe("demo", "--workdir", str(tmp_path), "--members", "2",
                  env={"PREFECT_HOME": str(tmp_path / "prefect")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "status" in res.stdout and "done" in res.stdout
    assert "ensemble vs the simulated truth" in res.stdout and "FSS at 1 mm/h, 24 km" in res.stdout
    assert (tmp_path / "products" / "france-3km.zarr").is_dir()
    tifs = list((tmp_path / "products").rglob("*.tif"))
    assert len(tifs) == 6 and list((tmp_path / "products").rglob("*.png"))
    # again: idempotent by slot, and it says where the earlier products are and how to redo them
    res = run_qpe("demo", "--workdir", str(tmp_path), "--members", "2",
                  env={"PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "400"})
    assert res.returncode == 0 and "skipped products already exist (an earlier run's; `make clean` removes them" \
        in res.stdout and "ensemble vs the simulated truth" in res.stdout
