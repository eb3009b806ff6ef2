"""``qpe study``: the tiny profile end to end (simulate, train, draw, score), resuming, and the mission checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qpe_core.cli import app
from qpe_core.config import DEFAULT_LAGS
from qpe_core.errors import QpeError
from qpe_core.report.mission import TARGETS, crps_of, member_scores, mission_checks
from qpe_core.study import PROFILES, ModelSpec, run_study


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run_study(PROFILES["tiny"], out)


def test_tiny_study_writes_report_with_every_model_and_the_mission_checks(tiny_study):
    out, metrics = tiny_study
    names = [m.name for m in PROFILES["tiny"].models]
    assert list(metrics["models"]) == names
    for name in names:  # one equal budget, one rate schedule
        card = json.loads((out / "ck" / name / "card.json").read_text())
        assert card["steps"] == PROFILES["tiny"].steps and card["config"]["lr_schedule"] == "cosine"
    report = (out / "report" / "report.md").read_text()
    assert "## Mission checks" in report and "### cascade-flow (default)" in report
    assert "## Comparison" in report and "| POD | FAR | CSI | ETS |" in report and "q99.9 / truth" in report
    assert metrics["models"]["ddpm"]["lr_schedule"] == "cosine"
    assert "## Training curves" in report and isinstance(metrics["models"]["unet"]["val_curve"], list)
    from qpe_core.report.mission import curves_markdown
    md = curves_markdown({"models": {"u": {"val_curve": [[500, 0.2], [1000, 0.1], [2000, 0.099]],
                                           "lr_schedule": "cosine"}}})
    assert "- u (cosine rate): 500: 0.2000, 1000: 0.1000, 2000: 0.0990; step 1000 to 2000: -1.0 %" in md
    assert set(metrics["mission"]) == {"cascade-flow", "flow", "ddpm"}  # the ensembles
    checks = metrics["mission"]["cascade-flow"]["checks"]
    assert [c["check"] for c in checks] == ["fss_mean", "fss_member", "realism", "maximum", "spectrum",
                                            "spread_skill", "crps", "cost"]
    assert checks[-1]["held"] is not None  # the default model has its reference-step ensemble
    unc = metrics["mission"]["cascade-flow"]["uncertainty"]  # the default's checks resampled, its days alone
    assert unc["point_holds"] == {c["check"]: c["held"] for c in checks if c["check"] not in ("cost",)}
    assert "### How sure: cascade-flow's checks on resampled cases" in report and "| day (UTC) | cases |" in report
    log = json.loads((out / "study.json").read_text())
    assert set(log["seconds"]) == {"simulate", "train", "draw", "score", "total"}
    peak = [log["peak_rss_mib"][k] for k in ("simulate", "train", "draw", "score")]
    assert 0 < peak[0] <= peak[1] <= peak[2] <= peak[3]  # a running peak, per stage
    saved = json.loads((out / "report" / "metrics.json").read_text())
    assert saved["default"] == "cascade-flow" and saved["profile"]["name"] == "tiny"
    truth = np.load(out / "ensembles" / "truth.npz")["truth"]
    assert truth.shape == (2, 64, 64)  # tiny: 2 cases on a 64 x 64 central window
    # the held-out cases come from the evaluation segment only
    seg = PROFILES["tiny"].eval_segments[0]
    assert all(t >= seg.start[:16] for t in metrics["times"])


def test_the_maximum_check_prints_an_oracle_ensembles_and_a_foreign_truth_has_none(tiny_study, tmp_path):
    """The default's maximum line carries the oracle ensemble's figures (2 draws, 2 cases, from the
    simulator of the held-out segment); a truth that is not that simulator's rain gets no oracle and
    says why."""
    from qpe_core.study import oracle_stage

    out, metrics = tiny_study
    line = next(c["text"] for c in metrics["mission"]["cascade-flow"]["checks"] if c["check"] == "maximum")
    kept = json.loads((out / "ensembles" / "oracle.json").read_text())
    ratios = np.array(kept["oracle"]["max_ratio"])
    assert ratios.shape == (2, 2) and np.isfinite(ratios).all() and (ratios > 0).all()
    over = (ratios > 2).sum(axis=1)
    assert f"every case held in {(over == 0).sum()} of 2 draws" in line and "oracle ensemble" in line
    # every check scored on the same oracle draws (the "How sure" section): its maxima agree with the line's
    checks = kept["oracle"]["checks"]
    assert checks["draws"] == 2 and checks["held"]["maximum"] == (over == 0).sum()
    assert checks["median"]["cases_over"] == np.median(over)
    assert set(checks["by_day"]) == {t[:10] for t in metrics["times"]}
    assert metrics["mission"]["cascade-flow"]["uncertainty"]["oracle"] == checks
    assert "| oracle: median over draws | oracle: check held in |" in (out / "report" / "report.md").read_text()
    # the member check carries the oracle's member FSS at the check's scale (24 km = 8 pixels of 3 km)
    member = next(c["text"] for c in metrics["mission"]["cascade-flow"]["checks"] if c["check"] == "fss_member")
    fss0, fss_mean = kept["oracle"]["fss_member0"], kept["oracle"]["fss_member_mean"]
    assert len(fss0) == len(fss_mean) == 2 and kept["oracle"]["fss_scale_px"] == 8
    assert all(0 <= f <= 1 for f in fss0 + fss_mean if np.isfinite(f))
    assert f"the oracle ensemble: member 0 {np.mean(fss0):.3f}" in member and "of 2 draws]" in member
    with np.load(out / "ensembles" / "truth.npz") as z:
        times, truth = list(z["times"]), z["truth"]
    # an oracle kept from before its member FSS is drawn again: same draws, so the same maxima
    (tmp_path / "old" / "ensembles").mkdir(parents=True)
    old = {"key": kept["key"], "oracle": {k: v for k, v in kept["oracle"].items() if not k.startswith("fss")}}
    (tmp_path / "old" / "ensembles" / "oracle.json").write_text(json.dumps(old))
    again = oracle_stage(PROFILES["tiny"], tmp_path / "old", times, truth)
    assert again["max_ratio"] == kept["oracle"]["max_ratio"] and again["fss_member0"] == fss0
    (tmp_path / "ensembles").mkdir()
    assert oracle_stage(PROFILES["tiny"], tmp_path, times, truth + 0.5) is None
    assert "is not the simulator's rain" in json.loads((tmp_path / "ensembles" / "oracle.json").read_text())["reason"]


def test_rerun_resumes_without_retraining_and_gives_the_same_scores(tiny_study):
    out, metrics = tiny_study
    weights = {p: p.stat().st_mtime_ns for p in (out / "ck").glob("*/weights.safetensors")}
    again = CliRunner().invoke(app, ["study", "--profile", "tiny", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "Mission checks" in again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "ck").glob("*/weights.safetensors")} == weights
    saved = json.loads((out / "report" / "metrics.json").read_text())
    for name in metrics["models"]:
        a, b = metrics["models"][name]["summary"]["CRPS"], saved["models"][name]["summary"]["CRPS"]
        assert (math.isnan(a) and b is None) or a == pytest.approx(b)


def test_customise_keeps_models_moves_the_default_and_overrides_the_schedule(tmp_path):
    from qpe_core.study import _train_config, customise

    assert customise("cpu") == PROFILES["cpu"]
    prof = customise("cpu", ["unet", "ddpm"], steps=10)
    assert [m.name for m in prof.models] == ["unet", "ddpm"] and prof.default == "ddpm" and prof.steps == 10
    assert {_train_config(prof, m, "a.zarr", tmp_path).lr_schedule for m in prof.models} == {"cosine"}
    flat = customise("cpu-lags", lr_schedule="cosine")  # cpu-lags keeps its constant rate unless asked
    assert PROFILES["cpu-lags"].lr_schedule == "constant" and flat.lr_schedule == "cosine"
    with pytest.raises(QpeError, match="lr_schedule"):
        customise("cpu", lr_schedule="linear")


def test_study_cli_refuses_unknown_profile_and_model(tmp_path):
    r = CliRunner().invoke(app, ["study", "--profile", "huge", "--out", str(tmp_path)])
    assert isinstance(r.exception, QpeError) and "unknown profile 'huge'" in str(r.exception)  # qpe: exit 2
    r = CliRunner().invoke(app, ["study", "--profile", "tiny", "--models", "gan", "--out", str(tmp_path)])
    assert isinstance(r.exception, QpeError) and "no model ['gan']" in str(r.exception)
    bad = PROFILES["tiny"].model_copy(update={"default": "gan"})
    with pytest.raises(QpeError, match="default model 'gan'"):
        run_study(bad, tmp_path)


def test_another_studys_archive_must_hold_the_profiles_segments(tiny_study, tmp_path):
    """--archive of a study of other data is refused, naming the missing segment (it would otherwise
    train on whatever slots happen to overlap)."""
    from qpe_core.study import Segment

    out, _ = tiny_study
    other = PROFILES["tiny"].model_copy(update={"eval_segments": [Segment(start="2024-06-02T00:00Z", periods=12, seed=9)]})
    with pytest.raises(QpeError, match=r"lacks profile tiny's segment\(s\) 2024-06-02T00:00Z \(12 slots, seed 9\)"):
        run_study(other, tmp_path, archive=str(out / "archive.zarr"))
    assert not (tmp_path / "ck").exists()  # refused before any training


def test_member_scores_perfect_and_shifted_members():
    rng = np.random.default_rng(0)
    truth = np.zeros((3, 48, 48))
    truth[:, 10:30, 2:16] = rng.gamma(2.0, 3.0, (3, 20, 14)) + 1.0  # one rain area per case
    truth[0, :4] = np.nan
    perfect = np.repeat(truth[:, None], 4, axis=1)
    s = member_scores(truth, np.nan_to_num(perfect), 8)
    assert s["fss_member0"] == pytest.approx(1.0) and s["fss_member_mean"] == pytest.approx(1.0)
    assert s["max_ratio"] == pytest.approx([1.0, 1.0, 1.0])
    worse = perfect.copy()
    worse[:, 1] = np.roll(truth, 24, axis=-1)  # member 1 misplaced
    worse[1, 2] *= 3.0                          # and one case three times too strong
    s = member_scores(truth, np.nan_to_num(worse), 8)
    assert s["fss_member0"] == pytest.approx(1.0) and s["fss_members"][1] < 0.9 and s["fss_member_mean"] < 1.0
    assert s["max_ratio"][1] == pytest.approx(3.0)
    assert s["median_max_ratio"][1] == pytest.approx(1.0)  # one member too strong, not the ensemble
    assert crps_of(truth[1:], perfect[1:]) == pytest.approx(0.0, abs=1e-12)


def _summary(**kw):
    base = {"FSS_1_24km": 0.80, "MAE": 0.50, "wet_fraction": 0.20, "wet_fraction_truth": 0.20,
            "wet_fraction_ratio": 1.0, "q99": 10.0, "q99_truth": 10.0, "q99_ratio": 1.0,
            "spectrum_ratio_10_50km": 1.0, "spectrum_ratio_10_50km_min": 0.9, "spectrum_ratio_10_50km_max": 1.1,
            "spread_skill": 1.0, "rank_chi2_dof": 1.0, "rank_RI": 0.05, "CRPS": 0.44, "CRPS_fair": 0.40,
            "evals_per_member": 7}
    return {**base, **kw}


def test_mission_checks_hold_and_fail_on_their_targets():
    unet = _summary(MAE=0.5)
    extra = {"fss_member0": 0.78, "fss_member_mean": 0.77, "max_ratio": [1.2, 1.9], "case_max": [20.0, 30.0]}
    cost = {"evals_per_member": 7, "crps": 0.40, "crps_ref": 0.395, "ref_steps": 64, "cases": 4}
    good = mission_checks(_summary(FSS_1_24km=0.79), unet, extra, cost)
    assert all(c["held"] for c in good), [c["text"] for c in good]
    bad = mission_checks(_summary(FSS_1_24km=0.77, q99_ratio=0.8, spread_skill=0.7, CRPS_fair=0.43,
                                  spectrum_ratio_10_50km=1.25),
                         unet, {**extra, "fss_member_mean": 0.74, "max_ratio": [2.5, 1.0]},
                         {**cost, "evals_per_member": 9})
    assert [c["held"] for c in bad] == [False] * 8
    assert "above 2 (median member there: 1.70)" in mission_checks(
        _summary(), unet, {**extra, "max_ratio": [2.5, 1.0], "median_max_ratio": [1.7, 0.6]}, cost)[3]["text"]
    assert TARGETS["crps_vs_mae"] * 0.5 < 0.43  # the CRPS line failed on its target, not by accident
    assert mission_checks(_summary(), None, extra, None)[0]["held"] is None  # no U-Net: not checkable


def test_parallel_simulation_writes_the_same_archive_as_sequential(tmp_path):
    from qpe_core.archive import Archive
    from qpe_core.study import Segment, simulate_stage

    segs = [Segment(start="2024-06-01T00:00Z", periods=8, seed=3), Segment(start="2024-06-01T03:00Z", periods=8, seed=4)]
    prof = PROFILES["tiny"].model_copy(update={"train_segments": segs[:1], "eval_segments": segs[1:]})
    simulate_stage(prof, str(tmp_path / "seq.zarr"))
    res = simulate_stage(prof.model_copy(update={"parallel": 2}), str(tmp_path / "par.zarr"))
    assert all(isinstance(v, dict) and v["slots"] == 8 for v in res.values())
    a, b = Archive.open(str(tmp_path / "seq.zarr")), Archive.open(str(tmp_path / "par.zarr"))
    assert list(a.times("rain")) == list(b.times("rain")) and len(a.times("rain")) == 16
    for t in a.times("rain")[::5]:
        np.testing.assert_array_equal(a.read_rain(t), b.read_rain(t))
    assert simulate_stage(prof, str(tmp_path / "seq.zarr")) == {s.start: "complete" for s in segs}  # resumes


def test_a_specs_sampling_options_apply_to_a_trained_checkpoint(tiny_study, tmp_path):
    """Changing a spec's sampling-time option (the DDPM's s_noise) redraws that model alone, with the
    option applied, though its checkpoint was trained (and its card written) before."""
    import shutil

    src, _ = tiny_study
    out = tmp_path / "study"
    shutil.copytree(src, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "ensembles").glob("*.npz")}
    models = [m if m.kind != "ddpm" else m.model_copy(update={"objective": {"s_noise": 1.6}})
              for m in PROFILES["tiny"].models]
    metrics = run_study(PROFILES["tiny"].model_copy(update={"models": models}), out)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "ensembles").glob("*.npz")}
    assert after["ddpm.npz"] != before["ddpm.npz"]
    assert all(after[n] == before[n] for n in before if n != "ddpm.npz")
    assert metrics["models"]["ddpm"]["objective"]["s_noise"] == 1.6
    with np.load(src / "ensembles" / "ddpm.npz") as a, np.load(out / "ensembles" / "ddpm.npz") as b:
        assert not np.array_equal(a["rain"], b["rain"]) and "s_noise" in str(b["card"])
    run_study(PROFILES["tiny"].model_copy(update={"models": models}), out)  # resumes: nothing redrawn
    assert {p.name: p.stat().st_mtime_ns for p in (out / "ensembles").glob("*.npz")} == after
    bad = [m if m.kind != "flow" else m.model_copy(update={"objective": {"s_noise": 1.6}}) for m in models]
    with pytest.raises(QpeError, match="no sampling option 's_noise'"):
        run_study(PROFILES["tiny"].model_copy(update={"models": bad}), out)


def test_a_retrained_model_is_drawn_again(tiny_study):
    out, _ = tiny_study
    before = {p.name: p.stat().st_mtime_ns for p in (out / "ensembles").glob("*.npz")}
    card = out / "ck" / "flow" / "card.json"
    card.write_text(card.read_text() + "\n")  # as a new save of that checkpoint would change it
    run_study(PROFILES["tiny"], out)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "ensembles").glob("*.npz")}
    assert after["flow.npz"] != before["flow.npz"]
    assert all(after[n] == before[n] for n in before if n != "flow.npz")


def test_lag_profile_pairs_each_cascade_with_its_own_unet_and_reports_seed_groups(tmp_path):
    from qpe_core.report.groups import temporal_claim
    from qpe_core.study import _lag_models

    tiny = PROFILES["tiny"]
    models = _lag_models([[0], [0, -15]], (0, 1))
    profile = tiny.model_copy(update={"name": "tiny-lags", "models": models, "default": "cascade-flow-2slot-s0"})
    metrics = run_study(profile, tmp_path)
    for spec in models:
        card = json.loads((tmp_path / "ck" / spec.name / "card.json").read_text())
        assert card["lags"] == spec.lags and card["config"]["seed"] == spec.seed
        if spec.kind == "cascade-flow":  # frozen U-Net of the same lags and seed
            assert card["mean_checkpoint"]["path"] == str(tmp_path / "ck" / spec.mean)
    groups = metrics["groups"]["groups"]
    assert set(groups) == {"unet 1 slot", "unet 2 slots", "cascade-flow 1 slot", "cascade-flow 2 slots"}
    g = groups["unet 2 slots"]
    vals = g["CRPS"]["values"]
    assert len(vals) == 2 and g["CRPS"]["mean"] == pytest.approx(np.mean(vals))
    assert g["CRPS"]["diff"] == pytest.approx(max(vals) - min(vals))
    assert {c["group"] for c in metrics["groups"]["claims"]} == {"unet 2 slots", "cascade-flow 2 slots"}
    assert all(c["default_lags"] for c in metrics["groups"]["claims"])  # lags 0, -15: the default's
    md = (tmp_path / "report" / "report.md").read_text()
    assert "2 slots (the product's default lags) vs" in md
    # every cascade's mission checks, counted over its group's seeds (a U-Net has none)
    checks = groups["cascade-flow 2 slots"]["checks"]
    assert len(checks["fss_mean"]) == 2 and "checks" not in groups["unet 2 slots"]
    assert checks["cost"].count(None) == 1  # the cost check runs for the default (seed 0) only
    held = sum(h is True for h in checks["spectrum"])
    assert "| cascade-flow 2 slots | " in md and f"{held}/2" in md.split("Mission checks by seed")[1]
    bad = profile.model_copy(update={"models": [*models[:1], models[-1].model_copy(update={"mean": "nope"})],
                                     "default": models[-1].name})
    with pytest.raises(QpeError, match="frozen mean 'nope'"):
        run_study(bad, tmp_path / "bad")
    # the claim needs both a 3 % CRPS gain and gains beyond the seed-to-seed difference
    mk = lambda n, crps, d, csi, dc: {"kind": "unet", "lags": [0] * n, "CRPS": {"mean": crps, "diff": d},  # noqa: E731
                                      "CSI_1": {"mean": csi, "diff": dc}}
    held = temporal_claim({"a": mk(1, 1.0, 0.01, 0.5, 0.01), "b": mk(4, 0.95, 0.01, 0.53, 0.01)})
    assert held[0]["held"] and not temporal_claim({"a": mk(1, 1.0, 0.06, 0.5, 0.01),
                                                   "b": mk(4, 0.95, 0.01, 0.53, 0.01)})[0]["held"]
    assert not temporal_claim({"a": mk(1, 1.0, 0.01, 0.5, 0.01), "b": mk(4, 0.98, 0.0, 0.53, 0.0)})[0]["held"]


@pytest.mark.parametrize("enc", [pytest.param({"tendency": [2, 7]}, id="tendency", marks=pytest.mark.slow),
                                 pytest.param({"slot_encoder": [2, 7, 4]}, id="shared")])  # one path: fast suite runs one
def test_cascade_on_an_encoding_unet_encodes_its_slots_the_same_way(tmp_path, enc):
    """The cascade's flow network takes the backbone options of the U-Net it freezes (tendencies, or
    one encoder shared by every slot), through training, the card and the study's draws."""
    tiny = PROFILES["tiny"]
    models = [ModelSpec(name="unet-t", kind="unet", lags=[0, -15], backbone=enc),
              ModelSpec(name="cascade-flow-t", kind="cascade-flow", lags=[0, -15], backbone=enc, mean="unet-t")]
    profile = tiny.model_copy(update={"name": "tiny-tendency", "models": models, "default": "cascade-flow-t"})
    metrics = run_study(profile, tmp_path)
    card = json.loads((tmp_path / "ck" / "cascade-flow-t" / "card.json").read_text())
    assert card["mean_checkpoint"]["path"] == str(tmp_path / "ck" / "unet-t")
    assert all(card["backbone"][k] == v for k, v in enc.items())
    assert set(metrics["models"]) >= {"unet-t", "cascade-flow-t"}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_holds_out_a_later_period_with_unseen_seeds(name):
    prof = PROFILES[name]

    def span(s):
        t0 = pd.Timestamp(s.start)
        return t0, t0 + pd.Timedelta(minutes=15 * s.periods)

    spans = sorted(span(s) for s in [*prof.train_segments, *prof.eval_segments])
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), "segments overlap in one archive"
    assert max(span(s)[1] for s in prof.train_segments) < min(span(s)[0] for s in prof.eval_segments)
    assert not {s.seed for s in prof.train_segments} & {s.seed for s in prof.eval_segments}


