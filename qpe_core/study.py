"""``qpe study``: every model kind trained with one equal budget, scored on a later held-out period.

Stages, each resumable (a re-run skips what is complete and resumes a half-trained model):

1. **simulate** the profile's segments into ``OUT/archive.zarr`` (or use ``archive=``): independent
   segments with their own seeds and a one-hour gap, so no stack straddles two simulations; the
   evaluation segments come after the training ones and use seeds no training segment uses;
2. **train** each model of the profile into ``OUT/ck/NAME`` with the same backbone, steps, batch,
   patch, learning rate, EMA and seed (``cascade-flow`` freezes the study's own ``unet`` as its mean
   and spends the same steps on its flow network);
3. **draw** each model's ensemble on the held-out cases into ``OUT/ensembles/NAME.npz`` (case ``k`` uses
   seed ``k``; the default model also at ``cost_steps`` on ``cost_cases`` of them, each with its own
   case's seed, so that the cost check compares the same initial noise integrated in two ways);
4. **score** them together (:mod:`qpe_core.study_score`: the verification suite, the mission checks
   of :mod:`qpe_core.report.mission`, the oracle ensemble) and write ``OUT/report`` (``metrics.json``,
   ``report.md``, figures) and ``OUT/study.json`` (profile, wall time and peak memory per stage).

Profiles (:mod:`qpe_core.study_profiles`): ``cpu`` (2 cores, at most 75 minutes: 8 training
segments over June 1-23, held out June 26-27; ``cpu-4slot`` the same with the earlier 4-slot
default), ``cpu-early`` (its earlier design: June 1-8, held out June 10-11; ``cpu-lags`` and
``cpu-ablation`` use its data), ``cpu-season`` (the cpu budget on 12 training segments over June
1-25), ``cpu-temporal`` (1, 2 and 4 slots at the cpu budget), ``gpu`` (one H100/H200, at most 10
minutes with the archive simulated in the same call), ``gpu-lags`` (the temporal claim at the gpu
budget) and ``tiny`` (the tests). Rain in mm/h, times UTC.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from qpe_core.atomic import write_json_atomically, write_stream_atomically
from qpe_core.errors import QpeError
# the profiles live in study_profiles; imported here too for ``from qpe_core.study import PROFILES``
from qpe_core.study_profiles import (DEFAULT_KIND, KINDS, LAGS_4, PROFILES, SAMPLING_OPTIONS,  # noqa: F401
                                     ModelSpec, Segment, StudyProfile, _lag_models, _window, customise,
                                     sampling_options)
# the score stage lives in study_score (imported here for run_study and ``from qpe_core.study import ...``)
from qpe_core.study_score import oracle_stage, score_stage  # noqa: F401
from qpe_core.timeutil import iso

Progress = Callable[[str, int, int, str], None]  # (stage, done, total, label)


# ------------------------------------------------------------------ stages

def simulate_stage(profile: StudyProfile, url: str, progress: Progress | None = None) -> dict:
    """Simulate every segment not yet complete in the archive at ``url``; returns slots per segment."""
    from qpe_core.archive import Archive
    from qpe_core.config import Settings
    from qpe_core.simulate_archive import simulate_to_archive
    from qpe_core.timeutil import slot_range

    segs = [*profile.train_segments, *profile.eval_segments, *profile.other_segments]
    first = min(pd.Timestamp(s.start) for s in segs)
    arc = Archive.open(url, "a") if (Path(url) / "zarr.json").exists() else \
        Archive.create(url, profile.area, list(Settings().channels), origin=first)
    todo = missing_segments(profile, arc)
    out = {seg.start: "complete" for seg in segs if seg not in todo}
    if todo:
        last = max(slot_range(seg.start, seg.periods, arc.slot_minutes)[-1] for seg in todo)
        arc.ensure_range(min(pd.Timestamp(seg.start) for seg in todo), last)  # before parallel writers
    workers = profile.sim_workers or (profile.parallel * 4 if profile.parallel > 1 else 1)
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("spawn")) as pool:
            for i, (seg, res) in enumerate(zip(todo, pool.map(_simulate_one, [url] * len(todo), todo))):
                out[seg.start] = res
                if progress:
                    progress("simulate", i + 1, len(todo), seg.start)
    else:
        for i, seg in enumerate(todo):
            if progress:
                progress("simulate", i, len(todo), seg.start)
            out[seg.start] = simulate_to_archive(arc, seg.start, seg.periods, seg.seed)
    if progress:
        progress("simulate", len(todo), len(todo), "")
    return out


def missing_segments(profile: StudyProfile, arc) -> list[Segment]:
    """The profile's segments whose slots are not all in the archive ``arc`` (BT and rain)."""
    from qpe_core.timeutil import slot_range

    done = set(arc.times("bt")) & set(arc.times("rain"))
    return [seg for seg in [*profile.train_segments, *profile.eval_segments, *profile.other_segments]
            if not all(t in done for t in slot_range(seg.start, seg.periods, arc.slot_minutes))]


