"""Prefect flows of the operational cycle: ``nowcast`` (every 15 minutes) and ``backfill``.

Thin: the work is in :mod:`qpe_core.nowcast`; the flows add retries with jittered delays,
timeouts, bounded concurrency, progress and the run tables / quick-looks in the UI.

``backfill`` runs its slots on a thread pool by default; ``runner="dask"`` sends them to a Dask
cluster through prefect-dask's ``DaskTaskRunner``: a temporary ``LocalCluster`` of
``dask_workers`` workers, or an existing cluster at ``dask_address`` (its workers need this
package and the same archive / product storage, e.g. S3).
"""

from __future__ import annotations

import base64
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.events import emit_event
from prefect.task_runners import ThreadPoolTaskRunner

from qpe_core.config import load_settings
from qpe_core.events import cycle_events
from qpe_core.late_runs import guard_current_run
from qpe_core.nowcast import CycleResult, newest_slot, run_cycle
from qpe_core.sources import make_source
from qpe_core.timeutil import iso, slot_range, to_utc


def _source(kind: str, cfg, seed: int, source_dir: str | None = None):
    if kind == "simulated":
        return make_source("simulated", area=cfg.area, seed=seed, channels=cfg.channels,
                           slot_minutes=cfg.slot_minutes)
    if kind == "local":
        return make_source("local", directory=source_dir, slot_minutes=cfg.slot_minutes)
    return make_source("eumdac", cache=cfg.cache_dir, slot_minutes=cfg.slot_minutes)


@task(retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.5, timeout_seconds=1800)
def cycle_task(archive_url: str, products_url: str, checkpoint: str, source_kind: str, slot: str | None,
               members: int, seed: int, max_age_minutes: int, cache_dir: str,
               source_dir: str | None = None) -> CycleResult:
    cfg = load_settings()
    src = _source(source_kind, cfg, seed, source_dir)
    return run_cycle(archive_url, products_url, checkpoint, src, slot=slot, members=members, seed=seed,
                     max_age_minutes=max_age_minutes, cache_dir=cache_dir, device=cfg.device)