def test_parallel_training_waits_for_the_frozen_unet_and_matches_sequential(tiny_study, tmp_path):
    """Trainings in separate processes: the cascade starts only once its U-Net is done, so its weights
    equal those of the sequential study to rounding (a cascade started on a half-trained U-Net would
    differ by far more), and on CPU each process gets its share of the cores."""
    from safetensors.numpy import load_file

    from qpe_core.study import train_stage

    out, _ = tiny_study
    prof = PROFILES["tiny"].model_copy(update={"parallel": 3, "models": [
        ModelSpec(name="cascade-flow", kind="cascade-flow"), ModelSpec(name="unet", kind="unet"),
        ModelSpec(name="flow", kind="flow")]})
    seconds = train_stage(prof, str(out / "archive.zarr"), tmp_path)
    assert set(seconds) == {"unet", "cascade-flow", "flow"}
    assert seconds["cascade-flow"] > seconds["unet"]
    for name in ("unet", "cascade-flow"):
        ref = load_file(out / "ck" / name / "weights.safetensors")
        got = load_file(tmp_path / "ck" / name / "weights.safetensors")
        assert ref.keys() == got.keys()
        for k in ref:
            # one CPU thread per process here (two in the sequential study): sums in another order
            np.testing.assert_allclose(ref[k], got[k], rtol=1e-3, atol=1e-5, err_msg=f"{name}: {k}")