def _simulate_one(url: str, seg: Segment) -> dict:
    from qpe_core.archive import Archive
    from qpe_core.simulate_archive import simulate_to_archive

    return simulate_to_archive(Archive.open(url, "a"), seg.start, seg.periods, seg.seed)


def _train_config(profile: StudyProfile, spec: ModelSpec, archive: str, out: Path):
    from qpe_core.training.train import TrainConfig

    end = max(pd.Timestamp(s.start) + pd.Timedelta(minutes=15 * s.periods) for s in profile.train_segments)
    extra = {"mean_checkpoint": str(out / "ck" / spec.mean)} if spec.kind == "cascade-flow" else {}
    return TrainConfig(archive=archive, kind=spec.kind, out=str(out / "ck" / spec.name), max_steps=profile.steps,
                       patch=profile.patch, lags=spec.lags or profile.lags, batch_size=profile.batch_size,
                       lr=profile.lr, lr_schedule=profile.lr_schedule, ema_decay=profile.ema_decay, device=profile.device,
                       seed=profile.seed if spec.seed is None else spec.seed, end=iso(end), backbone={**profile.backbone, **spec.backbone},
                       objective=spec.objective, val_every=profile.val_every, save_every=max(profile.steps // 4, 1),
                       loader_threads=_loader_threads(profile), preload=True, **extra)


def _loader_threads(profile: StudyProfile) -> int:
    """Patch-reading threads per training: 4 on a GPU; on CPU 2, or 1 when trainings share the cores."""
    if profile.device != "cpu":
        return 4
    return 1 if profile.parallel > 1 else 2


def _train_one(cfg_json: str, torch_threads: int = 0) -> str:
    """Train one model in this (spawned) process; ``torch_threads > 0`` sets its CPU threads, so that
    parallel CPU trainings split the cores instead of spinning against each other."""
    import torch

    from qpe_core.training.train import TrainConfig, train

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    cfg = TrainConfig.model_validate_json(cfg_json)
    train(cfg)
    return cfg.out


def train_stage(profile: StudyProfile, archive: str, out: Path, progress: Progress | None = None) -> dict:
    """Train every model not yet at ``profile.steps``. A cascade waits for the U-Net it freezes; with
    ``profile.parallel > 1`` the others start at once, ``profile.parallel`` at a time (separate
    processes sharing the device), and a cascade starts as soon as its U-Net is done."""
    from qpe_core.training.checkpoint import trained_to

    specs = [s for s in profile.models if not s.recalibrate and not trained_to(out / "ck" / s.name, profile.steps)]
    unets = {s.name for s in profile.models if s.kind == "unet"}
    for s in profile.models:
        if s.kind == "cascade-flow" and s.mean not in unets:
            raise QpeError(f"{s.name}: its frozen mean {s.mean!r} is not a unet of the study ({sorted(unets)})")
    seconds: dict[str, float] = {}
    if profile.parallel > 1 and len(specs) > 1:
        _train_parallel(profile, specs, archive, out, seconds)
    else:
        _train_serial(profile, specs, archive, out, seconds, progress)
    _recalibrate(profile, archive, out, seconds)
    return seconds


def _recalibrate(profile: StudyProfile, archive: str, out: Path, seconds: dict) -> None:
    """Make each ``recalibrate`` model not yet made from its trained model (``ModelSpec.recalibrate``)."""
    from qpe_core.training.recalibrate import recalibrate

    cascades = {s.name for s in profile.models if s.kind == "cascade-flow" and not s.recalibrate}
    for spec in profile.models:
        r = spec.recalibrate
        if r is None or (out / "ck" / spec.name / "card.json").is_file():
            continue
        if r.of not in cascades:
            raise QpeError(f"{spec.name}: recalibrates {r.of!r}, not a trained cascade-flow of the study ({sorted(cascades)})")
        t0 = time.perf_counter()
        recalibrate(out / "ck" / r.of, archive, r.start, r.end, out / "ck" / spec.name, patches=r.patches,
                    seed=profile.seed, device=profile.device, only=r.only)
        seconds[spec.name] = time.perf_counter() - t0


def _train_serial(profile: StudyProfile, specs: list, archive: str, out: Path, seconds: dict, progress) -> None:
    for spec in sorted(specs, key=lambda s: s.kind != "unet"):  # the cascade's frozen mean comes first
        t0 = time.perf_counter()

        def step(n: int, rec: dict, name=spec.name) -> None:
            if progress and (n % 10 == 0 or n == profile.steps):
                progress("train " + name, n, profile.steps, f"loss {rec['loss']:.4f}")

        from qpe_core.training.train import train

        train(_train_config(profile, spec, archive, out), progress=step)
        seconds[spec.name] = time.perf_counter() - t0


def _train_parallel(profile, specs, archive, out, seconds) -> None:
    """Train ``specs`` in ``profile.parallel`` processes (on CPU each with its share of the cores); a
    cascade is submitted once its mean is done, and takes the next free process before the others
    (U-Nets first, so the longest chain, U-Net then cascade, starts first)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    t0 = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // profile.parallel) if profile.device == "cpu" else 0
    todo = sorted(specs, key=lambda s: s.kind != "unet")
    pending = {s.name for s in specs}
    with ProcessPoolExecutor(min(profile.parallel, len(specs)), mp_context=mp.get_context("spawn")) as pool:
        running: dict = {}
        while todo or running:
            ready = [s for s in todo if s.kind != "cascade-flow" or s.mean not in pending]
            # one job per free process, ready cascades first: the chain U-Net -> cascade is the longest
            for s in sorted(ready, key=lambda s: s.kind != "cascade-flow")[:profile.parallel - len(running)]:
                todo.remove(s)
                running[pool.submit(_train_one, _train_config(profile, s, archive, out).model_dump_json(),
                                     threads)] = s.name
            if not running:
                raise QpeError(f"cannot train {[s.name for s in todo]}: their U-Nets are not trained")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                fut.result()
                pending.discard(name)
                seconds[name] = time.perf_counter() - t0


def eval_cases(profile: StudyProfile, archive: str) -> pd.DatetimeIndex:
    """The held-out cases: valid times of the evaluation segments with every model's lags, spread evenly."""
    from qpe_core.archive import Archive
    from qpe_core.evaluation import plan_cases

    lags = sorted({int(v) for s in profile.models for v in (s.lags or profile.lags)} | {0}, reverse=True)
    arc = Archive.open(archive)
    times = [t for seg in profile.eval_segments
             for t in plan_cases(arc, lags, seg.start, pd.Timestamp(seg.start) + pd.Timedelta(minutes=15 * seg.periods))]
    times = pd.DatetimeIndex(sorted(times))
    return times[np.linspace(0, len(times) - 1, min(profile.cases, len(times))).astype(int)]


def draw_ensembles(ckpt: Path, archive: str, times, members: int, window, device: str, steps: int | None = None,
                   seeds=None, sampling: dict | None = None) -> tuple[np.ndarray, float]:
    """Ensembles ``(case, member, y, x)`` mm/h of one checkpoint on ``times`` (case k: seed ``seeds[k]``,
    default k), sampled with ``sampling`` options set on its objective; seconds/case."""
    from qpe_core.archive import Archive
    from qpe_core.evaluation import case_ensemble, case_stack, window_slices
    from qpe_core.grids import get_spec
    from qpe_core.training.checkpoint import load_checkpoint

    arc, model = Archive.open(archive), load_checkpoint(ckpt, device)
    for k, v in (sampling or {}).items():
        if not hasattr(model.objective, k):
            raise QpeError(f"{ckpt}: a {model.card['kind']} objective has no sampling option {k!r}")
        setattr(model.objective, k, float(v))
    spec = get_spec(arc.area)
    ys, xs = window_slices(window, (spec.height, spec.width))
    n = 1 if model.card["kind"] == "unet" else members
    fields, t0 = [], time.perf_counter()
    seeds = range(len(times)) if seeds is None else seeds
    for t, seed in zip(times, seeds, strict=True):
        bt, valid = case_stack(arc, t, model.card["lags"], model.card["channels"], ys, xs)
        fields.append(case_ensemble(model, bt, valid, n, steps, seed=int(seed), device=device, tile=None))
    return np.stack(fields), (time.perf_counter() - t0) / max(len(times), 1)


def _card_digest(ckpt: Path) -> str:
    """SHA-256 of a checkpoint's card (it changes with every save: steps, objective, validation) and
    the default sampler and steps of its kind (they live in the code)."""
    import hashlib

    from qpe_core.models import objective_from_config

    card = (ckpt / "card.json").read_bytes()
    obj = objective_from_config(json.loads(card)["objective"])
    return hashlib.sha256(card + f"{obj.default_sampler}:{obj.default_steps}".encode()).hexdigest()


def _save_npz(path: Path, **arrays) -> None:
    write_stream_atomically(path, lambda fh: np.savez_compressed(fh, **arrays))


def cost_case_indices(profile: StudyProfile, n_cases: int) -> np.ndarray:
    """Indices of the held-out cases the cost check draws again at ``cost_steps``: spread evenly."""
    return np.linspace(0, n_cases - 1, min(profile.cost_cases, n_cases)).astype(int)


def draw_stage(profile: StudyProfile, archive: str, out: Path, progress: Progress | None = None) -> None:
    """Truth and every model's ensemble on the held-out cases (skips files already drawn)."""
    from qpe_core.archive import Archive
    from qpe_core.evaluation import window_slices
    from qpe_core.grids import get_spec

    ens = out / "ensembles"
    ens.mkdir(parents=True, exist_ok=True)
    times, window = eval_cases(profile, archive), _window(profile)
    stamp = np.array([iso(t) for t in times])
    if not (ens / "truth.npz").is_file():
        arc, spec = Archive.open(archive), get_spec(profile.area)
        ys, xs = window_slices(window, (spec.height, spec.width))
        _save_npz(ens / "truth.npz", times=stamp, truth=np.stack([arc.read_truth(t)[ys, xs] for t in times]))
    every = np.arange(len(times))
    jobs = [(s.name, None, every) for s in profile.models]
    sampling = {s.name: sampling_options(s) for s in profile.models}
    # the cost check's reference: the default at cost_steps on a subset of the cases, each with the
    # seed (initial noise) of the default's own draw of that case, so that the two differ by the
    # steps alone (unpaired, 8 members x 6 cases, the sampling noise was as large as the check's 3 %)
    jobs += [(profile.default, profile.cost_steps, cost_case_indices(profile, len(times)))]
    for i, (name, steps, idx) in enumerate(jobs):
        path, tt = ens / (f"{name}.npz" if steps is None else f"{name}@{steps}.npz"), times[idx]
        card = _card_digest(out / "ck" / name)
        if sampling[name]:  # drawn with the spec's sampling options, not the card's
            card += " sampling " + json.dumps(sampling[name], sort_keys=True)
        if path.is_file():
            with np.load(path) as z:  # drawn from this very checkpoint on these very cases and seeds
                seeds = z["seeds"] if "seeds" in z.files else np.arange(len(z["times"]))  # older files: 0..n-1
                if list(z["times"]) == [iso(t) for t in tt] and "card" in z.files and str(z["card"]) == card \
                        and list(seeds) == list(idx):
                    continue
        if progress:
            progress("draw", i, len(jobs), path.stem)
        rain, sec = draw_ensembles(out / "ck" / name, archive, tt, profile.members, window, profile.device, steps, idx,
                                   sampling[name])
        _save_npz(path, times=np.array([iso(t) for t in tt]), rain=rain, seconds_per_case=sec, card=np.array(card),
                  seeds=idx)
    if progress:
        progress("draw", len(jobs), len(jobs), "")


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB, :func:`qpe_core.load_bench.peak_rss_mib`); worker
    processes (the simulation's, the gpu profile's parallel training) are not counted: a forked child
    reports its parent's pages as its own."""
    from qpe_core.load_bench import peak_rss_mib

    return round(peak_rss_mib(), 1)


