"""The study's profiles: which data, models and budget each ``qpe study --profile NAME`` runs.

A profile (:class:`StudyProfile`) names its simulated training and held-out segments, the models
(:class:`ModelSpec`: kind, lags, objective options, seed; each ``cascade-flow`` freezes one of the
study's U-Nets), and the one budget every model gets (backbone, steps, batch, patch, learning rate
and schedule, EMA, seed). ``PROFILES`` holds them; :func:`customise` narrows one to some models or
overrides its steps, device or schedule. Times UTC.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qpe_core.config import DEFAULT_LAGS
from qpe_core.errors import QpeError
from qpe_core.timeutil import iso

DEFAULT_KIND = "cascade-flow"
# the product's lags until 2026-12-05: the profiles whose README tables were measured with them keep them
LAGS_4 = [0, -15, -30, -45]


class Segment(BaseModel):
    """One independent simulation: ``periods`` slots from ``start`` (UTC) with ``seed``."""

    model_config = ConfigDict(extra="forbid")
    start: str
    periods: int = Field(ge=8)
    seed: int


class Recalibration(BaseModel):
    """A model that is another model of the study with its calibration refitted on a period
    (:func:`qpe_core.training.recalibrate.recalibrate`) instead of trained."""

    model_config = ConfigDict(extra="forbid")
    of: str                      # the study's cascade-flow whose checkpoint is recalibrated
    start: str                   # the period's first and last valid times (UTC)
    end: str
    patches: int = Field(256, ge=1)
    only: Literal["all", "dry"] = "all"  # "dry": only the certain-dry bins' wet shift is refitted


class ModelSpec(BaseModel):
    """One model of the study: a name, its kind and what differs from the profile (lags, options)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str
    lags: list[int] | None = None
    objective: dict = Field(default_factory=dict)
    seed: int | None = None
    backbone: dict = Field(default_factory=dict)  # UNet options on top of the profile's (e.g. tendency)
    mean: str = "unet"          # cascade-flow: the study's U-Net it freezes (same lags and seed)
    group: str | None = None    # models of one group differ only by seed: reported as mean and spread
    recalibrate: Recalibration | None = None  # not trained: another model's checkpoint recalibrated


def _segments(first: str, n: int, days: float, seed0: int, slot_minutes: int = 15,
              every: float | None = None) -> list[Segment]:
    """``n`` segments of ``days`` days from ``first``, one every ``every`` days (default back to back),
    each one hour short of ``days``."""
    periods = int(days * 24 * 60 / slot_minutes) - 60 // slot_minutes
    t0, every = pd.Timestamp(first), every or days
    return [Segment(start=iso(t0 + pd.Timedelta(days=every * i)), periods=periods, seed=seed0 + i) for i in range(n)]


def _lag_models(lag_sets: list[list[int]], seeds, cascade_lag_sets: list[list[int]] | None = None) -> list[ModelSpec]:
    """U-Net for every lag set and seed, cascade flow for ``cascade_lag_sets`` (default all) and every
    seed; each cascade freezes the U-Net of its own lags and seed."""
    out = []
    for kind in ("unet", "cascade-flow"):
        for lags in (lag_sets if kind == "unet" or cascade_lag_sets is None else cascade_lag_sets):
            for seed in seeds:
                tag = f"{len(lags)}slot-s{seed}"
                out.append(ModelSpec(name=f"{kind}-{tag}", kind=kind, lags=lags, seed=seed, mean=f"unet-{tag}",
                                     group=f"{kind} {len(lags)} slot{'s' if len(lags) > 1 else ''}"))
    return out


# the mission's comparison: the U-Net and DDPM baselines, plain flow matching and the default; the
# residual flow (the previous default, trained jointly) lost and is in cpu-ablation
KINDS = [ModelSpec(name=k, kind=k) for k in ("unet", "cascade-flow", "flow", "ddpm")]


def _cpu_models(s_noise: float) -> list[ModelSpec]:
    """The four kinds, the DDPM sampled with the noise inflation ``s_noise`` chosen on validation."""
    return [*KINDS[:3], ModelSpec(name="ddpm", kind="ddpm", objective={"s_noise": s_noise})]