def test_cost_reference_reuses_each_cases_seed(tiny_study, tmp_path):
    """The cost check's reference draw gives each case the seed of the default's own draw of it, so
    with the default's own step count it is the same ensemble: the check measures steps, not noise."""
    import shutil

    from qpe_core.models import objective_from_config
    from qpe_core.study import draw_stage

    out, _ = tiny_study
    card = json.loads((out / "ck" / "cascade-flow" / "card.json").read_text())
    steps = objective_from_config(card["objective"]).default_steps
    prof = PROFILES["tiny"].model_copy(update={"cost_steps": steps, "cost_cases": 2, "cases": 4,
                                               "models": [m for m in PROFILES["tiny"].models if m.name == "cascade-flow"]})
    shutil.copytree(out / "ck" / "cascade-flow", tmp_path / "ck" / "cascade-flow")
    draw_stage(prof, str(out / "archive.zarr"), tmp_path)
    with np.load(tmp_path / "ensembles" / "cascade-flow.npz") as z, \
            np.load(tmp_path / "ensembles" / f"cascade-flow@{steps}.npz") as r:
        assert len(z["times"]) > 2 and list(r["seeds"]) == [0, len(z["times"]) - 1]
        assert list(r["times"]) == [z["times"][0], z["times"][-1]]
        np.testing.assert_array_equal(r["rain"], z["rain"][[0, -1]])
        assert np.nanstd(r["rain"]) > 0


