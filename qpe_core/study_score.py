"""``qpe study``'s score stage: the drawn ensembles scored together, the mission checks, the report.

:func:`score_stage` scores every model's ensemble on the held-out cases with the verification suite
(:func:`qpe_core.evaluation.score_ensembles`), adds each ensemble's mission checks against its U-Net
(:mod:`qpe_core.report.mission`) with the oracle ensemble beside the default's (:func:`oracle_stage`)
and writes ``OUT/report`` (``metrics.json``, ``report.md``, figures). Rain in mm/h.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from qpe_core.atomic import write_json_atomically
from qpe_core.errors import QpeError
from qpe_core.study_profiles import StudyProfile, _window, sampling_options


def _model_info(ckpt: Path, seconds: float) -> dict:
    from qpe_core.training.checkpoint import load_checkpoint

    m = load_checkpoint(ckpt)
    return {"kind": m.card["kind"], "source": str(ckpt), "parameters": m.card.get("parameters"),
            "train_steps": m.card.get("steps"), "lags": m.card["lags"], "objective": m.card["objective"],
            "evals_per_member": m.objective.evals_per_member(), "shared_evals": m.objective.shared_evals(),
            "validation": m.card.get("validation"), "seconds_per_case": seconds,
            "val_curve": _val_curve(ckpt), "lr_schedule": m.card["config"].get("lr_schedule", "constant")}


def _val_curve(ckpt: Path) -> list[list[float]]:
    """``[[step, validation loss], ...]`` from a checkpoint's training log."""
    log = ckpt / "train_log.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return [[r["step"], r["val_loss"]] for r in recs if r.get("val_loss") is not None]


def score_stage(profile: StudyProfile, out: Path) -> dict:
    """Score the drawn ensembles together, add the mission checks and write ``OUT/report``."""
    from qpe_core.evaluation import pixel_km_of, scale_px, score_ensembles
    from qpe_core.report import summarize, write_report
    from qpe_core.report.groups import groups_markdown, seed_groups
    from qpe_core.report.uncertainty import bootstrap, case_sums
    from qpe_core.report.mission import comparison_markdown, crps_of, curves_markdown, member_scores, mission_checks, mission_markdown

    ens = out / "ensembles"
    with np.load(ens / "truth.npz") as z:
        times, truth = list(z["times"]), z["truth"].astype("float32")
    forecasts, info = {}, {}
    for s in profile.models:
        with np.load(ens / f"{s.name}.npz") as z:
            forecasts[s.name] = z["rain"].astype("float32")
            info[s.name] = _model_info(out / "ck" / s.name, float(z["seconds_per_case"]))
            info[s.name]["objective"].update(sampling_options(s))  # what the draw applied
    pixel_km = pixel_km_of(profile.area)
    metrics = score_ensembles(truth, forecasts, pd.DatetimeIndex(times), pixel_km, info=info, area=profile.area,
                              window=_window(profile), seed=profile.seed)
    scale_24 = scale_px(24.0, pixel_km)
    unets = [n for n, s in info.items() if s["kind"] == "unet"]
    ref_of = {s.name: s.mean if s.mean in unets else (unets[0] if unets else None) for s in profile.models}
    mission = {}
    for name, entry in metrics["models"].items():
        entry["seconds_per_case"] = info[name]["seconds_per_case"]
        entry["summary"] = summary = summarize(entry)
        if entry["members"] < 2:
            continue
        extra = member_scores(truth, forecasts[name], scale_24)
        cost = None
        if name == profile.default:
            with np.load(ens / f"{name}@{profile.cost_steps}.npz") as z:
                sub = [times.index(t) for t in z["times"]]
                ref = z["rain"].astype("float32")
            cost = {"evals_per_member": summary["evals_per_member"], "crps": crps_of(truth[sub], forecasts[name][sub]),
                    "crps_ref": crps_of(truth[sub], ref), "ref_steps": profile.cost_steps, "cases": len(sub)}
        unet = ref_of[name]  # the U-Net of the same lags and seed where the model names one
        u_arr = forecasts[unet].reshape(truth.shape) if unet else None
        oracle = oracle_stage(profile, out, times, truth, u_arr) if name == profile.default else None
        checks = mission_checks(summary, metrics["models"][unet]["summary"] if unet else None, extra, cost, oracle)
        mission[name] = {"member_scores": extra, "cost": cost, "checks": checks,
                         "held": sum(c["held"] is True for c in checks), "total": len(checks)}
        if name == profile.default and unet:
            unc = bootstrap(case_sums(truth, forecasts[name], u_arr, scale_24, pixel_km), times, seed=profile.seed)
            mission[name]["uncertainty"] = {**unc, "oracle": (oracle or {}).get("checks")}
    group_of = {s.name: s.group for s in profile.models if s.group}
    groups = seed_groups(metrics, group_of, mission) if group_of else None
    metrics.update(mission=mission, default=profile.default, profile=profile.model_dump(), groups=groups)
    report = write_report(metrics, out / "report")
    md = report / "report.md"
    md.write_text(md.read_text() + "\n" + comparison_markdown(metrics) + "\n" + mission_markdown(metrics)
                  + "\n" + curves_markdown(metrics) + ("\n" + groups_markdown(groups) if groups else ""))
    return metrics


