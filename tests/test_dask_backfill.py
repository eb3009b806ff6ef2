"""The backfill flow on a Dask cluster (prefect-dask DaskTaskRunner) gives the threads runner's results.

Real local Prefect server, simulated source, a local Dask cluster of 2 workers.  The fast test uses
a tiny checkpoint trained here (3 channels, 2 lags) and in-process Dask workers; the slow one the
shipped demo checkpoint (7 channels, 2 lags) on worker processes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import prefect_artifacts
from conftest import tiny_checkpoint as make_tiny_checkpoint  # the fixture below keeps its name

CH = ["WV_062", "IR_108", "IR_120"]
START, END = "2024-06-01T00:45Z", "2024-06-01T01:15Z"  # 3 slots


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck"), CH, seed=5, slots=3)


def _slots(start: str, end: str) -> list[pd.Timestamp]:
    return list(pd.date_range(start.rstrip("Z"), end.rstrip("Z"), freq="15min"))


def _products(products_url: Path, slots) -> dict[str, np.ndarray]:
    from qpe_core.products.cube import ProductCube

    cube = ProductCube.open(str(products_url / "france-3km.zarr"))
    out = {}
    for t in slots:
        assert cube.has_slot(t), f"slot {t} has no products"
        ds = cube.read_slot(t)
        for name, var in ds.data_vars.items():
            out[f"{t:%H%M}/{name}"] = np.asarray(var.values)
    return out


def _backfill_both(tmp_path, checkpoint: str, members: int, seed: int, dask_processes: bool, start=START,
                   end=END) -> dict:
    from flows.nowcast import backfill

    runs = {}
    for runner in ("dask", "threads"):
        t0 = time.perf_counter()
        summary = backfill(start=start, end=end, checkpoint=checkpoint, members=members, seed=seed,
                           archive_url=str(tmp_path / f"{runner}.zarr"), products_url=str(tmp_path / runner),
                           runner=runner, dask_workers=2, dask_processes=dask_processes)
        runs[runner] = (summary, time.perf_counter() - t0)
    n = len(_slots(start, end))
    for runner, (summary, seconds) in runs.items():
        assert summary == {"slots": n, "done": n, "skipped": 0, "failed": 0, "stale": 0}, (runner, summary)
        print(f"backfill {runner}: {n} slots in {seconds:.1f} s")
    return runs


def _assert_same_products(tmp_path, slots, exact: bool = True):
    """Same products from both runners: byte for byte when the tasks ran with the same torch thread
    count (in-process Dask workers); else within float rounding of the convolutions (Dask worker
    processes run torch on one thread: OMP_NUM_THREADS=1), probabilities up to a few pixels near a
    threshold."""
    dask, threads = _products(tmp_path / "dask", slots), _products(tmp_path / "threads", slots)
    assert dask.keys() == threads.keys() and any(k.endswith("/rain") for k in dask)
    for key in dask:
        if exact:
            np.testing.assert_array_equal(dask[key], threads[key], err_msg=key)
        else:  # a few pixels may cross a threshold: 0.1 mm/h (dry -> 0) or P(R > x) (a member swaps side)
            a, b = dask[key], threads[key]
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=key)
            off = np.abs(np.nan_to_num(a) - np.nan_to_num(b)) > 0.02 + 1e-3 * np.abs(np.nan_to_num(b))
            assert off.mean() < 1e-4, (key, off.mean())
    cogs = {p.relative_to(tmp_path / "dask") for p in (tmp_path / "dask").rglob("*.tif")}
    assert len(cogs) == 6 * len(slots)
    if exact:
        for rel in cogs:
            assert (tmp_path / "dask" / rel).read_bytes() == (tmp_path / "threads" / rel).read_bytes(), rel


def test_dask_backfill_matches_threads(prefect_server, tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("QPE_CHANNELS", ",".join(CH))
    _backfill_both(tmp_path, tiny_checkpoint, members=2, seed=3, dask_processes=False)
    _assert_same_products(tmp_path, _slots(START, END))
    # the inputs the Dask workers wrote are the threads runner's
    from qpe_core.archive import Archive

    a, b = Archive.open(str(tmp_path / "dask.zarr")), Archive.open(str(tmp_path / "threads.zarr"))
    for t in pd.date_range("2024-06-01T00:30", "2024-06-01T01:15", freq="15min"):
        np.testing.assert_array_equal(a.read_bt(t), b.read_bt(t))
    assert "backfill" in str(prefect_artifacts("backfill")[0].key)
    # a second Dask run resumes: every slot is already done
    from flows.nowcast import backfill

    again = backfill(start=START, end=END, checkpoint=tiny_checkpoint, members=2, seed=3,
                     archive_url=str(tmp_path / "dask.zarr"), products_url=str(tmp_path / "dask"), runner="dask",
                     dask_workers=2, dask_processes=False)
    assert again == {"slots": 3, "done": 0, "skipped": 3, "failed": 0, "stale": 0}


def test_backfill_rejects_unknown_runner(prefect_server, tmp_path, tiny_checkpoint):
    from flows.nowcast import backfill

    with pytest.raises(Exception, match="runner"):
        backfill(start=START, end=START, checkpoint=tiny_checkpoint, runner="spark",
                 archive_url=str(tmp_path / "a.zarr"), products_url=str(tmp_path / "p"))


@pytest.mark.slow
def test_dask_backfill_demo_checkpoint_worker_processes(prefect_server, tmp_path, monkeypatch):
    """The shipped demo checkpoint, 2 members, 2 slots on 2 Dask worker processes."""
    from qpe_core.assets import DEMO_CHECKPOINT

    monkeypatch.delenv("QPE_CHANNELS", raising=False)
    start, end = "2024-06-01T12:00Z", "2024-06-01T12:15Z"
    _backfill_both(tmp_path, str(DEMO_CHECKPOINT), members=2, seed=0, dask_processes=True, start=start, end=end)
    _assert_same_products(tmp_path, _slots(start, end), exact=False)
