"""Prefect flow ``live-verification``: score past products against the radar that arrived since,
and show the rolling scores (last 24 h, last 7 days) in the UI.

Thin: the work is in :mod:`qpe_core.live_verification`; the flow adds a retry, the table artifact
``live-verification`` and the per-slot CRPS / CSI plot (markdown artifact ``live-verification-plot``).
"""

from __future__ import annotations

import base64

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from qpe_core.archive import Archive
from qpe_core.config import load_settings
from qpe_core.errors import ArchiveError
from qpe_core.live_verification import render_series_png, update_live_scores, verification_events
from qpe_core.products.cube import ProductCube

COLUMNS = {"slots": "slots", "MAE": "MAE", "CSI_1": "CSI 1", "FSS_1_24km": "FSS 24 km", "CRPS": "CRPS",
           "wet_fraction_ratio": "wet fraction ratio", "spread_skill": "spread/skill"}
LABELS = {"24h": "24 h", "7d": "7 d"}


def cube_url(products_url: str, area: str) -> str:
    """The product cube: ``products_url`` itself when it names a ``.zarr``, else ``<products_url>/<area>.zarr``."""
    url = products_url.rstrip("/")
    return url if url.endswith(".zarr") else f"{url}/{area}.zarr"


@task(retries=1, retry_delay_seconds=30, timeout_seconds=1800)
def score_task(products_url: str, archive_url: str, lookback: str, now: str | None) -> dict:
    try:
        archive = Archive.open(archive_url)
        products = ProductCube.open(cube_url(products_url, archive.area))
    except ArchiveError as exc:  # no archive or product cube yet: nothing to verify, not a failure
        return {"now": now or "now", "scored": [], "rescored": [], "pending": [], "series": [],
                "windows": {name: {"slots": 0} for name in LABELS}, "reason": str(exc)}
    return update_live_scores(products, archive, now=now, lookback=lookback)


def table_rows(result: dict) -> list[dict]:
    rows = []
    for name, agg in result["windows"].items():
        row = {"window": LABELS.get(name, name)}
        for key, col in COLUMNS.items():
            v = agg.get(key)
            row[col] = round(v, 4) if isinstance(v, float) else v
        rows.append(row)
    return rows


def _publish(result: dict) -> None:
    note = (f"scores at {result['now']}: {len(result['scored'])} slots scored, {len(result['rescored'])} "
            f"re-scored, {len(result['pending'])} waiting for radar")
    create_table_artifact(table_rows(result), key="live-verification", description=note)
    series = result["series"]
    text = f"### Live verification, per slot ({len(series)} slots, last 7 days)\n\n{note}\n\n"
    if series:
        png = render_series_png(series, title=f"per-slot CRPS and CSI 1 mm/h up to {result['now']}")
        text += f"![per-slot scores](data:image/png;base64,{base64.b64encode(png).decode()})\n"
    else:
        text += "No scored slot yet.\n"
    create_markdown_artifact(text, key="live-verification-plot", description="per-slot CRPS / CSI, last 7 days")


@flow(name="live-verification", log_prints=True)
def live_verification(products_url: str | None = None, archive_url: str | None = None, lookback: str = "7D",
                      now: str | None = None) -> dict:
    """Score every product slot of the last ``lookback`` whose radar has arrived (once; again when the
    radar changes), then publish the rolling scores of the last 24 h and 7 days.  ``now``: UTC time
    the windows end at (default: the current time)."""
    cfg = load_settings(archive_url=archive_url, products_url=products_url)
    log = get_run_logger()
    result = score_task(cfg.products_url, cfg.resolved_archive_url(), lookback, now)
    if result.get("reason"):
        log.warning("nothing to verify: %s", result["reason"])
    _publish(result)
    for spec in verification_events(result, cfg.area, cfg.alert_min_csi, cfg.alert_max_crps, cfg.alert_min_slots):
        emit_event(**spec)  # qpe.verification.scored, and .degraded below the configured skill (alerts)
    for name, agg in result["windows"].items():
        log.info("%s: %s slots, CSI 1 %s, CRPS %s", name, agg.get("slots"), agg.get("CSI_1"), agg.get("CRPS"))
    return result