def run_study(profile: StudyProfile, out: str | Path, archive: str | None = None,
              progress: Progress | None = None) -> dict:
    """All four stages (module docstring) into ``out``; returns the metrics dict. Re-runs resume."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if profile.default not in {s.name for s in profile.models}:
        raise QpeError(f"profile {profile.name}: default model {profile.default!r} is not among its models "
                       f"{[s.name for s in profile.models]}")
    url = archive or str(out / "archive.zarr")
    log: dict = {"profile": profile.model_dump(), "archive": url, "seconds": {}, "peak_rss_mib": {}}
    t0 = time.perf_counter()
    if archive is None:
        log["simulated"] = simulate_stage(profile, url, progress)
    else:  # another study's archive: it must hold this profile's data, not merely overlap it
        from qpe_core.archive import Archive

        gaps = missing_segments(profile, Archive.open(url))
        if gaps:
            raise QpeError(f"archive {url} lacks profile {profile.name}'s segment(s) "
                           f"{', '.join(f'{g.start} ({g.periods} slots, seed {g.seed})' for g in gaps)}; "
                           f"run without --archive to simulate them, or pass the archive of a study of the same data")
    log["seconds"]["simulate"] = time.perf_counter() - t0
    log["peak_rss_mib"]["simulate"] = _peak_rss_mib()
    t1 = time.perf_counter()
    log["train_seconds"] = train_stage(profile, url, out, progress)
    log["seconds"]["train"] = time.perf_counter() - t1
    log["peak_rss_mib"]["train"] = _peak_rss_mib()
    t1 = time.perf_counter()
    draw_stage(profile, url, out, progress)
    log["seconds"]["draw"] = time.perf_counter() - t1
    log["peak_rss_mib"]["draw"] = _peak_rss_mib()
    t1 = time.perf_counter()
    metrics = score_stage(profile, out)
    log["seconds"]["score"] = time.perf_counter() - t1
    log["peak_rss_mib"]["score"] = _peak_rss_mib()
    log["seconds"]["total"] = time.perf_counter() - t0
    log["checks"] = {n: f"{m['held']}/{m['total']}" for n, m in metrics["mission"].items()}
    write_json_atomically(out / "study.json", log, indent=1, default=str)
    return metrics