def test_cpu_temporal_2slot_seed0_pair_trains_exactly_as_the_cpu_studys(tmp_path):
    """The README copies the cpu study's U-Net and cascade into the cpu-temporal study as its 2-slot
    (default lags) seed-0 pair: valid only while every training setting but the output paths is the same."""
    from qpe_core.study import _train_config

    cpu, temporal = PROFILES["cpu"], PROFILES["cpu-temporal"]
    spec = {m.name: m for m in [*cpu.models, *temporal.models]}
    assert cpu.lags == DEFAULT_LAGS == [0, -15] and temporal.default == "cascade-flow-2slot-s0"
    for a, b in (("unet", "unet-2slot-s0"), ("cascade-flow", "cascade-flow-2slot-s0")):
        ca = _train_config(cpu, spec[a], "a.zarr", tmp_path / "cpu").model_dump(exclude={"out", "mean_checkpoint"})
        cb = _train_config(temporal, spec[b], "a.zarr", tmp_path / "t").model_dump(exclude={"out", "mean_checkpoint"})
        assert ca == cb, b
    assert (temporal.patch, temporal.members, temporal.cases, temporal.window) == (cpu.patch, cpu.members,
                                                                                   cpu.cases, cpu.window)
    # the profiles whose README tables were measured with the earlier 4-slot default keep it
    for name in ("cpu-early", "cpu-season", "cpu-ablation", "cpu-4slot"):
        assert PROFILES[name].lags == [0, -15, -30, -45], name
    old = PROFILES["cpu-4slot"]
    assert old.model_dump(exclude={"name", "lags", "models"}) == cpu.model_dump(exclude={"name", "lags", "models"})
    # the DDPM's noise inflation was chosen on each one's own validation cases (README)
    assert [m.objective for m in old.models] == [{}, {}, {}, {"s_noise": 1.25}]
    assert [m.objective for m in cpu.models] == [{}, {}, {}, {"s_noise": 1.50}]


