"""The Prefect ``train`` flow on a tiny simulated archive (real Prefect test server), and the
model-card summary of qpe_core.training.report (no Prefect)."""

from __future__ import annotations

import json

from conftest import prefect_artifacts

from qpe_core.assets import DEMO_CHECKPOINT
from qpe_core.training.checkpoint import read_card
from qpe_core.training.report import card_markdown, checkpoint_markdown, read_train_log, validation_scores

CH = ["WV_062", "IR_108", "IR_120"]
TINY = {"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}


def test_card_markdown_of_the_shipped_checkpoint():
    card = read_card(DEMO_CHECKPOINT)
    md = card_markdown(card)
    rows = dict(line.strip("|").split(" | ", 1) for line in md.splitlines()[4:])
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["model kind"] == "cascade-flow"
    assert rows["backbone"].startswith("1,108,130 parameters; base_channels=16, channel_mults=1, 1, 2, 4")
    assert rows["input channels"] == "16 = 2 lags × (7 channels + 1 mask)"
    assert rows["lags (min)"] == "0, -15" and "IR_108" in rows["channels"]
    assert rows["grid"].startswith("france-3km, 15-minute slots")
    assert rows["training period"] == "2024-06-01T00:15Z .. 2024-06-23T22:45Z (1305 training slots)"
    assert rows["steps"].startswith("6000 × 8 patches")
    assert rows["validation loss (EMA)"] == "0.1504 at step 6000"  # the cpu study of 2026-12-05
    assert rows["code version"] == "qpe-seviri 0.1.0, card v1"
    assert rows["frozen mean (U-Net)"].startswith("data/study/cpu/ck/unet, 6000 steps")  # = unet-2slot-s0
    assert md.startswith("### checkpoint cascade-flow\n\n| item | value |\n|---|---|\n")


def test_validation_scores_and_torn_log(tmp_path):
    (tmp_path / "train_log.jsonl").write_text(
        json.dumps({"step": 2, "loss": 0.9, "val_loss": 0.7, "samples_per_s": 3.0}) + "\n"
        + json.dumps({"step": 4, "loss": 0.5, "val_loss": 0.8, "samples_per_s": 4.0}) + "\n" + '{"step": 5, "lo')
    log = read_train_log(tmp_path)
    assert [r["step"] for r in log] == [2, 4]  # the torn last line is ignored
    scores = validation_scores({"validation": {"loss": 0.8, "step": 4}, "steps": 4}, log)
    assert scores == {"val_loss": 0.8, "val_step": 4, "best_val_loss": 0.7, "best_val_step": 2,
                      "train_loss": 0.5, "train_step": 4, "samples_per_s": 4.0}
    assert validation_scores({}, []) == {} and read_train_log(tmp_path / "none") == []
    md = card_markdown({"kind": "unet", "channels": ["a|b"]}, log)
    assert "a\\|b" in md and "| best validation loss | 0.7000 at step 2 |" in md


def test_train_flow_checkpoint_and_card_artifact(prefect_server, tmp_path):
    from flows.train import train
    from qpe_core.archive import Archive
    from qpe_core.simulate_archive import simulate_to_archive

    url = str(tmp_path / "sim.zarr")
    simulate_to_archive(Archive.create(url, "france-3km", CH), "2024-06-01T00:00", 16, seed=5)
    bad = tmp_path / "T_PAAH21_C_EUOC_20240601020000.hdf"
    bad.write_bytes(b"not an hdf5 file")  # the optional radar ingest reports it and training goes on
    out = tmp_path / "ck"
    res = train(archive=url, out=str(out), model="unet", radar_files=[str(bad)], max_steps=2, patch=32,
                batch_size=2, lags=[0, -15], backbone=TINY,
                options={"val_block": "1h", "val_patches": 2, "val_every": 2, "save_every": 2})
    card = read_card(out)
    assert (out / "weights.safetensors").is_file() and card["steps"] == 2 and card["kind"] == "unet"
    assert res["kind"] == "unet" and res["val_step"] == 2 and res["val_loss"] == card["validation"]["loss"]

    md = prefect_artifacts("train-card")
    assert md and md[0].type == "markdown"
    text = md[0].data
    assert "| model kind | unet |" in text and "| lags (min) | 0, -15 |" in text
    assert "france-3km" in text and "WV_062, IR_108, IR_120" in text and "qpe-seviri 0.1.0" in text
    assert "validation loss (EMA)" in text and text == checkpoint_markdown(out, title=f"unet checkpoint `{out}`")
    ingest = prefect_artifacts("train-radar-ingest")
    assert ingest and "failed" in str(ingest[0].data) and bad.name in str(ingest[0].data)
