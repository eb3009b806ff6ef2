"""Prefect flows on a real local Prefect server (prefect_test_harness, SQLite)."""

from __future__ import annotations

import numpy as np

from conftest import prefect_artifacts


def test_simulate_archive_flow_is_idempotent(prefect_server, tmp_path):
    from flows.archive import simulate_archive
    from qpe_core.archive import Archive

    url = str(tmp_path / "sim.zarr")
    info = simulate_archive(start="2024-06-01T00:00Z", periods=6, seed=3, archive_url=url)
    assert info["bt"]["slots"] == 6 and info["rain"]["slots"] == 6 and info["paired_slots"] == 6
    first = Archive.open(url).read_rain("2024-06-01T01:15")
    again = simulate_archive(start="2024-06-01T00:00Z", periods=6, seed=3, archive_url=url)
    assert again["bt"] == info["bt"]
    np.testing.assert_array_equal(Archive.open(url).read_rain("2024-06-01T01:15"), first)
    table = prefect_artifacts("archive-summary")
    assert table and "bt" in str(table[0].data)


def test_ingest_flow_reports_failures(prefect_server, tmp_path):
    from flows.archive import ingest_files

    bad = tmp_path / "T_PAAH21_C_EUOC_20180824200000.hdf"
    bad.write_bytes(b"not an hdf5 file")
    out = ingest_files(radar=[str(bad)], archive_url=str(tmp_path / "a.zarr"))
    assert out["written"] == 0 and len(out["failed"]) == 1
    assert bad.name in out["failed"][0]
    rows = prefect_artifacts("ingest-results")
    assert rows and "failed" in str(rows[0].data)