def _assert_scored_after_and_unseeded(profile, others) -> None:
    """``profile``'s held-out segments start after every period ``others`` score on its grid, and their
    simulator seeds are used by none of ``others``' segments."""
    scored_end = max(pd.Timestamp(s.start) + pd.Timedelta(minutes=15 * s.periods)
                     for p in others if p.area == profile.area for s in p.eval_segments)
    assert min(pd.Timestamp(s.start) for s in profile.eval_segments) >= scored_end
    used = {s.seed for p in others for s in [*p.train_segments, *p.eval_segments, *p.other_segments]}
    assert not {s.seed for s in profile.eval_segments} & used


def test_cpu_confirm_holds_out_a_period_no_other_profile_scores():
    """cpu-confirm trains exactly as cpu and cpu-wide, and scores three segments after every period any
    other profile scored, with simulator seeds no other profile uses."""
    cpu, confirm = PROFILES["cpu"], PROFILES["cpu-confirm"]
    same = {"name", "models", "eval_segments", "cases"}
    assert confirm.model_dump(exclude=same) == cpu.model_dump(exclude=same)
    assert confirm.models == PROFILES["cpu-wide"].models and confirm.cases == 48 and len(confirm.eval_segments) == 3
    # the others: not it, its replication, nor the later fresh period
    others = [p for name, p in PROFILES.items() if not name.startswith("cpu-confirm") and name != "cpu-lags-fresh"]
    _assert_scored_after_and_unseeded(confirm, others)