class StudyProfile(BaseModel):
    """Everything a study depends on (written to ``study.json``)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    area: str = "france-3km"
    train_segments: list[Segment]
    eval_segments: list[Segment]
    # simulated too, but neither trained on nor scored: e.g. the period a model is recalibrated on
    other_segments: list[Segment] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=lambda: list(KINDS))
    default: str = DEFAULT_KIND           # the model the mission checks are for
    steps: int = Field(3000, ge=1)         # optimiser steps of every model (the equal budget)
    batch_size: int = 8
    patch: int = 64
    lr: float = 5e-4
    # TrainConfig.lr_schedule, one for every model: cosine, chosen on the cpu profile's validation period
    # (docs/studies/README.md, "The learning-rate schedule"); cpu-lags and cpu-ablation keep the constant rate their
    # README tables were measured with
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    ema_decay: float = 0.999
    backbone: dict = Field(default_factory=lambda: {"base_channels": 16})
    lags: list[int] = Field(default_factory=lambda: list(DEFAULT_LAGS))
    seed: int = 0
    val_every: int = 500
    members: int = 8
    cases: int = 16
    window: int | None = 192               # central window scored (pixels); None = full grid
    cost_steps: int = 64                   # reference sampler steps of the cost check
    cost_cases: int = 6
    oracle_draws: int = 16                 # oracle ensembles beside the maximum check (0: none; simulated archives)
    device: str = "cpu"
    parallel: int = 1                      # trainings at once (separate processes when > 1)
    sim_workers: int = 0                   # simulation processes (0: 4 per training process when parallel > 1, else 1)


PROFILES: dict[str, StudyProfile] = {
    # 2 cores, <= 75 minutes: 8 training segments of 2 days spread over June 1-23 (one every 3 days,
    # seeds 11-18; the simulator's convection grows with the season, so training only on early June
    # left a held-out period wetter than all of its training, see cpu-early), held out June 26-27
    "cpu": StudyProfile(name="cpu", train_segments=_segments("2024-06-01T00:00Z", 8, 2, 11, every=3),
                        eval_segments=_segments("2024-06-26T00:00Z", 1, 2, 91), steps=6000, sim_workers=2,
                        # the DDPM's noise inflation chosen on this profile's validation cases (README
                        # "The DDPM's noise inflation"); sampling only, its training is the same
                        models=_cpu_models(s_noise=1.50)),
    # the cpu profile until 2026-12-04 (the README's earlier tables, cpu-lags and cpu-ablation use its
    # archive): June 1-8 for training (4 segments, seeds 11-14), June 10-11 held out
    "cpu-early": StudyProfile(name="cpu-early", train_segments=_segments("2024-06-01T00:00Z", 4, 2, 11),
                              eval_segments=_segments("2024-06-10T00:00Z", 1, 2, 91), lags=LAGS_4),
    # the cpu profile's budget with the gpu profile's data: 12 training segments over June 1-25 (the
    # simulator's convection grows with the season, so cpu-early's June 10-11 held-out period is
    # wetter than all of its June 1-8 training data), held out June 26-27 with the cpu profile's seed
    "cpu-season": StudyProfile(name="cpu-season", train_segments=_segments("2024-06-01T00:00Z", 12, 2, 11),
                               eval_segments=_segments("2024-06-26T00:00Z", 1, 2, 91), lags=LAGS_4),
    "gpu": StudyProfile(name="gpu", train_segments=_segments("2024-06-01T00:00Z", 12, 2, 101),
                        eval_segments=_segments("2024-06-26T00:00Z", 2, 2, 191), steps=1500, batch_size=16,
                        patch=128, backbone={}, ema_decay=0.999, cases=24, window=None, members=8,
                        device="cuda", parallel=4, cost_cases=8, oracle_draws=0),  # the 10-minute budget
    # issue 11's temporal claim at the gpu budget, on the gpu profile's archive (--archive of a gpu
    # study, or simulated again): 1 and 2 slots (the default lags) for the U-Net and for the default,
    # two seeds each
    "gpu-lags": StudyProfile(name="gpu-lags", train_segments=_segments("2024-06-01T00:00Z", 12, 2, 101),
                             eval_segments=_segments("2024-06-26T00:00Z", 2, 2, 191), steps=1500, batch_size=16,
                             patch=128, backbone={}, cases=24, window=None, members=8, device="cuda", parallel=4,
                             models=_lag_models([[0], [0, -15]], (0, 1)),
                             default="cascade-flow-2slot-s0", cost_cases=2, oracle_draws=0),
    # what the default was chosen against (docs/studies/history.md, "What was tried for the default"): one global residual scale, the
    # per-mean scale with a 0.05 floor, no residual clip, the 99.9 % clip (the previous default's quantile;
    # it was fitted on 32 patches); the DDPM before EDM (v-prediction, min-SNR-5); same data, U-Net, budget as cpu-early
    "cpu-ablation": StudyProfile(name="cpu-ablation", train_segments=_segments("2024-06-01T00:00Z", 4, 2, 11),
                                 eval_segments=_segments("2024-06-10T00:00Z", 1, 2, 91), models=[
                                     ModelSpec(name="unet", kind="unet"),
                                     ModelSpec(name="cascade-flow", kind="cascade-flow"),
                                     ModelSpec(name="cascade-flow-global-scale", kind="cascade-flow",
                                               objective={"scale_bins": 1}),
                                     ModelSpec(name="cascade-flow-floor-0.05", kind="cascade-flow",
                                               objective={"scale_floor": 0.05, "clip": False}),
                                     ModelSpec(name="cascade-flow-no-clip", kind="cascade-flow",
                                               objective={"clip": False}),
                                     ModelSpec(name="cascade-flow-clip-99.9", kind="cascade-flow",
                                               objective={"clip_quantile": 0.999}),
                                     ModelSpec(name="ddpm-vp", kind="ddpm", objective={"param": "vp"}),
                                     ModelSpec(name="residual-flow", kind="residual-flow")], lr_schedule="constant",
                                 lags=LAGS_4),
    # issue 11's temporal claim: 1, 2 and 4 slots for the U-Net and for the default, two seeds each, and
    # both with the 4 slots given as the newest slot + three 15-minute BT changes (tendencies) or through
    # one encoder shared by every slot (features merged after it); one
    # budget, half the cpu profile's steps (2-3 hours on 2 cores)
    "cpu-lags": StudyProfile(name="cpu-lags", train_segments=_segments("2024-06-01T00:00Z", 4, 2, 11),
                             eval_segments=_segments("2024-06-10T00:00Z", 1, 2, 91), steps=1500,
                             models=_lag_models([[0], [0, -15], [0, -15, -30, -45]], (0, 1)) + [
                                 ModelSpec(name=f"{kind}-4slot-{enc}-s{k}", kind=kind, seed=k,
                                           lags=[0, -15, -30, -45], backbone=backbone,
                                           mean=f"unet-4slot-{enc}-s{k}", group=f"{kind} 4 slots, {label}")
                                 for enc, backbone, label in (
                                     ("tendency", {"tendency": [4, 7]}, "as tendencies"),
                                     ("shared", {"slot_encoder": [4, 7, 8]}, "one shared slot encoder"))
                                 for kind in ("unet", "cascade-flow") for k in (0, 1)],
                             default="cascade-flow-4slot-s0", cost_cases=2, lr_schedule="constant", lags=LAGS_4),
    # issue 11's temporal claim at the cpu profile's data and budget (6,000 steps, cosine): 1, 2 and 4
    # slots for the U-Net and for the default, three seeds; the 2-slot seed-0 pair (the default lags)
    # has the cpu study's exact configuration (its checkpoints can be copied in: README "Several slots
    # against one"); measured when the default was 4 slots, whose seed-0 pair was the cpu study's then
    "cpu-temporal": StudyProfile(name="cpu-temporal", train_segments=_segments("2024-06-01T00:00Z", 8, 2, 11, every=3),
                                 eval_segments=_segments("2024-06-26T00:00Z", 1, 2, 91), steps=6000,
                                 models=_lag_models([[0], [0, -15], [0, -15, -30, -45]], (0, 1, 2)),
                                 default="cascade-flow-2slot-s0", cost_cases=2),
    "tiny": StudyProfile(name="tiny", train_segments=[Segment(start="2024-06-01T00:00Z", periods=24, seed=1)],
                         eval_segments=[Segment(start="2024-06-01T07:00Z", periods=12, seed=2)], steps=4,
                         patch=32, backbone={"base_channels": 8, "channel_mults": (1, 2)}, members=3, cases=2,
                         window=64, cost_steps=3, cost_cases=1, val_every=2, oracle_draws=2),
}
# the cpu profile as it was measured with the 4-slot default (2026-12-04; docs/studies/cpu-4slot):
# its held-out cases start 45 minutes into the segment, the 2-slot profile's 15
PROFILES["cpu-4slot"] = PROFILES["cpu"].model_copy(update={"name": "cpu-4slot", "lags": LAGS_4,
                                                           "models": _cpu_models(s_noise=1.25)})
# the cpu study's U-Net and default on three times its held-out cases: June 26-27 (the cpu profile's
# segment, seed 91) and two more two-day segments after it (seeds 92, 93), 48 cases; same training
# (the cpu study's checkpoints can be copied in), to see which verdicts of 16 cases hold on more
PROFILES["cpu-wide"] = PROFILES["cpu"].model_copy(update={
    "name": "cpu-wide", "eval_segments": _segments("2024-06-26T00:00Z", 3, 2, 91), "cases": 48,
    "models": [ModelSpec(name="unet", kind="unet"), ModelSpec(name="cascade-flow", kind="cascade-flow")]})
# the default recalibrated (`qpe recalibrate`) on the first of cpu-wide's held-out segments (June
# 26-27) and scored beside the as-trained one on the two later ones (June 28 - July 1, 32 cases): the
# validation days' calibration offsets carry those days' bias, the late-June period is wetter than
# the training one (the simulator's convection grows with the season); does a calibration fitted on
# recent radar carry over? Same training as cpu (its checkpoints can be copied in)
PROFILES["cpu-recal"] = PROFILES["cpu"].model_copy(update={
    "name": "cpu-recal", "eval_segments": _segments("2024-06-28T00:00Z", 2, 2, 92), "cases": 32,
    "other_segments": _segments("2024-06-26T00:00Z", 1, 2, 91),
    "models": [ModelSpec(name="unet", kind="unet"), ModelSpec(name="cascade-flow", kind="cascade-flow"),
               ModelSpec(name="cascade-flow-recal", kind="cascade-flow", recalibrate=Recalibration(
                   of="cascade-flow", start="2024-06-26T00:00Z", end="2024-06-27T22:45Z")),
               # only how often it rains where the U-Net says dry, refitted on the recent radar: on every
               # held-out period that is where most of the default's wet-fraction deficit is
               ModelSpec(name="cascade-flow-recal-dry", kind="cascade-flow", recalibrate=Recalibration(
                   of="cascade-flow", start="2024-06-26T00:00Z", end="2024-06-27T22:45Z", only="dry"))]})
# a confirmation period: every choice so far was made while June 26 - July 1 was scored again and
# again; July 2-7 (seeds 94-96, never scored before 2026-12-05's fifth session) tests the cpu study's
# U-Net and default once, 48 cases, same training (its checkpoints can be copied in)
PROFILES["cpu-confirm"] = PROFILES["cpu-wide"].model_copy(update={
    "name": "cpu-confirm", "eval_segments": _segments("2024-07-02T00:00Z", 3, 2, 94)})
# the dry-only recalibration replicated on the confirmation period: fitted on its first segment (July
# 2-3), scored with the as-trained default on the two later ones (July 4-7, 32 cases)
PROFILES["cpu-confirm-recal"] = PROFILES["cpu"].model_copy(update={
    "name": "cpu-confirm-recal", "eval_segments": PROFILES["cpu-confirm"].eval_segments[1:], "cases": 32,
    "other_segments": PROFILES["cpu-confirm"].eval_segments[:1],
    "models": [ModelSpec(name="unet", kind="unet"), ModelSpec(name="cascade-flow", kind="cascade-flow"),
               ModelSpec(name="cascade-flow-recal-dry", kind="cascade-flow", recalibrate=Recalibration(
                   of="cascade-flow", start="2024-07-02T00:00Z", end="2024-07-03T22:45Z", only="dry"))]})
# the mission checks with 2 and 4 slots (issue 10): cpu-temporal's 2- and 4-slot pairs of seeds 0-2
# (their cascades' calibration refitted as training ends today: scripts/refit_as_trained.py) on
# cpu-wide's 48 cases (June 26 - July 1), then on a period no profile scored before (July 9-14,
# seeds 97-99): docs/studies/lags-mission
PROFILES["cpu-lags-mission"] = PROFILES["cpu-temporal"].model_copy(update={
    "name": "cpu-lags-mission", "models": _lag_models([[0, -15], [0, -15, -30, -45]], (0, 1, 2)),
    "eval_segments": _segments("2024-06-26T00:00Z", 3, 2, 91), "cases": 48})
PROFILES["cpu-lags-fresh"] = PROFILES["cpu-lags-mission"].model_copy(update={
    "name": "cpu-lags-fresh", "eval_segments": _segments("2024-07-09T00:00Z", 3, 2, 97)})
# issue 10's CasCast dial on the cpu profile (same data, budget, U-Net): the cascade trained with 10 %
# condition dropout and sampled with classifier-free guidance on its condition, 2 midpoint steps so
# that it keeps 8 evaluations per member, the weight (1.5) chosen on the validation cases among 1, 1.5,
# 2, 3 (docs/studies/history.md, "Guidance"); the unguided default beside it (its U-Net and cascade are the cpu
# study's: same configuration)
PROFILES["cpu-guidance"] = PROFILES["cpu"].model_copy(update={
    "name": "cpu-guidance", "default": "cascade-flow-cfg", "models": [
        ModelSpec(name="unet", kind="unet"), ModelSpec(name="cascade-flow", kind="cascade-flow"),
        ModelSpec(name="cascade-flow-cfg", kind="cascade-flow",
                  objective={"cond_dropout": 0.1, "guidance": 1.5, "steps": 2})]})


def _window(profile: StudyProfile):
    """The central window a profile scores (``profile.window`` pixels), None for the full grid."""
    from qpe_core.evaluation import central_window

    return central_window(profile.area, profile.window) if profile.window else None


# objective options that act at sampling time only (EDM's stochastic churn): a model spec may set them
# for a trained checkpoint, the draw applies them and its file is keyed by them
SAMPLING_OPTIONS = ("churn", "s_tmin", "s_tmax", "s_noise")


def sampling_options(spec: ModelSpec) -> dict:
    """The sampling-time options of a spec's objective (see ``SAMPLING_OPTIONS``)."""
    return {k: spec.objective[k] for k in SAMPLING_OPTIONS if k in spec.objective}


def customise(name: str, models: list[str] | None = None, **overrides) -> StudyProfile:
    """Profile ``name`` with only the ``models`` named (the last kept one becomes the default if the
    profile's is dropped) and ``overrides`` (steps, device, lr_schedule; None = the profile's)."""
    if name not in PROFILES:
        raise QpeError(f"unknown profile {name!r}; choose from {list(PROFILES)}")
    prof = PROFILES[name]
    update = {k: v for k, v in overrides.items() if v is not None}
    specs = prof.models
    if models:
        unknown = sorted(set(models) - {m.name for m in prof.models})
        if unknown:
            raise QpeError(f"profile {name} has no model {unknown}; it has {[m.name for m in prof.models]}")
        specs = [m for m in prof.models if m.name in models]
        if prof.default not in models:
            update["default"] = models[-1]
    try:
        return StudyProfile.model_validate({**prof.model_dump(), **update, "models": [m.model_dump() for m in specs]})
    except ValidationError as exc:
        raise QpeError(f"profile {name}: {exc.errors()[0]['loc'][0]} {exc.errors()[0]['msg']}") from None
