"""Refit a cascade checkpoint's post-training calibration on another period, without retraining.

A cascade flow (:mod:`qpe_core.models.cascade`) ends its training by fitting, on held-out patches,
the range its drawn residual is kept in (``clip_knots``) and the per-bin shift and gain that give
the drawn residual the held-out one's moments and wet probability (``spread_knots``). Those are
statistics of the frozen U-Net's errors on the **validation days** (two days of weather in the
``cpu`` study), and their offsets carry those days' bias: they changed sign between training seeds
(seed 0: -0.05 to -0.22 in residual units; seeds 1 and 2: +0.02 to +0.16) while on the later
held-out period the U-Net under-estimates the rain in every seed (+0.03 to +0.15, measured).

:func:`recalibrate` refits both on the slots of ``start .. end`` (UTC) of an archive with radar: a
recent period, in operations, or an earlier held-out segment. The weights, the residual scale (the
flow was trained on residuals normalised by it), the lags and channels are kept. The new checkpoint
is a new directory (weights copied, card written last, so a half-written one has no card); its card
says where its calibration comes from (``recalibrated``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from qpe_core.archive import Archive
from qpe_core.atomic import write_atomically
from qpe_core.errors import QpeError
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY
from qpe_core.timeutil import iso, to_utc
from qpe_core.training.checkpoint import Loaded, check_card, load_checkpoint
from qpe_core.training.dataset import PatchSampler, valid_times
from qpe_core.training.train import _calibrate, _val_set


def recalibrate(checkpoint: str | Path, archive: str, start: str, end: str, out: str | Path,
                patches: int = 256, seed: int = 0, device: str = "cpu", only: str = "all") -> dict:
    """Write ``out``: the cascade ``checkpoint`` with its clip and spread calibration refitted on
    ``patches`` random patches (the checkpoint's patch size) of the valid slots of ``archive`` in
    ``start .. end`` (UTC). ``only="dry"`` refits nothing but the floored (certain-dry) bins' wet
    shift (:func:`refit_dry_shift`): how often it rains where the U-Net says dry. Returns the new
    card's ``recalibrated`` entry."""
    if only not in ("all", "dry"):
        raise QpeError(f"recalibrate: only must be 'all' or 'dry', got {only!r}")
    src, out = Path(checkpoint), Path(out)
    if out.resolve() == src.resolve():
        raise QpeError(f"recalibrate: the output {out} is the checkpoint itself; give a new directory")
    if (out / "card.json").exists():
        raise QpeError(f"recalibrate: {out} already holds a checkpoint; remove it or give a new directory")
    t0, t1 = to_utc(start), to_utc(end)
    if t0 > t1:
        raise QpeError(f"recalibrate: start {start} is after end {end}")
    model = load_checkpoint(src, device)
    card, obj = model.card, model.objective
    if not hasattr(obj, "fit_clip") or not obj.scale_knots:
        raise QpeError(f"{src}: a {card['kind']} checkpoint has no held-out calibration to refit "
                       "(only a cascade-flow with a fitted residual scale has)")
    arc = Archive.open(archive)
    check_card(card, arc.area, arc.channels)
    cfg = card["config"]
    times = valid_times(arc, card["lags"], cfg.get("min_radar_coverage", 0.5), t0, t1)
    if not len(times):
        raise QpeError(f"recalibrate: no slot of {archive} in {start} .. {end} has every lag and radar coverage "
                       f">= {cfg.get('min_radar_coverage', 0.5)}")
    fit = card_patches(model, arc, times, patches, seed)
    before = {"clip_knots": obj.clip_knots, "spread_knots": obj.spread_knots}
    summary = refit_calibration(model, fit, device, seed) if only == "all" else refit_dry_shift(model, fit, device, seed)
    entry = {"from": str(src), "archive": str(archive), "start": iso(times.min()), "end": iso(times.max()),
             "slots": len(times), "patches": patches, "seed": seed, "only": only, "summary": summary,
             "previous": before, "previous_calibration": card.get("recalibrated")}
    new = {**card, "objective": obj.config(), "recalibrated": entry}
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "weights.safetensors", lambda p: shutil.copyfile(src / "weights.safetensors", p))
    write_atomically(out / "card.json", lambda p: p.write_text(json.dumps(new, indent=2, default=str)))
    return entry


def card_patches(model: Loaded, arc: Archive, times, n: int, seed: int):
    """``n`` random ``(cond, target, mask)`` patches of ``times`` encoded as the checkpoint's card says
    (lags, channels, normalisation, rain transform, patch size, radar quality floor), drawn as
    training draws its held-out patches (``train._val_set``)."""
    card, cfg = model.card, model.card["config"]
    sampler = PatchSampler(arc, card["lags"], card["channels"], model.normalizer, model.transform, cfg["patch"],
                           min_quality=cfg.get("min_rain_quality", MIN_RAIN_QUALITY))
    return _val_set(sampler, times, n, seed)


@torch.no_grad()
def refit_calibration(model: Loaded, fit, device: str = "cpu", seed: int = 0) -> dict | None:
    """Refit a cascade's clip (when it clips) and then its calibration on the patches ``fit``, as
    training ends (``train._calibrate``); returns the calibration's summary."""
    obj = model.objective
    if obj.clip:
        obj.fit_clip({"mean": model.nets["mean"]}, *(v.to(device) for v in fit))
    return _calibrate(obj, model.nets, fit, device, seed)


@torch.no_grad()
def refit_dry_shift(model: Loaded, fit, device: str = "cpu", seed: int = 0) -> dict | None:
    """Refit only the wet shift of the floored bins (where the scale is the floor: the U-Net says
    certainly dry) on the patches ``fit``; the clip and every other bin's shift and gain are kept.
    Returns the calibration's summary with the bins refitted (``dry_bins``)."""
    obj = model.objective
    if not obj.spread_knots or not obj.calibrate_dry:
        raise QpeError("recalibrate --only dry: the checkpoint has no dry-bin calibration to refit "
                       "(spread knots with calibrate_dry)")
    old, old_maps = [list(k) for k in obj.spread_knots], obj.quantile_knots
    _calibrate(obj, model.nets, fit, device, seed)
    new, new_maps = obj.spread_knots or old, obj.quantile_knots
    floored = [i for i, (_, scale) in enumerate(obj.scale_knots) if scale <= obj.scale_floor]
    obj.spread_knots = knots = [new[i] if i in floored else old[i] for i in range(len(old))]
    if old_maps and new_maps:  # quantile calibration: the floored bins' maps (their shift) refitted too
        obj.quantile_knots = [new_maps[i] if i in floored else old_maps[i] for i in range(len(old_maps))]
    # the summary of the knots kept, as calibrate() reports its own (not of the refit's discarded bins)
    return {"bins": len(knots), "gain": [round(k[2], 3) for k in knots], "shift": [round(k[1], 3) for k in knots],
            "dry_bins": floored}