def test_cpu_lags_fresh_scores_after_every_other_profile_with_unused_seeds():
    """The 2- against 4-slot mission comparison: the same models and training as cpu-temporal's 2- and
    4-slot pairs; its fresh period starts after every period any other profile scores (cpu-confirm's
    included) and its simulator seeds are used nowhere else."""
    mission, fresh, temporal = PROFILES["cpu-lags-mission"], PROFILES["cpu-lags-fresh"], PROFILES["cpu-temporal"]
    same = {"name", "models", "eval_segments", "cases"}
    assert mission.model_dump(exclude=same) == temporal.model_dump(exclude=same) == fresh.model_dump(exclude=same)
    assert [m for m in temporal.models if "1slot" not in m.name] == mission.models == fresh.models
    assert mission.eval_segments == PROFILES["cpu-wide"].eval_segments and fresh.cases == mission.cases == 48
    _assert_scored_after_and_unseeded(fresh, [p for name, p in PROFILES.items() if name != "cpu-lags-fresh"])


def test_cpu_confirm_recal_fits_on_the_first_confirmation_segment_and_scores_the_later_two():
    confirm, rep = PROFILES["cpu-confirm"], PROFILES["cpu-confirm-recal"]
    assert rep.eval_segments == confirm.eval_segments[1:] and rep.other_segments == confirm.eval_segments[:1]
    spec = {m.name: m for m in rep.models}["cascade-flow-recal-dry"].recalibrate
    first = confirm.eval_segments[0]
    assert spec.only == "dry" and pd.Timestamp(spec.start) == pd.Timestamp(first.start)
    assert pd.Timestamp(spec.end) < pd.Timestamp(rep.eval_segments[0].start)  # no scored slot in the fit


