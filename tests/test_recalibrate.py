"""``qpe recalibrate``: a cascade's clip and spread calibration refitted on another period."""

from __future__ import annotations

import json

import pytest
from test_models import TINY
from typer.testing import CliRunner

from qpe_core.archive import Archive
from qpe_core.cli import app
from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.errors import QpeError
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.training.checkpoint import load_checkpoint
from qpe_core.training.recalibrate import recalibrate
from qpe_core.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A simulated archive (8 h) and a 3-step U-Net and cascade trained on it."""
    root = tmp_path_factory.mktemp("recal")
    url = str(root / "sim.zarr")
    simulate_to_archive(Archive.create(url, "france-3km", list(DEFAULT_CHANNELS)), "2024-06-01T00:00", 32, seed=4)
    kw = dict(archive=url, max_steps=3, patch=32, batch_size=2, backbone=TINY, val_block="2h", val_fraction=0.5,
              val_patches=4, fit_patches=8, val_every=3, save_every=3)
    train(TrainConfig(kind="unet", out=str(root / "unet"), **kw))
    train(TrainConfig(kind="cascade-flow", out=str(root / "cf"), mean_checkpoint=str(root / "unet"), **kw))
    return url, root


def test_recalibration_refits_the_knots_on_the_period_and_keeps_the_weights(trained, tmp_path):
    url, root = trained
    before = (root / "cf" / "card.json").read_text()
    entry = recalibrate(root / "cf", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "a", patches=16)
    assert (root / "cf" / "card.json").read_text() == before  # the input is never touched
    assert (tmp_path / "a" / "weights.safetensors").read_bytes() == (root / "cf" / "weights.safetensors").read_bytes()
    old, new = load_checkpoint(root / "cf"), load_checkpoint(tmp_path / "a")
    assert entry["start"] >= "2024-06-01T05:00Z" and entry["end"] <= "2024-06-01T07:45Z" and entry["slots"] > 0
    assert new.card["recalibrated"]["from"] == str(root / "cf") and new.card["recalibrated"]["patches"] == 16
    assert new.objective.scale_knots == old.objective.scale_knots  # the flow was trained with this scale
    assert new.objective.spread_knots != old.objective.spread_knots or new.objective.clip_knots != old.objective.clip_knots
    assert new.card["recalibrated"]["previous"]["spread_knots"] == old.objective.spread_knots
    # deterministic: the same period, patches and seed give the same calibration
    recalibrate(root / "cf", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "b", patches=16)
    assert json.loads((tmp_path / "b" / "card.json").read_text())["objective"] == new.card["objective"]


def test_dry_only_recalibration_changes_only_the_certain_dry_bins(trained, tmp_path):
    """``only="dry"``: the clip and every bin above the scale's floor keep their knots; the floored bins
    get the wet shift of the new period (the entry names them)."""
    import shutil

    url, root = trained
    src = tmp_path / "cf"  # the 3-step cascade with its lower half of bins counted as floored
    shutil.copytree(root / "cf", src)
    card = json.loads((src / "card.json").read_text())
    card["objective"]["scale_floor"] = sorted(k[1] for k in card["objective"]["scale_knots"])[
        len(card["objective"]["scale_knots"]) // 2]
    (src / "card.json").write_text(json.dumps(card))
    entry = recalibrate(src, url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "dry", patches=16,
                        only="dry")
    old, new = load_checkpoint(src).objective, load_checkpoint(tmp_path / "dry").objective
    floored = entry["summary"]["dry_bins"]
    assert floored and floored == [i for i, k in enumerate(old.scale_knots) if k[1] <= old.scale_floor] and entry["only"] == "dry"
    assert new.clip_knots == old.clip_knots and len(new.spread_knots) == len(old.spread_knots)
    assert all(new.spread_knots[i] == old.spread_knots[i] for i in range(len(old.spread_knots)) if i not in floored)
    assert all(new.spread_knots[i][2] == 1.0 for i in floored)  # a floored bin is only ever shifted
    assert any(new.spread_knots[i] != old.spread_knots[i] for i in floored)  # refitted there
    with pytest.raises(QpeError, match="only must be 'all' or 'dry'"):
        recalibrate(root / "cf", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "x", only="wet")


def test_recalibration_refuses_what_it_cannot_do_by_name(trained, tmp_path):
    url, root = trained
    with pytest.raises(QpeError, match="is the checkpoint itself"):
        recalibrate(root / "cf", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", root / "cf")
    with pytest.raises(QpeError, match="unet checkpoint has no held-out calibration"):
        recalibrate(root / "unet", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "u")
    with pytest.raises(QpeError, match="no slot of .* in 2024-07-01"):
        recalibrate(root / "cf", url, "2024-07-01T00:00Z", "2024-07-02T00:00Z", tmp_path / "c")
    with pytest.raises(QpeError, match="is after end"):
        recalibrate(root / "cf", url, "2024-06-01T07:00Z", "2024-06-01T05:00Z", tmp_path / "c")
    with pytest.raises(QpeError, match="cannot parse time"):
        recalibrate(root / "cf", url, "June", "2024-06-01T05:00Z", tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing written for a refused request
    recalibrate(root / "cf", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "d", patches=4)
    with pytest.raises(QpeError, match="already holds a checkpoint"):
        recalibrate(root / "cf", url, "2024-06-01T05:00Z", "2024-06-01T07:45Z", tmp_path / "d", patches=4)


def test_qpe_recalibrate_command(trained, tmp_path):
    url, root = trained
    res = CliRunner().invoke(app, ["recalibrate", str(root / "cf"), "--archive", url, "--start", "2024-06-01T05:00Z",
                                   "--end", "2024-06-01T07:45Z", "--out", str(tmp_path / "r"), "--patches", "8"])
    assert res.exit_code == 0, res.output
    assert "calibration refitted on" in res.output and (tmp_path / "r" / "card.json").is_file()
    bad = CliRunner().invoke(app, ["recalibrate", str(root / "unet"), "--archive", url, "--start", "2024-06-01T05:00Z",
                                   "--end", "2024-06-01T07:45Z", "--out", str(tmp_path / "u")])
    # a user error reaches qpe_core.cli.main (one red line, exit 2) as the QpeError naming the checkpoint
    assert isinstance(bad.exception, QpeError) and "unet: a unet checkpoint" in str(bad.exception)


def test_recalibrate_flow_swaps_a_fresh_checkpoint_in_and_never_touches_the_trained_one(trained, tmp_path,
                                                                                      prefect_server):
    from conftest import prefect_artifacts

    from flows.recalibrate import recalibrate as recalibrate_flow

    url, root = trained
    before = (root / "cf" / "card.json").read_text()
    out = tmp_path / "cf-recal"
    first = recalibrate_flow(str(root / "cf"), url, str(out), days=0.125, end="2024-06-01T07:45Z", patches=8)
    assert first["only"] == "dry" and first["from"] == str(root / "cf") and first["end"] <= "2024-06-01T07:45Z"
    assert first["start"] >= "2024-06-01T04:45Z"  # the last 3 hours
    card = json.loads((out / "card.json").read_text())
    assert card["recalibrated"]["only"] == "dry" and (root / "cf" / "card.json").read_text() == before
    again = recalibrate_flow(str(root / "cf"), url, str(out), days=0.25, end="2024-06-01T07:45Z", patches=8)
    assert again["slots"] > first["slots"]  # a later run replaces the checkpoint at out, from the trained one
    assert json.loads((out / "card.json").read_text())["recalibrated"]["slots"] == again["slots"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cf-recal.")]  # no temporary left
    md = prefect_artifacts("recalibrate")
    assert md and "| refitted | wet shift of" in md[0].data and "weights unchanged" in md[0].data
    with pytest.raises(QpeError, match="is the trained checkpoint itself"):
        recalibrate_flow.fn(str(root / "cf"), url, str(root / "cf"))
