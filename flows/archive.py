"""Archive-building flows: simulated data (the embedded default) and real file ingest.

Thin: each task calls one :mod:`qpe_core` function; the flows add retries,
progress artifacts and a summary table in the Prefect UI.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from qpe_core.archive import Archive, summarize
from qpe_core.config import load_settings
from qpe_core.ingest import ingest_radar, ingest_seviri
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.timeutil import iso, slot_range


@task(retries=2, retry_delay_seconds=[5, 30], retry_jitter_factor=0.5)
def simulate_period(url: str, start: str, periods: int, seed: int, progress_id) -> dict:
    """Simulate consecutive slots into the archive (idempotent: a retry rewrites identical bytes).

    One task for the whole period: the simulator carries its weather state from slot to slot."""
    done = [0]

    def step(_label: str) -> None:
        done[0] += 1
        if done[0] % 8 == 0 or done[0] == periods:
            update_progress_artifact(progress_id, 100.0 * done[0] / periods)

    return simulate_to_archive(Archive.open(url, "a"), start, periods, seed, progress=step)


@task
def archive_summary(url: str) -> dict:
    return summarize(Archive.open(url))


def _publish_summary(info: dict, key: str) -> None:
    rows = [{"kind": k, "slots": info[k]["slots"], "first": info[k]["first"], "last": info[k]["last"],
             "mean coverage": info[k]["mean_coverage"], "missing slots": info[k]["missing_slots"]}
            for k in ("bt", "rain")]
    create_table_artifact(rows, key=key, description=f"archive {info['url']} on {info['area']}")


@flow(name="simulate-archive", log_prints=True)
def simulate_archive(start: str, periods: int = 96, seed: int = 0, archive_url: str | None = None,
                     area: str | None = None) -> dict:
    """Fill an archive with ``periods`` simulated slots from ``start`` (UTC).

    Deterministic for a seed: a re-run rewrites identical bytes.
    """
    cfg = load_settings(area=area, archive_url=archive_url)
    url = cfg.resolved_archive_url()
    arc = Archive.open_or_create(url, cfg.area, cfg.channels, cfg.slot_minutes)
    times = slot_range(start, periods, cfg.slot_minutes)
    arc.ensure_range(times[0], times[-1])
    progress = create_progress_artifact(0.0, description=f"simulating {periods} slots into {url}")
    stats = simulate_period(url, iso(times[0]), periods, seed, progress)
    print(f"simulated {periods} slots at {stats['slots_per_s']:.1f} slots/s")
    info = archive_summary(url)
    _publish_summary(info, "archive-summary")
    get_run_logger().info("archive %s: %s SEVIRI and %s radar slots", url, info["bt"]["slots"], info["rain"]["slots"])
    return info


@flow(name="ingest-files", log_prints=True)
def ingest_files(seviri: list[str] | None = None, radar: list[str] | None = None,
                 archive_url: str | None = None, area: str | None = None) -> dict:
    """Ingest real SEVIRI and radar files into the archive; a table lists each slot's outcome."""
    cfg = load_settings(area=area, archive_url=archive_url)
    arc = Archive.open_or_create(cfg.resolved_archive_url(), cfg.area, cfg.channels, cfg.slot_minutes)
    results = []
    if seviri:
        results += ingest_seviri(seviri, arc, cache_dir=cfg.cache_dir).results
    if radar:
        results += ingest_radar(radar, arc, cache_dir=cfg.cache_dir).results
    rows = [{"kind": r.kind, "slot": iso(r.time) if r.time is not None else "?", "status": r.status,
             "coverage": None if r.status != "written" else round(r.coverage, 4), "reason": r.reason}
            for r in results]
    create_table_artifact(rows, key="ingest-results", description="ingested slots")
    return {"written": sum(r.status == "written" for r in results),
            "failed": [r.reason for r in results if r.status == "failed"]}