def oracle_stage(profile: StudyProfile, out: Path, times: list, truth: np.ndarray,
                 unet: np.ndarray | None = None) -> dict | None:
    """The maximum check of an oracle ensemble on the held-out cases (:func:`qpe_core.simulator.oracle.oracle_maxima`),
    kept in ``ensembles/oracle.json`` for these cases, draws and members; None (with the reason in
    that file) when the archive's truth is not the simulator's rain (e.g. a radar-driven archive).
    With the U-Net's fields ``unet (case, y, x)`` (mm/h), every check's figures of each draw too
    (``checks``, :func:`oracle_checks`)."""
    from qpe_core.simulator.oracle import oracle_maxima

    if profile.oracle_draws < 1:
        return None
    path = out / "ensembles" / "oracle.json"
    key = {"cases": [str(t) for t in times], "draws": profile.oracle_draws, "members": profile.members,
           "segments": [s.model_dump() for s in profile.eval_segments]}
    if path.is_file():
        kept = json.loads(path.read_text())
        # kept from before the oracle's member FSS or its checks (2026-12-05): drawn again, same seed, same maxima
        fresh = kept.get("oracle") is None or ("fss_member0" in kept["oracle"]
                                               and (unet is None or "checks" in kept["oracle"]))
        if kept.get("key") == key and fresh:
            return kept.get("oracle")
    per_case: dict[int, list[dict]] = {}  # case -> each draw's per-case sums
    on_case = None
    if unet is not None:
        from qpe_core.evaluation import pixel_km_of, scale_px
        from qpe_core.report.uncertainty import case_sums

        px = pixel_km_of(profile.area)
        scale_24 = scale_px(24.0, px)

        def on_case(j, ens):  # every draw's per-case sums of the checks' figures
            per_case[j] = [case_sums(truth[j:j + 1], e[None], unet[j:j + 1], scale_24, px) for e in ens]
    try:
        oracle = oracle_maxima(profile.area, profile.eval_segments, pd.DatetimeIndex(times), truth, profile.members,
                               profile.oracle_draws, _window(profile), seed=profile.seed, on_case=on_case)
        if unet is not None and len(per_case) == len(times):
            oracle["checks"] = oracle_checks(per_case, times, profile.oracle_draws)
        kept = {"key": key, "oracle": oracle}
    except QpeError as exc:
        oracle, kept = None, {"key": key, "oracle": None, "reason": str(exc)}
    write_json_atomically(path, kept)
    return oracle


def oracle_checks(per_case: dict[int, list], times: list, draws: int) -> dict:
    """Every check's figures of each oracle draw from its per-case sums (``per_case[case][draw]``):
    the median over draws of each figure, in how many draws each check holds, and each day's medians."""
    from qpe_core.report.uncertainty import figures, holds

    days = pd.DatetimeIndex(times).strftime("%Y-%m-%d")
    all_f, day_f, held = [], {d: [] for d in sorted(set(days))}, []
    for d in range(draws):
        sums = {k: np.concatenate([per_case[j][d][k] for j in range(len(times))]) for k in per_case[0][d]}
        f = figures(sums, np.ones(len(times)))
        all_f.append(f)
        held.append(holds(f))
        for day in day_f:
            day_f[day].append(figures(sums, (days == day).astype("float64")))
    med = lambda fs: {k: float(np.nanmedian([f[k] for f in fs])) for k in fs[0]}  # noqa: E731
    return {"draws": draws, "median": med(all_f), "held": {c: int(sum(h[c] for h in held)) for c in held[0]},
            "by_day": {day: med(fs) for day, fs in day_f.items()}}
