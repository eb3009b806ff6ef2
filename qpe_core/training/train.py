"""Training loop: one function for every objective, CPU or GPU, one or several processes.

Random patches from the archive, AdamW, EMA of the weights, bf16 autocast on CUDA,
gradient clipping, validation on fixed patches of held-out time blocks, a checkpoint
every ``save_every`` steps (resumable).  Under ``torchrun`` (``WORLD_SIZE`` > 1) each
network is wrapped in DistributedDataParallel and each rank draws its own patches;
rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from qpe_core.archive import Archive
from qpe_core.config import DEFAULT_LAGS
from qpe_core.models import BTNormalizer, RainTransform, build_networks, make_objective
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY
from qpe_core.timeutil import iso
from qpe_core.training.checkpoint import load_resume_state, save_checkpoint
from qpe_core.training.dataset import PatchSampler, block_split, valid_times


class TrainConfig(BaseModel):
    """Everything a training run depends on (recorded in the model card)."""

    model_config = ConfigDict(extra="forbid")
    archive: str
    kind: str = "cascade-flow"
    objective: dict = Field(default_factory=dict)  # keyword arguments of make_objective (e.g. guidance)
    # cascade-flow: the frozen U-Net checkpoint it builds on; None = train one first into OUT/mean
    mean_checkpoint: str | None = None
    out: str
    max_steps: int = Field(2000, ge=1)
    patch: int = Field(128, ge=16)
    lags: list[int] = Field(default_factory=lambda: list(DEFAULT_LAGS))
    channels: list[str] | None = None
    batch_size: int = Field(8, ge=1)
    lr: float = 2e-4
    # the learning rate over the run: "cosine" decays it from lr to 0 over max_steps (half a cosine),
    # "constant" keeps lr (every checkpoint before 2026-12-03 was trained constant); the schedule follows
    # max_steps, so resuming an interrupted run is exact but extending a finished one restarts the decay
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    # clip each network's gradient on its own: with one joint norm the residual flow's scale and flow
    # losses (joint norm ~6 vs ~2 for a lone U-Net, measured) shrank its mean network's steps 3x
    clip_per_network: bool = True
    min_radar_coverage: float = 0.5
    min_rain_quality: float = Field(MIN_RAIN_QUALITY, ge=0, le=1)  # radar pixels below it are not targets
    val_fraction: float = 0.2
    val_block: str = "2D"  # contiguous time blocks assigned whole to train or validation
    val_patches: int = 32
    # held-out patches on which a cascade fits its residual scale, clip and spread calibration (the
    # first val_patches of them are the validation patches): enough that the tail bins' 99.9 %
    # quantiles are not their maxima (32 patches leave 327 pixels in the top bin)
    fit_patches: int = Field(256, ge=1)
    val_every: int = 250
    save_every: int = 500
    device: str = "cpu"
    seed: int = 0
    start: str | None = None
    end: str | None = None
    backbone: dict = Field(default_factory=dict)  # UNet keyword arguments; {} = the backbone's defaults
    loader_threads: int = Field(4, ge=1)  # threads reading the patches of a batch
    # hold the training slots in memory (float32, ~4.7 MB per slot of 7 channels on france-3km): True,
    # False, or None = when they fit in half the memory available (:func:`fits_in_memory`)
    preload: bool | None = None


def fits_in_memory(nbytes: int, available: int | None = None, local_ranks: int | None = None) -> bool:
    """Whether every training process of this host can hold ``nbytes`` in half the memory available
    now (``psutil``; ``LOCAL_WORLD_SIZE`` processes under torchrun)."""
    import psutil

    available = psutil.virtual_memory().available if available is None else available
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local_ranks is None else local_ranks
    return nbytes * local_ranks <= available // 2


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def _spread(times: pd.DatetimeIndex, n: int) -> pd.DatetimeIndex:
    """Up to ``n`` times evenly spread over ``times`` (the statistics samples)."""
    return times[np.linspace(0, len(times) - 1, min(n, len(times))).astype(int)]


def _fit_normalizer(sampler: PatchSampler, times: pd.DatetimeIndex, n: int = 24) -> BTNormalizer:
    """Per-channel mean/std (K) from up to ``n`` current slots of the training period."""
    pick = _spread(times, n)
    arc, sel = sampler.archive, [sampler.archive.channels.index(c) for c in sampler.channels]
    bt = np.stack([arc.group["bt"][arc.index_of(t)][sel][:, ::4, ::4] for t in pick])
    return BTNormalizer.fit(torch.from_numpy(bt))


def _fit_target_stats(sampler: PatchSampler, times: pd.DatetimeIndex, n: int = 24) -> tuple[float, float]:
    """Mean and std of the transformed radar rain over up to ``n`` slots of the training period."""
    pick = _spread(times, n)
    arc = sampler.archive
    rain = torch.from_numpy(np.stack([arc.group["rain"][arc.index_of(t)][::2, ::2] for t in pick]))
    y = sampler.transform.forward(rain)
    y = y[torch.isfinite(y)].double()
    return (float(y.mean()), float(y.std())) if y.numel() > 1 else (0.0, 1.0)


def _batch(sampler: PatchSampler, times: pd.DatetimeIndex, size: int, seed: int, rank: int, step: int,
           pool: ThreadPoolExecutor | None = None):
    """The raw batch ``(bt, rain)`` of optimiser step ``step`` on ``rank`` (encode it with
    ``sampler.encode_batch`` on the training device): a pure function of (seed, rank, step), so
    a resumed run sees exactly the batches an uninterrupted one would. Patches are drawn first and
    read in ``pool`` threads (Zarr decompression releases the GIL)."""
    rng = np.random.default_rng([seed, rank, step])
    ny, nx = sampler.archive.group["rain"].shape[-2:]
    where = []
    for _ in range(size):  # same draw order as PatchSampler.random
        t = times[int(rng.integers(len(times)))]
        where.append((t, int(rng.integers(0, ny - sampler.patch + 1)), int(rng.integers(0, nx - sampler.patch + 1))))
    items = list((pool.map if pool else map)(lambda w: sampler.read_raw(*w), where))
    return tuple(torch.from_numpy(np.stack([x[k] for x in items])) for k in range(2))


def _val_set(sampler: PatchSampler, times: pd.DatetimeIndex, n: int, seed: int):
    rng = np.random.default_rng(seed + 12345)
    items = [sampler.random(times[int(rng.integers(len(times)))], rng) for _ in range(n)]
    return tuple(torch.stack([x[k] for x in items]) for k in range(3))


@torch.no_grad()
def _validate(objective, nets, val, device, batch: int) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    losses = []
    for k in range(0, len(val[0]), batch):
        cond, target, mask = (v[k:k + batch].to(device) for v in val)
        loss, _ = objective.loss(nets, cond, target, mask, generator=gen)
        losses.append(float(loss))
    return float(np.mean(losses))


def train(cfg: TrainConfig, progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``cfg.kind`` on the archive; returns the final card (also written to ``cfg.out``)."""
    rank, world = _dist()
    device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    torch.manual_seed(cfg.seed + rank)
    archive = Archive.open(cfg.archive)
    channels = cfg.channels or archive.channels
    times = valid_times(archive, cfg.lags, cfg.min_radar_coverage, cfg.start, cfg.end)
    train_t, val_t = block_split(times, cfg.val_fraction, cfg.val_block, len(cfg.lags), slot_minutes=archive.slot_minutes, seed=cfg.seed)
    transform = RainTransform()
    sampler = PatchSampler(archive, cfg.lags, channels, BTNormalizer([0.0] * len(channels), [1.0] * len(channels)),
                           transform, cfg.patch, min_quality=cfg.min_rain_quality)
    objective = make_objective(cfg.kind, **cfg.objective)
    mean = _frozen_mean(cfg, channels, progress) if getattr(objective, "frozen", ()) else None
    sampler.normalizer = mean.normalizer if mean else _fit_normalizer(sampler, train_t)
    held_bytes = 0  # training slots held in memory
    if cfg.preload or (cfg.preload is None and fits_in_memory(sampler.preload_bytes(train_t))):
        held_bytes = sampler.preload(train_t)
    in_ch = len(cfg.lags) * (len(channels) + 1)
    objective.set_data_stats(*_fit_target_stats(sampler, train_t))
    raw = build_networks(objective, in_ch, **cfg.backbone).to(device)
    n_held = max(cfg.fit_patches, cfg.val_patches) if mean else cfg.val_patches
    held = _val_set(sampler, val_t, n_held, cfg.seed) if len(val_t) else None  # read once: val is its head
    val = None if held is None else tuple(v[:cfg.val_patches] for v in held)
    fit = None
    if mean:  # the residual scale from held-out patches (training ones only if there is no validation)
        fit = held if held is not None else _val_set(sampler, train_t, n_held, cfg.seed)
        _load_frozen(objective, raw, mean, fit, device)
    ema = copy.deepcopy(raw).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    step = load_resume_state(cfg.out, raw, ema, opt)
    nets = raw
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel
        nets = torch.nn.ModuleDict({k: ddp(v, device_ids=[device.index] if device.type == "cuda" else None)
                                    if any(p.requires_grad for p in v.parameters()) else v
                                    for k, v in raw.items()})
    card = _card(cfg, archive, channels, objective, in_ch, sampler.normalizer, transform, train_t, val_t, raw,
                 held_bytes)
    if mean:
        card["mean_checkpoint"] = {"path": mean.card["path"], "steps": mean.card.get("steps"),
                                   "validation": mean.card.get("validation"),
                                   "residual_fit_on": f"{len(fit[0])} {'validation' if len(val_t) else 'training'} patches"}
    val = val if rank == 0 else None
    log_path = Path(cfg.out) / "train_log.jsonl"
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t_start, seen = time.perf_counter(), 0
    pool = ThreadPoolExecutor(cfg.loader_threads) if cfg.loader_threads > 1 else None
    ahead = ThreadPoolExecutor(1)  # reads step k + 1's patches while step k runs on the device

    def fetch(k):
        return ahead.submit(_batch, sampler, train_t, cfg.batch_size, cfg.seed, rank, k, pool)

    nxt = fetch(step) if step < cfg.max_steps else None
    while step < cfg.max_steps:
        patches, nxt = nxt.result(), fetch(step + 1) if step + 1 < cfg.max_steps else None
        cond, target, mask = sampler.encode_batch(*(x.to(device, non_blocking=True) for x in patches))
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, step, 1]).generate_state(1)[0]))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, logs = objective.loss(nets, cond, target, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        gnorm = _clip(raw, cfg.grad_clip, cfg.clip_per_network)
        opt.step()
        _ema_update(ema, raw, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step, seen = step + 1, seen + cfg.batch_size * world
        rec = {"step": step, "loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": lr_at(cfg, step - 1),
               "samples_per_s": seen / (time.perf_counter() - t_start)}
        if rank == 0 and val is not None and (step % cfg.val_every == 0 or step == cfg.max_steps):
            rec["val_loss"] = _validate(objective, ema, val, device, cfg.batch_size)
            card["validation"] = {"loss": rec["val_loss"], "step": step}
        if rank == 0 and step == cfg.max_steps and fit is not None and hasattr(objective, "calibrate"):
            rec["calibration"] = _calibrate(objective, ema, fit, device, cfg.seed)
            card["objective"] = objective.config()
        if rank == 0:
            if "val_loss" in rec or step % 50 == 0:
                with log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                save_checkpoint(cfg.out, card, ema, raw, opt, step)
        if progress:
            progress(step, rec)
    ahead.shutdown(cancel_futures=True)
    if pool:
        pool.shutdown()
    if world > 1:
        torch.distributed.barrier()
    return card


def _frozen_mean(cfg: TrainConfig, channels, progress=None):
    """The trained U-Net a cascade objective freezes: ``cfg.mean_checkpoint``, or one trained first
    into ``OUT/mean`` with the same data, budget and seed (resumable like any run)."""
    from qpe_core.errors import QpeError
    from qpe_core.training.checkpoint import check_card, load_checkpoint, trained_to

    path = cfg.mean_checkpoint
    if path is None:
        path = str(Path(cfg.out) / "mean")
        if not trained_to(path, cfg.max_steps):
            train(cfg.model_copy(update={"kind": "unet", "out": path, "objective": {}}), progress)
    mean = load_checkpoint(path, "cpu")
    if mean.card["kind"] != "unet":
        raise QpeError(f"{cfg.kind} needs a unet checkpoint as its mean, {path} is a {mean.card['kind']}")
    check_card(mean.card, Archive.open(cfg.archive).area, list(channels), list(cfg.lags))
    if list(mean.card["channels"]) != list(channels):
        raise QpeError(f"mean checkpoint {path} uses channels {mean.card['channels']}, this run {list(channels)}")
    mean.card["path"] = path
    return mean


def _load_frozen(objective, raw: torch.nn.ModuleDict, mean, val, device) -> None:
    """Copy the U-Net into ``raw["mean"]``, freeze it and fit the residual scale on held-out patches."""
    from qpe_core.errors import QpeError

    try:
        raw["mean"].load_state_dict(mean.nets["net"].state_dict())
    except RuntimeError as exc:
        raise QpeError(f"mean checkpoint {mean.card['path']} does not fit this run's backbone "
                       f"({str(exc)[:160]}); train both with the same backbone") from None
    raw["mean"].requires_grad_(False).eval()
    if hasattr(objective, "fit_residual_std"):
        with torch.no_grad():
            objective.fit_residual_std({"mean": raw["mean"]}, *(v.to(device) for v in val))


@torch.no_grad()
def _calibrate(objective, nets, val, device, seed: int) -> dict | None:
    """Objectives with a held-out calibration (the cascade's spread knots) fit it on the validation
    patches with the final EMA weights; returns its summary for the training log."""
    gen = torch.Generator(device=device).manual_seed(seed + 777)
    return objective.calibrate(nets, *(v.to(device) for v in val), generator=gen)


def _clip(nets: torch.nn.ModuleDict, max_norm: float, per_network: bool) -> float:
    """Clip gradients to ``max_norm`` per network (or jointly); returns the largest norm before."""
    trainable = [n for n in nets.values() if any(p.requires_grad for p in n.parameters())]
    if not per_network:
        return float(torch.nn.utils.clip_grad_norm_([p for n in trainable for p in n.parameters()], max_norm))
    return max(float(torch.nn.utils.clip_grad_norm_(n.parameters(), max_norm)) for n in trainable)


@torch.no_grad()
def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a ``cfg.max_steps`` run."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.max_steps))


def _ema_update(ema: torch.nn.Module, raw: torch.nn.Module, decay: float) -> None:
    for e, r in zip(ema.parameters(), raw.parameters()):
        e.lerp_(r.detach(), 1.0 - decay)
    for e, r in zip(ema.buffers(), raw.buffers()):
        e.copy_(r)


def _card(cfg: TrainConfig, archive: Archive, channels, objective, in_ch: int, normalizer, transform,
          train_t, val_t, raw, held_bytes: int = 0) -> dict:
    return {
        "kind": cfg.kind, "objective": objective.config(), "in_channels": in_ch,
        "backbone": {k: v for k, v in next(iter(raw.values())).config.items()
                     if k not in ("in_channels", "out_channels")}, "parameters": sum(p.numel() for p in raw.parameters()),
        "area": archive.area, "channels": list(channels), "lags": list(cfg.lags),
        "slot_minutes": archive.slot_minutes, "patch": cfg.patch,
        "normalizer": normalizer.to_dict(), "transform": transform.to_dict(),
        "training_period": {"archive": cfg.archive, "first": iso(train_t.min()), "last": iso(train_t.max()),
                            "train_slots": len(train_t), "validation_slots": len(val_t),
                            "held_in_memory_mb": round(held_bytes / 2**20)},
        "validation_times": [iso(val_t.min()), iso(val_t.max())] if len(val_t) else None,
        "config": cfg.model_dump(),
    }
