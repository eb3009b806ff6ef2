"""Load check (qpe_core.load_bench, ``qpe bench --what load``): a simulated backfill by parallel
writer processes with a nowcast cycle on the same archive meanwhile.  A few slots here; one
day in the slow variant (README, Operations, has the 7-day figures)."""

from __future__ import annotations

import json

import pytest

from qpe_core.archive import Archive, summarize
from qpe_core.assets import DEMO_CHECKPOINT
from qpe_core.load_bench import chunks, run_load
from qpe_core.products.cube import ProductCube
from qpe_core.training.checkpoint import read_card


def check_figures(fig: dict, slots: int) -> None:
    assert fig["slots"] == slots and fig["seconds"] > 0 and fig["slots_per_min"] > 0
    arc = fig["archive"]
    assert arc["complete"], arc
    assert arc["bt_slots"] == arc["rain_slots"] == slots and arc["missing_slots"] == 0
    lags = len(read_card(DEMO_CHECKPOINT)["lags"])  # the nowcast's input slots before the period
    assert arc["archive_slots"] == arc["paired_slots"] == slots + lags
    assert 0 < fig["peak_rss_worker_mib"] < fig["peak_rss_total_mib"]
    assert fig["peak_rss_driver_mib"] > 0 and fig["worker_rss_after_last_chunk_mib"] > 0
    now = fig["nowcast"]
    assert now["status"] == "done", now["reason"]
    assert len(now["inputs_present"]) == lags and now["missing_inputs"] == [] and now["peak_rss_mib"] > 0
    assert {"cube", "mean", "quicklook"} <= set(now["products"])


def test_chunks_cover_the_period():
    assert chunks("2024-06-01T00:00Z", 10, 4) == [("2024-06-01T00:00Z", 4), ("2024-06-01T01:00Z", 4),
                                                  ("2024-06-01T02:00Z", 2)]


def test_backfill_with_concurrent_nowcast(tmp_path):
    fig = run_load(slots=4, chunk_slots=2, workers=2, members=1, steps=1, workdir=tmp_path)
    print(json.dumps(fig, indent=1))
    check_figures(fig, 4)
    assert fig["chunks"] == 2 and fig["archive_url"] == str(tmp_path / "france-3km.zarr")
    info = summarize(Archive.open(fig["archive_url"]))  # what `qpe archive info` prints
    assert info["bt"]["first"] == "2024-06-01T00:00Z" and info["bt"]["last"] == fig["nowcast"]["slot"]
    assert ProductCube.open(fig["nowcast"]["products"]["cube"]).has_slot(fig["nowcast"]["slot"])


def test_bench_command_passes_days_and_load_dir(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import qpe_core.load_bench
    from qpe_core.cli import app

    seen = {}
    monkeypatch.setattr(qpe_core.load_bench, "run_load", lambda **kw: seen.update(kw) or {"slots": 1})
    res = CliRunner().invoke(app, ["bench", "--what", "load", "--days", "0.5", "--load-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["load"] == {"slots": 1}
    assert seen == {"days": 0.5, "checkpoint": None, "workdir": str(tmp_path)}


@pytest.mark.slow
def test_one_day_backfill_with_concurrent_nowcast(tmp_path):
    fig = run_load(days=1, chunk_slots=24, workers=2, members=2, steps=2, workdir=tmp_path)
    print(json.dumps(fig, indent=1))
    check_figures(fig, 96)
    assert fig["chunks"] == 4 and fig["nowcast"]["overlap_with_backfill_s"] > 0
    # bounded memory: a worker holds no more after its last chunk than after its first (+10 %)
    assert fig["worker_rss_after_last_chunk_mib"] <= 1.1 * fig["worker_rss_after_first_chunk_mib"]