def _read_bytes(url: str) -> bytes | None:
    """Bytes of a local or s3:// product (None if it cannot be read: the table still publishes)."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except OSError:
        return None


def _publish(results: list[CycleResult], key: str, checkpoint: str | None = None) -> None:
    create_table_artifact([r.row() for r in results], key=key, description="QPE cycles")
    for r in results:  # qpe.product.published / qpe.input.missing (qpe_core.events)
        for spec in cycle_events(r, checkpoint or ""):
            emit_event(**spec)
    done = [r for r in results if r.status == "done" and "quicklook" in r.products]
    png = _read_bytes(done[-1].products["quicklook"]) if done else None
    if png:
        loop = _loop(done[-1])
        create_markdown_artifact(
            f"### {done[-1].slot}: ensemble mean and P(R > 1 mm/h)\n\n"
            f"![quick-look](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
            f"`{done[-1].products['quicklook']}`"
            + (f"\n\n### Ensemble mean, last 3 hours\n\n![loop](data:image/gif;base64,{base64.b64encode(loop).decode()})"
               if loop else ""), key=f"{key}-quicklook")


def _loop(res: CycleResult) -> bytes | None:
    """Animated GIF of the ensemble mean over the 3 hours up to ``res.slot`` (None if it cannot be made)."""
    from qpe_core.errors import QpeError
    from qpe_core.products.animation import mean_loop_gif
    from qpe_core.products.cube import ProductCube

    try:
        return mean_loop_gif(ProductCube.open(res.products["cube"]), res.slot)
    except (QpeError, OSError, KeyError):
        return None


@flow(name="nowcast", log_prints=True)
def nowcast(valid_time: str | None = None, checkpoint: str = "data/checkpoints/demo", source: str = "simulated",
            members: int = 16, seed: int = 0, max_age_minutes: int = 180, archive_url: str | None = None,
            products_url: str | None = None, source_dir: str | None = None) -> dict:
    """Estimate rain for the newest complete slot (or ``valid_time``, UTC): skips done slots,
    refuses stale ones, records missing inputs.  A scheduled run that starts more than one
    period late exits at once as skipped when a newer run is waiting (qpe_core.late_runs)."""
    cfg = load_settings(archive_url=archive_url, products_url=products_url)
    late = guard_current_run(cfg.slot_minutes) if valid_time is None else None
    if late is not None and late.skip:
        res = CycleResult(iso(newest_slot(slot_minutes=cfg.slot_minutes)), "skipped", reason=late.reason)
        _publish([res], "nowcast")
        get_run_logger().warning("%s", late.reason)
        return res.row() | {"products": {}}
    if late is not None and late.reason:
        get_run_logger().warning("%s", late.reason)
    res = cycle_task(cfg.resolved_archive_url(), cfg.products_url, checkpoint, source, valid_time, members, seed,
                     max_age_minutes, cfg.cache_dir, source_dir)
    _publish([res], "nowcast", checkpoint)
    get_run_logger().info("slot %s: %s %s", res.slot, res.status, res.reason)
    return res.row() | {"products": res.products}


def dask_task_runner(dask_workers: int = 2, dask_address: str | None = None, processes: bool = True):
    """prefect-dask's ``DaskTaskRunner``: connects to ``dask_address`` (``tcp://host:8786``) when
    given, else starts a temporary ``LocalCluster`` of ``dask_workers`` single-threaded workers
    (separate processes unless ``processes`` is false) that lives as long as the flow run."""
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    if dask_workers < 1:
        raise ValueError(f"dask_workers must be >= 1, got {dask_workers}")
    return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1,
                                          "processes": processes, "dashboard_address": None})


@flow(name="backfill", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def backfill(start: str, end: str, checkpoint: str = "data/checkpoints/demo", source: str = "simulated",
             members: int = 16, seed: int = 0, archive_url: str | None = None,
             products_url: str | None = None, runner: Literal["threads", "dask"] = "threads",
             dask_workers: int = 2, dask_address: str | None = None, dask_processes: bool = True,
             source_dir: str | None = None) -> dict:
    """Every slot from ``start`` to ``end`` (UTC): idempotent and resumable (done slots are
    skipped), bounded concurrency, a progress artifact and a final table.

    ``runner="threads"`` (default): two slots at a time on the worker's host.  ``runner="dask"``:
    slots on a Dask cluster (``dask_address``, or a temporary local one of ``dask_workers``
    workers); same results, one task run per slot in the UI either way. ``source_dir``: the
    directory replayed by ``source="local"``."""
    cfg = load_settings(archive_url=archive_url, products_url=products_url)
    n = int((to_utc(end) - to_utc(start)).total_seconds() // (60 * cfg.slot_minutes)) + 1
    slots = [iso(t) for t in slot_range(start, n, cfg.slot_minutes)]
    _prepare_cubes(cfg, checkpoint, members, slots)
    progress = create_progress_artifact(0.0, description=f"backfill {slots[0]} .. {slots[-1]}")
    args = [dict(archive_url=cfg.resolved_archive_url(), products_url=cfg.products_url, checkpoint=checkpoint,
                 source_kind=source, slot=s, members=members, seed=seed, max_age_minutes=10**9,
                 cache_dir=cfg.cache_dir, source_dir=source_dir) for s in slots]
    if runner == "dask":
        get_run_logger().info("backfill of %d slots on Dask (%s)", len(slots),
                              dask_address or f"local cluster, {dask_workers} workers")
        with dask_task_runner(dask_workers, dask_address, dask_processes) as task_runner:
            results = _collect([task_runner.submit(cycle_task, a) for a in args], slots, progress)
    elif runner == "threads":
        results = _collect([cycle_task.submit(**a) for a in args], slots, progress)
    else:
        raise ValueError(f"runner must be 'threads' or 'dask', got {runner!r}")
    _publish(results, "backfill", checkpoint)
    for r in results:
        if r.status == "failed":
            get_run_logger().warning("slot %s failed: %s", r.slot, r.reason)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "stale")}
    return {"slots": len(results), **counts}


def _prepare_cubes(cfg, checkpoint: str, members: int, slots: list[str]) -> None:
    """Create the archive and the product cube and allocate the backfill's time range (lag
    slots included) before parallel tasks start: concurrent first writers would otherwise race
    to create the same cube, and the first slot written would set the origin of the time axis.
    A problem here is only logged: each task then reports it for its slot."""
    from qpe_core.archive import Archive
    from qpe_core.errors import QpeError
    from qpe_core.products.cube import ProductCube
    from qpe_core.stack import lag_times
    from qpe_core.training.checkpoint import read_card

    try:
        card = read_card(checkpoint)
        first = min(lag_times(slots[0], card["lags"], cfg.slot_minutes))
        archive = Archive.open_or_create(cfg.resolved_archive_url(), card["area"], card["channels"],
                                         cfg.slot_minutes, origin=first)
        archive.ensure_range(first, slots[-1])
        members = 1 if card["kind"] == "unet" else members  # as qpe_core.training.inference.predict
        cube = ProductCube.open_or_create(f"{cfg.products_url.rstrip('/')}/{card['area']}.zarr", card["area"],
                                          members, cfg.slot_minutes, origin=slots[0])
        cube.ensure_range(slots[0], slots[-1])
    except QpeError as exc:
        get_run_logger().warning("archive / product cube not prepared: %s", exc)


def _collect(futures, slots: list[str], progress) -> list[CycleResult]:
    results = []
    for k, fut in enumerate(futures, 1):
        try:
            results.append(fut.result())
        except Exception as exc:  # a task that failed after its retries
            results.append(CycleResult(slots[k - 1], "failed", reason=str(exc)))
        update_progress_artifact(progress, 100.0 * k / len(futures))
    return results