def test_cpu_wide_scores_the_cpu_studys_models_on_three_held_out_segments(tmp_path):
    """cpu-wide trains exactly as cpu (its checkpoints are copied in, README) and holds out the cpu
    profile's segment and two later ones, with seeds no training segment uses."""
    from qpe_core.study import _train_config

    cpu, wide = PROFILES["cpu"], PROFILES["cpu-wide"]
    same = {"name", "models", "eval_segments", "cases"}
    assert wide.model_dump(exclude=same) == cpu.model_dump(exclude=same)
    assert wide.eval_segments[0] == cpu.eval_segments[0] and len(wide.eval_segments) == 3 and wide.cases == 48
    train_end = max(pd.Timestamp(s.start) + pd.Timedelta(minutes=15 * s.periods) for s in wide.train_segments)
    assert all(pd.Timestamp(s.start) >= train_end for s in wide.eval_segments)
    assert not {s.seed for s in wide.eval_segments} & {s.seed for s in wide.train_segments}
    starts = [pd.Timestamp(s.start) for s in wide.eval_segments]
    assert all(b - a >= pd.Timedelta(minutes=15 * s.periods) for a, b, s in zip(starts, starts[1:], wide.eval_segments))
    cpu_spec = {m.name: m for m in cpu.models}
    for spec in wide.models:
        a = _train_config(cpu, cpu_spec[spec.name], "a.zarr", tmp_path).model_dump()
        assert _train_config(wide, spec, "a.zarr", tmp_path).model_dump() == a


def test_cpu_guidance_trains_as_the_cpu_study_but_for_the_condition_dropout(tmp_path):
    """cpu-guidance's U-Net and unguided cascade are the cpu study's (copied in, README); its guided
    cascade differs from the cpu cascade only by its objective options, and keeps 8 evaluations."""
    from qpe_core.models.objectives import make_objective
    from qpe_core.study import _train_config

    cpu, cfg = PROFILES["cpu"], PROFILES["cpu-guidance"]
    assert cfg.model_dump(exclude={"name", "models", "default"}) == cpu.model_dump(exclude={"name", "models", "default"})
    spec = {m.name: m for m in cfg.models}
    cpu_spec = {m.name: m for m in cpu.models}
    for name in ("unet", "cascade-flow"):
        assert spec[name] == cpu_spec[name]
    a = _train_config(cpu, cpu_spec["cascade-flow"], "a.zarr", tmp_path).model_dump(exclude={"out", "objective"})
    b = _train_config(cfg, spec["cascade-flow-cfg"], "a.zarr", tmp_path).model_dump(exclude={"out", "objective"})
    assert a == b and cfg.default == "cascade-flow-cfg"
    guided = make_objective("cascade-flow", **spec["cascade-flow-cfg"].objective)
    assert guided.cond_dropout > 0 and guided.guidance > 1 and guided.evals_per_member() == 8


