"""Training engine on a small simulated archive: data pipeline, checkpoints, resume, inference."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from qpe_core.archive import Archive
from qpe_core.errors import QpeError
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.training.checkpoint import check_card, load_checkpoint, read_card
from qpe_core.training.dataset import block_split, valid_times
from qpe_core.training.inference import TiledNet, predict, write_prediction
from qpe_core.training.train import TrainConfig, lr_at, train

CH = ["WV_062", "IR_108", "IR_120"]
TINY = {"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}


@pytest.fixture(scope="module")
def sim_archive(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("sim") / "sim.zarr")
    arc = Archive.create(url, "france-3km", CH)
    simulate_to_archive(arc, "2024-06-01T00:00", 24, seed=5)
    return arc


def _cfg(arc, out, kind, steps, **kw):
    return TrainConfig(archive=arc.url, kind=kind, out=str(out), max_steps=steps, patch=32, batch_size=2,
                       lags=[0, -15], val_block="2h", val_patches=2, val_every=2, save_every=2,
                       backbone=TINY, **kw)


def test_valid_times_and_leakage_free_split(sim_archive):
    times = valid_times(sim_archive, [0, -15, -30])
    assert times[0] == pd.Timestamp("2024-06-01T00:30") and len(times) == 22
    train_t, val_t = block_split(pd.date_range("2024-06-01", periods=96 * 10, freq="15min"), 0.2, "1D",
                                 buffer_slots=4)
    assert len(val_t) and len(train_t)
    gaps = np.abs(train_t.values[:, None] - val_t.values[None, :]).min()
    assert gaps > np.timedelta64(60, "m")  # no validation slot within 4 slots of a training slot
    assert set(val_t.floor("1D")).isdisjoint(set(train_t.floor("1D")))


@pytest.mark.parametrize("kind", ["unet", "residual-flow"])
def test_train_checkpoint_resume_and_predict(sim_archive, tmp_path, kind):
    out = tmp_path / kind
    card = train(_cfg(sim_archive, out, kind, 2))
    files = sorted(p.name for p in out.iterdir())
    assert {"card.json", "weights.safetensors", "state.safetensors", "state.json"} <= set(files)
    assert not any(f.endswith((".pt", ".pth", ".pkl")) for f in files)  # no pickle anywhere
    on_disk = read_card(out)
    assert on_disk["steps"] == 2 and on_disk["kind"] == kind and on_disk["channels"] == CH
    assert on_disk["lags"] == [0, -15] and on_disk["area"] == "france-3km"
    assert len(on_disk["normalizer"]["mean"]) == 3 and on_disk["transform"]
    assert "loss" in on_disk["validation"] and card["training_period"]["train_slots"] > 0

    before = load_checkpoint(out).nets.state_dict()
    train(_cfg(sim_archive, out, kind, 4))  # resumes at step 2
    assert read_card(out)["steps"] == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_loss" in r] == [2, 4]
    after = load_checkpoint(out).nets.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    ds = predict(sim_archive, "2024-06-01T02:00", out, members=3, steps=2, seed=7, tile=None)
    n = 1 if kind == "unet" else 3
    assert ds["rain"].shape == (n, 384, 384) and ds.attrs["members"] == n
    rain = ds["rain"].values
    assert np.nanmin(rain) >= 0 and np.isfinite(rain).all()
    again = predict(sim_archive, "2024-06-01T02:00", out, members=3, steps=2, seed=7, tile=None)
    np.testing.assert_array_equal(again["rain"].values, rain)
    if kind != "unet":
        other = predict(sim_archive, "2024-06-01T02:00", out, members=3, steps=2, seed=8, tile=None)
        assert not np.array_equal(other["rain"].values, rain)
        assert not np.array_equal(rain[0], rain[1])
    path = write_prediction(ds, tmp_path / "pred")
    assert path.name == "qpe_20240601T0200.zarr" and ds.attrs["input_slots"] == ["2024-06-01T02:00Z",
                                                                                  "2024-06-01T01:45Z"]


def test_card_mismatch_is_named(sim_archive, tmp_path):
    out = tmp_path / "u"
    card = train(_cfg(sim_archive, out, "unet", 1))
    with pytest.raises(QpeError, match=r"lacks channels \['WV_062'\].*lags \[0, -30\] != checkpoint lags"):
        check_card(card, "france-3km", ["IR_108", "IR_120"], [0, -30])
    with pytest.raises(QpeError, match="grid 'europe-opera-4km' != checkpoint grid 'france-3km'"):
        check_card(card, "europe-opera-4km", CH)
    check_card(card, "europe-opera-4km", CH, other_grid_ok=True)


def test_tiled_net_blends_to_the_untiled_result():
    net = torch.nn.Conv2d(3, 2, 1)  # pointwise: any tiling must reproduce it exactly
    tiled = TiledNet(lambda_net(net), tile=48, overlap=16)
    x = torch.randn(2, 3, 100, 130)
    torch.testing.assert_close(tiled(x, torch.zeros(2)), net(x), rtol=1e-5, atol=1e-5)


def lambda_net(conv):
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x, t):
            return self.conv(x)

    return Wrap()


def test_torchrun_two_processes_gloo(sim_archive, tmp_path):
    """The same training code under torchrun (DDP, gloo on CPU): rank 0 writes one checkpoint."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "qpe_core.cli", "train", "--archive", sim_archive.url, "--model", "unet", "--out", str(out),
           "--max-steps", "2", "--patch", "32", "--batch-size", "1", "--lags", "0,-15"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    card = read_card(out)
    assert card["steps"] == 2 and card["config"]["batch_size"] == 1
    assert load_checkpoint(out).nets["net"] is not None


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(sim_archive, tmp_path):
    """Batches and training noise are pure functions of (seed, rank, step): 2 + 2 steps == 4 steps."""
    from safetensors.torch import load_file

    # constant rate: a cosine schedule follows max_steps, so a finished 2-step run extended to 4 differs
    kw = {"val_fraction": 0.0, "lr_schedule": "constant"}
    train(_cfg(sim_archive, tmp_path / "straight", "residual-flow", 4, **kw))
    train(_cfg(sim_archive, tmp_path / "resumed", "residual-flow", 2, **kw))
    train(_cfg(sim_archive, tmp_path / "resumed", "residual-flow", 4, **kw))
    for name in ("weights.safetensors", "state.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}: {k} differs")


