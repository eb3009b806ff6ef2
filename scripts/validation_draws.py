"""Choose sampling-time settings on the VALIDATION period of a study, never on its held-out cases.

    python scripts/validation_draws.py data/study/cpu cascade-flow --cases 16
    python scripts/validation_draws.py data/study/cpu ddpm --cases 16

Draws the checkpoint ``STUDY/ck/MODEL`` on ``--cases`` slots spread over its own validation time
blocks (the blocks its training held out, ``training.dataset.block_split``; no training patch comes from
them), central window and members as the study's profile, and scores the variants below with the
study's own scoring (wet fraction, q99, spectrum, FSS, spread/skill, CRPS, per-case maxima):

* ``cascade-flow``: the residual is drawn once and composed with every clip quantile (each with the
  calibration refitted after its clip, as training does); ``--clips Q/TAIL/DRY/wet``: the quantile,
  its tail-bin and floored-bin (dry mean) values, and ``wet`` for the floored bins' wet-probability
  calibration (``CascadeFlow.dry_clip_quantile``, ``calibrate_dry``);
* ``cascade-flow --rhos 1,2,3``: the midpoint time grid (``CascadeFlow.time_rho``): for each rho the
  calibration is refitted with that grid (as training does) and the 4-step draw is scored beside the
  64-step draw composed with the same knots (the study's cost check, on validation cases);
* ``cascade-flow-cfg --guidances 1:4:midpoint,2:2:midpoint``: classifier-free guidance weight,
  steps and sampler (a model trained with ``cond_dropout``): for each, the calibration is refitted
  with that sampler (as training does) and the draw is scored beside the ``--ref-steps`` draw of the
  same weight on ``--ref-cases`` cases (the cost check);
* ``ddpm``: each sampler setting is a separate draw.

``--held-out`` draws the study's own held-out cases instead, to report on them a setting already
chosen on validation (the file name says ``held-out``).

Prints one line per variant and writes ``STUDY/validation/MODEL.json``. Rain in mm/h.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _validation_times(cfg: dict):
    """(archive, validation times) of a training run's config, as ``train()`` splits them."""
    from qpe_core.archive import Archive
    from qpe_core.training.dataset import block_split, valid_times

    arc = Archive.open(cfg["archive"])
    times = valid_times(arc, cfg["lags"], cfg["min_radar_coverage"], cfg["start"], cfg["end"])
    _, val_t = block_split(times, cfg["val_fraction"], cfg["val_block"], len(cfg["lags"]),
                           slot_minutes=arc.slot_minutes, seed=cfg["seed"])
    return arc, val_t


def validation_cases(study: Path, model: str, n: int) -> pd.DatetimeIndex:
    from qpe_core.training.checkpoint import load_checkpoint

    _, val_t = _validation_times(load_checkpoint(study / "ck" / model).card["config"])
    return val_t[np.linspace(0, len(val_t) - 1, min(n, len(val_t))).astype(int)]


def _inputs(study, prof, times):
    from qpe_core.archive import Archive
    from qpe_core.evaluation import window_slices
    from qpe_core.grids import get_spec

    log = study / "study.json"  # a study run with --archive names it there
    arc = Archive.open(json.loads(log.read_text())["archive"] if log.is_file() else str(study / "archive.zarr"))
    spec = get_spec(arc.area)
    from qpe_core.study import _window
    ys, xs = window_slices(_window(prof), (spec.height, spec.width))
    truth = np.stack([arc.read_truth(t)[ys, xs] for t in times])
    return arc, ys, xs, truth


def _stack(model, arc, t, ys, xs):
    """BT stack ``(lag, channel, y, x)`` K of the window and the current slot's validity."""
    from qpe_core.evaluation import case_stack

    return case_stack(arc, t, model.card["lags"], model.card["channels"], ys, xs)