def test_a_recalibrated_model_is_made_from_its_trained_cascade_not_trained(tiny_study, tmp_path):
    """A ``recalibrate`` spec: the trained cascade's checkpoint with its calibration refitted on the
    named period (same weights), drawn and scored beside it; a re-run keeps it."""
    import shutil

    from qpe_core.study_profiles import Recalibration

    out, _ = tiny_study
    for name in ("unet", "cascade-flow"):
        shutil.copytree(out / "ck" / name, tmp_path / "ck" / name)
    recal = ModelSpec(name="cf-recal", kind="cascade-flow",
                      recalibrate=Recalibration(of="cascade-flow", start="2024-06-01T02:00Z", end="2024-06-01T05:45Z",
                                                patches=8))
    prof = PROFILES["tiny"].model_copy(update={"models": [*PROFILES["tiny"].models[:2], recal], "oracle_draws": 0})
    metrics = run_study(prof, tmp_path, archive=str(out / "archive.zarr"))
    card = json.loads((tmp_path / "ck" / "cf-recal" / "card.json").read_text())
    assert card["recalibrated"]["from"] == str(tmp_path / "ck" / "cascade-flow")
    assert card["recalibrated"]["start"] >= "2024-06-01T02:00Z" and card["recalibrated"]["end"] <= "2024-06-01T05:45Z"
    assert ((tmp_path / "ck" / "cf-recal" / "weights.safetensors").read_bytes()
            == (tmp_path / "ck" / "cascade-flow" / "weights.safetensors").read_bytes())
    assert "cf-recal" in metrics["mission"] and "| cf-recal |" in (tmp_path / "report" / "report.md").read_text()
    saved = json.loads((tmp_path / "study.json").read_text())
    assert "cf-recal" in saved["train_seconds"] and "cascade-flow" not in saved["train_seconds"]  # nothing trained
    stamp = (tmp_path / "ck" / "cf-recal" / "card.json").stat().st_mtime_ns
    run_study(prof, tmp_path, archive=str(out / "archive.zarr"))
    assert (tmp_path / "ck" / "cf-recal" / "card.json").stat().st_mtime_ns == stamp
    bad = prof.model_copy(update={"models": [*prof.models[:2], recal.model_copy(update={
        "name": "u-recal", "recalibrate": Recalibration(of="unet", start="2024-06-01T02:00Z", end="2024-06-01T05:45Z")})]})
    with pytest.raises(QpeError, match="u-recal: recalibrates 'unet', not a trained cascade-flow"):
        run_study(bad, tmp_path, archive=str(out / "archive.zarr"))


def test_cpu_recal_recalibrates_on_the_first_held_out_segment_and_scores_on_the_later_two(tmp_path):
    from qpe_core.study import _train_config

    cpu, wide, recal = PROFILES["cpu"], PROFILES["cpu-wide"], PROFILES["cpu-recal"]
    assert recal.eval_segments == wide.eval_segments[1:] and recal.cases == 32
    spec = {m.name: m for m in recal.models}["cascade-flow-recal"].recalibrate
    dry = {m.name: m for m in recal.models}["cascade-flow-recal-dry"].recalibrate
    assert dry.model_dump(exclude={"only"}) == spec.model_dump(exclude={"only"}) and dry.only == "dry"
    first = wide.eval_segments[0]
    first_end = pd.Timestamp(first.start) + pd.Timedelta(minutes=15 * (first.periods - 1))
    assert spec.of == "cascade-flow" and pd.Timestamp(spec.start) == pd.Timestamp(first.start)
    assert pd.Timestamp(spec.end) == first_end < pd.Timestamp(recal.eval_segments[0].start)  # no scored slot
    assert recal.other_segments == [first]  # simulated by a fresh run, so the period is in its archive
    from qpe_core.archive import Archive
    from qpe_core.study import missing_segments

    arc = Archive.create(str(tmp_path / "a.zarr"), "france-3km", ["IR_108"])
    assert first in missing_segments(recal, arc)  # an archive without it would be completed
    cpu_spec = {m.name: m for m in cpu.models}
    for name in ("unet", "cascade-flow"):  # trained as the cpu study's (its checkpoints can be copied in)
        a = _train_config(cpu, cpu_spec[name], "a.zarr", tmp_path).model_dump()
        assert _train_config(recal, {m.name: m for m in recal.models}[name], "a.zarr", tmp_path).model_dump() == a


def test_study_help_lists_every_profile():
    from qpe_core.cli_study import PROFILE_HELP

    assert sorted(p.split(" (")[0].strip() for p in PROFILE_HELP.split(" | ")) == sorted(PROFILES)