def test_cosine_schedule_decays_the_rate_to_zero_over_the_run(sim_archive, tmp_path):
    """lr at step 0 is the configured rate, half of it midway, ~0 at the last step; logged per step."""
    cfg = _cfg(sim_archive, tmp_path / "cos", "unet", 4, lr=1e-3)
    assert [round(lr_at(cfg, s), 6) for s in range(4)] == [1e-3, 0.000854, 0.0005, 0.000146]
    flat = cfg.model_copy(update={"lr_schedule": "constant"})
    assert {lr_at(flat, s) for s in range(4)} == {1e-3}
    train(cfg)
    log = [json.loads(line) for line in (tmp_path / "cos" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["lr"] == pytest.approx(0.000146, abs=1e-6)
    assert read_card(tmp_path / "cos")["config"]["lr_schedule"] == "cosine"


def test_training_holds_its_slots_in_memory_when_they_fit_and_trains_the_same(sim_archive, tmp_path, monkeypatch):
    from qpe_core.training.train import fits_in_memory

    assert fits_in_memory(4 << 30, available=16 << 30, local_ranks=1)
    assert not fits_in_memory(4 << 30, available=16 << 30, local_ranks=3)  # three ranks on one host
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert fits_in_memory(4 << 30, available=16 << 30) and not fits_in_memory(5 << 30, available=16 << 30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    auto = train(_cfg(sim_archive, tmp_path / "auto", "unet", 2))  # preload=None: a small archive fits
    store = train(_cfg(sim_archive, tmp_path / "store", "unet", 2, preload=False))
    assert auto["training_period"]["held_in_memory_mb"] > 0 and store["training_period"]["held_in_memory_mb"] == 0
    a, b = (load_checkpoint(tmp_path / n).nets.state_dict() for n in ("auto", "store"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same values, from memory or from the store


def test_bench_train_reports_both_ways(sim_archive):
    from qpe_core.training.bench_train import bench_train

    got = bench_train(archive=sim_archive.url, steps=2)
    assert got["memory"]["held_in_memory_mb"] > 0 and got["store"]["held_in_memory_mb"] == 0
    assert got["memory"]["samples_per_s"] > 0 and got["store"]["samples_per_s"] > 0 and got["speedup"] > 0
