"""Prefect flows of the operational cycle: ``nowcast`` (every 15 minutes) and ``backfill``.

Thin: the work is in :mod:`qpe_core.nowcast`; the flows add retries with jittered delays,
timeouts, bounded concurrency, progress and the run tables / quick-looks in the UI.
"""

from __future__ import annotations

import base64
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.task_runners import ThreadPoolTaskRunner

from qpe_core.config import load_settings
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
                     max_age_minutes=max_age_minutes, cache_dir=cache_dir)


def _publish(results: list[CycleResult], key: str) -> None:
    create_table_artifact([r.row() for r in results], key=key, description="QPE cycles")
    done = [r for r in results if r.status == "done" and "quicklook" in r.products]
    if done and Path(done[-1].products["quicklook"]).is_file():
        png = Path(done[-1].products["quicklook"]).read_bytes()
        create_markdown_artifact(
            f"### {done[-1].slot}: ensemble mean and P(R > 1 mm/h)\n\n"
            f"![quick-look](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
            f"`{done[-1].products['quicklook']}`", key=f"{key}-quicklook")


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
    _publish([res], "nowcast")
    get_run_logger().info("slot %s: %s %s", res.slot, res.status, res.reason)
    return res.row() | {"products": res.products}


@flow(name="backfill", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def backfill(start: str, end: str, checkpoint: str = "data/checkpoints/demo", source: str = "simulated",
             members: int = 16, seed: int = 0, archive_url: str | None = None,
             products_url: str | None = None) -> dict:
    """Every slot from ``start`` to ``end`` (UTC): idempotent and resumable (done slots are
    skipped), bounded concurrency, a progress artifact and a final table."""
    cfg = load_settings(archive_url=archive_url, products_url=products_url)
    n = int((to_utc(end) - to_utc(start)).total_seconds() // (60 * cfg.slot_minutes)) + 1
    slots = [iso(t) for t in slot_range(start, n, cfg.slot_minutes)]
    progress = create_progress_artifact(0.0, description=f"backfill {slots[0]} .. {slots[-1]}")
    futures = [cycle_task.submit(cfg.resolved_archive_url(), cfg.products_url, checkpoint, source, s, members,
                                 seed, 10**9, cfg.cache_dir) for s in slots]
    results = []
    for k, fut in enumerate(futures, 1):
        try:
            results.append(fut.result())
        except Exception as exc:  # a task that failed after its retries
            results.append(CycleResult(slots[k - 1], "failed", reason=str(exc)))
        update_progress_artifact(progress, 100.0 * k / len(futures))
    _publish(results, "backfill")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "stale")}
    return {"slots": len(results), **counts}