def score(truth, forecasts, times, prof):
    from qpe_core.evaluation import pixel_km_of, scale_px, score_ensembles
    from qpe_core.report import summarize
    from qpe_core.report.mission import member_scores
    from qpe_core.study import _window

    pk = pixel_km_of(prof.area)
    metrics = score_ensembles(truth, forecasts, pd.DatetimeIndex(times), pk, area=prof.area, window=_window(prof))
    out = {}
    for name, entry in metrics["models"].items():
        s = summarize(entry)
        ms = member_scores(truth, forecasts[name], scale_px(24.0, pk))
        ratios = np.array(ms["max_ratio"])
        out[name] = {k: s.get(k) for k in ("FSS_1_24km", "wet_fraction_ratio", "q99_ratio", "q99.9_ratio",
                                            "spectrum_ratio_10_50km", "spread_skill", "CRPS", "CRPS_fair", "rank_RI")}
        out[name].update(fss_member0=ms["fss_member0"], fss_member_mean=ms["fss_member_mean"], worst_max=float(np.nanmax(ratios)),
                         cases_over_2=int((ratios > 2).sum()), largest=float(np.nanmax(ms["case_max"])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("model")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--variants", default="", help="comma-separated DDPM variants to draw (default: all)")
    ap.add_argument("--clips", default="", help="cascade clip variants as Q, Q/TAIL or Q/TAIL/DRY (an empty "
                    "TAIL = Q), comma-separated (default: all of CLIPS), e.g. 0.98/0.9,0.98//0.999")
    ap.add_argument("--rhos", default="", help="cascade midpoint time grids to compare with 64 steps, e.g. 1,2,3")
    ap.add_argument("--guidances", default="", help="cascade guidance variants W:STEPS:SAMPLER, e.g. 1:4:midpoint,2:2:midpoint")
    ap.add_argument("--ref-steps", type=int, default=64)
    ap.add_argument("--ref-cases", type=int, default=6, help="cases of the --guidances cost reference")
    ap.add_argument("--held-out", action="store_true", help="draw the study's own held-out cases instead "
                    "(STUDY/ensembles/truth.npz): to REPORT a setting chosen on validation, never to choose one")
    args = ap.parse_args(argv)
    only = {v for v in args.variants.split(",") if v}
    from qpe_core.study import PROFILES
    from qpe_core.training.checkpoint import load_checkpoint

    from _study_files import save_validation

    prof = PROFILES[args.profile]
    if args.held_out:
        times = pd.DatetimeIndex(np.load(args.study / "ensembles" / "truth.npz")["times"])
    else:
        times = validation_cases(args.study, args.model, args.cases)
    arc, ys, xs, truth = _inputs(args.study, prof, times)
    torch.set_grad_enabled(False)
    model = load_checkpoint(args.study / "ck" / args.model, "cpu")
    if model.card["kind"] == "cascade-flow" and args.guidances:
        variants = guidance_variants(model, arc, times, truth, ys, xs, prof.members,
                                     [_guidance(g) for g in args.guidances.split(",") if g], args.ref_steps, args.ref_cases)
    elif model.card["kind"] == "cascade-flow" and args.rhos:
        variants = rho_variants(model, arc, times, ys, xs, prof.members,
                                [float(r) for r in args.rhos.split(",")], args.ref_steps)
    elif model.card["kind"] == "cascade-flow":
        clips = tuple(_clip(c) for c in args.clips.split(",") if c) or CLIPS
        variants = cascade_variants(model, arc, times, ys, xs, prof.members, clips)
    else:
        variants = ddpm_variants(model, arc, times, ys, xs, prof.members, only)
    res = score(truth, variants, times, prof)
    for name, cost in COST.items():
        res[name]["cost"] = cost
    for name, r in res.items():
        print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if MEANS:  # where each case's largest member value is: truth max, member max, mean and truth there
            f = variants[name]
            for i in range(len(times)):
                j = np.unravel_index(np.nanargmax(f[i]), f[i].shape)
                print(f"  case {i}: truth max {np.nanmax(truth[i]):.1f}, member max {f[i][j]:.1f}, "
                      f"mean there {MEANS[i][j[1:]]:.1f}, truth there {truth[i][j[1:]]:.1f}, "
                      f"mean max {np.nanmax(MEANS[i]):.1f}")
    name = "-".join([args.model, *(["held-out"] if args.held_out else []), *sorted(only), *([args.clips.replace("/", "t")] if args.clips else []),
                     *([f"rho{args.rhos}"] if args.rhos else []),
                     *([f"cfg{args.guidances.replace(':', '_')}"] if args.guidances else [])])  # a subset: own file
    save_validation(args.study, name, {"times": [str(t) for t in times], "variants": res})
    return 0


def _to_mm(model, y, valid):
    from qpe_core.training.inference import MAX_RAIN_MM_H

    rain = model.transform.inverse(y.float()).clamp(max=MAX_RAIN_MM_H).numpy().astype("float32")
    rain[:, ~valid] = np.nan
    return rain


def fit_patches(model, n: int):
    """The first ``n`` validation patches of the model's training (``train._val_set``, same seed)."""
    from qpe_core.training.recalibrate import card_patches

    arc, val_t = _validation_times(model.card["config"])
    return card_patches(model, arc, val_t, n, model.card["config"]["seed"])


# (clip_quantile, tail_clip_quantile): the same quantile everywhere, or a tighter one in the tail bins
# (the top 4 % of the mean, where each case's largest member value is drawn)
CLIPS = ((0.999, None), (0.995, None), (0.99, None), (0.98, None), (0.97, None), (0.95, None),
         (0.98, 0.95), (0.98, 0.9), (0.98, 0.8), (0.99, 0.9), (0.995, 0.9))


def _clip(text: str) -> tuple:
    """``Q[/TAIL[/DRY[/wet[/qN]]]]`` -> (clip_quantile, tail_clip_quantile, dry_clip_quantile,
    calibrate_dry, calibrate_quantiles); empty = None; ``wet``: the floored bins calibrated to the
    held-out wet probability; ``qN``: calibrated by quantile maps of N levels (0: by moments)."""
    parts = (text.split("/") + ["", "", "", ""])[:5]
    return (float(parts[0]), *(float(p) if p else None for p in parts[1:3]), parts[3] == "wet",
            int(parts[4][1:]) if parts[4].startswith("q") else 0)


def clip_variants(model, patches=(256,), clips=CLIPS) -> dict:
    """``{name: (clip_knots, spread_knots)}``: the clip refitted on the validation patches at other
    quantiles, and the calibration refitted after it as training does (``train._calibrate``, same
    seed); the scale knots, which the flow was trained with, are kept."""
    from qpe_core.training.recalibrate import refit_calibration

    obj, out = model.objective, {}
    keys = ("clip_knots", "clip_quantile", "tail_clip_quantile", "dry_clip_quantile", "calibrate_dry", "spread_knots",
            "calibrate_quantiles", "quantile_knots")
    saved = {k: getattr(obj, k) for k in keys}
    for n in patches:
        val = fit_patches(model, n)
        for q, qt, *rest in clips:
            qd, wet, nq = (list(rest) + [None, False, 0][len(rest):])[:3]
            obj.clip_quantile, obj.tail_clip_quantile, obj.dry_clip_quantile, obj.calibrate_dry = q, qt, qd, wet
            obj.calibrate_quantiles = nq
            refit_calibration(model, val, "cpu", model.card["config"]["seed"])
            name = (f"clip-q{q}" + (f"-tail{qt}" if qt else "") + (f"-dry{qd}" if qd else "") + ("-wet" if wet else "")
                    + (f"-quant{nq}" if nq else ""))
            out[name + f"-{n}p"] = (obj.clip_knots, obj.spread_knots, obj.quantile_knots)
            print("clip", n, q, qt, qd, wet, [round(k[1], 2) for k in obj.spread_knots[:4]], flush=True, file=sys.stderr)
    for k, v in saved.items():
        setattr(obj, k, v)
    return out


def cascade_variants(model, arc, times, ys, xs, members, clips=CLIPS):
    """Raw residual drawn once per case (seed k), then composed with every variant of the clip."""
    obj, nets = model.objective, model.nets
    trained = (obj.clip_knots, obj.spread_knots, obj.quantile_knots)
    knots = {"as-trained": trained, **clip_variants(model, clips=clips)}
    variants = {}
    for k, t in enumerate(times):
        bt, valid = _stack(model, arc, t, ys, xs)
        cond = model.normalizer.condition(torch.from_numpy(bt)[None])
        gen = torch.Generator().manual_seed(k)
        u, mean = obj._sample_u(nets, cond, members, None, None, gen, None)
        MEANS.append(_to_mm(model, mean[:1, 0], valid)[0])
        for name, (ck, sk, qk) in knots.items():
            obj.clip_knots, obj.spread_knots, obj.quantile_knots = ck, sk, qk
            y = _compose(obj, u, mean).reshape(members, *u.shape[-2:])
            variants.setdefault(name, []).append(_to_mm(model, y, valid))
        print(f"case {k} {t}", flush=True, file=sys.stderr)
    obj.clip_knots, obj.spread_knots, obj.quantile_knots = trained
    return {n: np.stack(v) for n, v in variants.items()}


def rho_variants(model, arc, times, ys, xs, members, rhos, ref_steps=64):
    """``rho{r}`` (4 midpoint steps on that grid, calibration refitted with it) and ``rho{r}@{ref}``
    (``ref_steps`` uniform steps, same noise, same knots): the cost check for each grid."""
    from qpe_core.training.train import _calibrate

    obj, nets = model.objective, model.nets
    saved = (obj.time_rho, obj.spread_knots)
    val = fit_patches(model, 256)
    knots = {}
    for r in rhos:
        obj.time_rho = r
        _calibrate(obj, nets, val, "cpu", model.card["config"]["seed"])
        knots[r] = obj.spread_knots
        print("rho", r, [round(k[2], 2) for k in obj.spread_knots[-6:]], flush=True, file=sys.stderr)
    variants = {}
    for k, t in enumerate(times):
        bt, valid = _stack(model, arc, t, ys, xs)
        cond = model.normalizer.condition(torch.from_numpy(bt)[None])
        obj.time_rho = 1.0
        u_ref, mean = obj._sample_u(nets, cond, members, ref_steps, None, torch.Generator().manual_seed(k), None)
        for r in rhos:
            obj.time_rho, obj.spread_knots = r, knots[r]
            u, _ = obj._sample_u(nets, cond, members, None, None, torch.Generator().manual_seed(k), None)
            for name, uu in ((f"rho{r:g}", u), (f"rho{r:g}@{ref_steps}", u_ref)):
                y = _compose(obj, uu, mean).reshape(members, *u.shape[-2:])
                variants.setdefault(name, []).append(_to_mm(model, y, valid))
        print(f"case {k} {t}", flush=True, file=sys.stderr)
    obj.time_rho, obj.spread_knots = saved
    return {n: np.stack(v) for n, v in variants.items()}


def _guidance(text: str) -> tuple[float, int, str]:
    w, steps, sampler = text.split(":")
    return float(w), int(steps), sampler


def guidance_variants(model, arc, times, truth, ys, xs, members, settings, ref_steps=64, ref_cases=6):
    """``cfg{w}-{sampler}{steps}`` for each ``(w, steps, sampler)``, the calibration refitted with it
    as training does; ``truth (case, y, x)`` mm/h of ``times``. The cost check of each is kept in ``COST[name]``: fair CRPS of the draw and of
    the ``ref_steps`` midpoint draw (same weight, knots and noise) on ``ref_cases`` spread cases."""
    from qpe_core.report.mission import crps_of
    from qpe_core.training.train import _calibrate

    obj, nets = model.objective, model.nets
    saved = (obj.guidance, obj.default_steps, obj.default_sampler, obj.spread_knots)
    val = fit_patches(model, 256)
    knots = {}
    for w, steps, sampler in settings:
        obj.guidance, obj.default_steps, obj.default_sampler = w, steps, sampler
        _calibrate(obj, nets, val, "cpu", model.card["config"]["seed"])
        knots[(w, steps, sampler)] = obj.spread_knots
        print("cfg", w, steps, sampler, [round(k[2], 2) for k in obj.spread_knots[-6:]], flush=True, file=sys.stderr)
    ref_idx = sorted(set(np.linspace(0, len(times) - 1, min(ref_cases, len(times))).astype(int).tolist()))
    variants, refs = {}, {}
    for k, t in enumerate(times):
        bt, valid = _stack(model, arc, t, ys, xs)
        cond = model.normalizer.condition(torch.from_numpy(bt)[None])
        for (w, steps, sampler), sk in knots.items():
            obj.guidance, obj.spread_knots, name = w, sk, f"cfg{w:g}-{sampler}{steps}"
            for n, smp, out in ((steps, sampler, variants), (ref_steps, "midpoint", refs)):
                if out is refs and k not in ref_idx:
                    continue
                u, mean = obj._sample_u(nets, cond, members, n, smp, torch.Generator().manual_seed(k), None)
                y = _compose(obj, u, mean).reshape(members, *u.shape[-2:])
                out.setdefault(name, []).append(_to_mm(model, y, valid))
        print(f"case {k} {t}", flush=True, file=sys.stderr)
    obj.guidance, obj.default_steps, obj.default_sampler, obj.spread_knots = saved
    variants = {n: np.stack(v) for n, v in variants.items()}
    for name, ref in refs.items():
        COST[name] = {"crps": crps_of(truth[ref_idx], variants[name][ref_idx]), "crps_ref": crps_of(truth[ref_idx], np.stack(ref)),
                      "ref_steps": ref_steps, "cases": len(ref_idx)}
    return variants


COST: dict = {}  # name -> the cost check of a guidance variant


MEANS: list = []  # the cascade's mean field (mm/h) of each case, for the diagnostics


def _compose(obj, u, mean):
    u = obj.clip_residual(obj.calibrate_residual(u, mean), mean)
    return mean + obj.scale(mean) * u


def ddpm_variants(model, arc, times, ys, xs, members, only=frozenset()):
    """One draw per entry of ``DDPM_VARIANTS`` (those named in ``only`` when it is not empty)."""
    from qpe_core.evaluation import case_ensemble

    out = {}
    for name, (steps, sampler, churn, s_noise) in DDPM_VARIANTS.items():
        if only and name not in only:
            continue
        model.objective.churn, model.objective.s_noise = churn, s_noise
        fields = [case_ensemble(model, *_stack(model, arc, t, ys, xs), members, steps, seed=k, sampler=sampler)
                  for k, t in enumerate(times)]
        out[name] = np.stack(fields)
        print(name, "drawn", flush=True, file=sys.stderr)
    return out


# (steps, sampler, churn, s_noise): EDM's noise inflation ``s_noise`` > 1 counters the detail an
# under-trained denoiser removes at each churn step (Karras et al. 2022, section 4)
DDPM_VARIANTS = {"heun-18": (18, "heun", 0.0, 1.0), "stochastic-18-churn40": (18, "stochastic", 40.0, 1.003),
                 "stochastic-18-churn40-snoise1.02": (18, "stochastic", 40.0, 1.02),
                 "stochastic-18-churn40-snoise1.05": (18, "stochastic", 40.0, 1.05),
                 "stochastic-18-churn40-snoise1.08": (18, "stochastic", 40.0, 1.08),
                 "stochastic-18-churn40-snoise1.12": (18, "stochastic", 40.0, 1.12),
                 "stochastic-18-churn40-snoise1.18": (18, "stochastic", 40.0, 1.18),
                 "stochastic-18-churn40-snoise1.25": (18, "stochastic", 40.0, 1.25),
                 "stochastic-18-churn40-snoise1.32": (18, "stochastic", 40.0, 1.32),
                 "stochastic-18-churn40-snoise1.40": (18, "stochastic", 40.0, 1.40),
                 "stochastic-18-churn40-snoise1.50": (18, "stochastic", 40.0, 1.50),
                 "stochastic-18-churn40-snoise1.60": (18, "stochastic", 40.0, 1.60),
                 "stochastic-18-churn80-snoise1.12": (18, "stochastic", 80.0, 1.12)}


if __name__ == "__main__":
    sys.exit(main())
