"""Prefect flow ``train``: optional radar ingest, training, validation scores, model card.

Thin: ingest is :func:`qpe_core.ingest.ingest_radar`, training is
:func:`qpe_core.training.train.train` (resumable from ``out``), the card summary is
:mod:`qpe_core.training.report`.  The flow adds a progress artifact fed by the training
loop, a retry (training resumes from the last checkpoint) and the card as a markdown artifact.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from qpe_core.archive import Archive
from qpe_core.config import load_settings
from qpe_core.ingest import ingest_radar
from qpe_core.timeutil import iso
from qpe_core.training.checkpoint import read_card
from qpe_core.training.report import checkpoint_markdown, read_train_log, validation_scores
from qpe_core.training.train import TrainConfig, train as run_training


@task(retries=1, retry_delay_seconds=30)
def ingest_radar_task(files: list[str], archive_url: str, cache_dir: str) -> dict:
    """Radar composites -> rain(time, y, x) of the archive (idempotent: a retry rewrites the same bytes).
    A file that cannot be read is reported (table artifact, warning), not fatal: training goes on."""
    cfg = load_settings()
    arc = Archive.open_or_create(archive_url, cfg.area, cfg.channels, cfg.slot_minutes)
    report = ingest_radar(files, arc, cache_dir=cache_dir)
    rows = [{"slot": iso(r.time) if r.time is not None else "?", "status": r.status, "reason": r.reason}
            for r in report.results]
    create_table_artifact(rows, key="train-radar-ingest", description="radar slots ingested before training")
    for r in report.failed:
        get_run_logger().warning("radar ingest failed: %s", r.reason)
    return {"written": sum(r.status == "written" for r in report.results),
            "failed": [r.reason for r in report.failed]}


@task(retries=1, retry_delay_seconds=10)
def train_task(tcfg: dict) -> dict:
    """Train (resuming from ``out`` when it holds a checkpoint); progress goes to an artifact."""
    cfg = TrainConfig(**tcfg)
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"training {cfg.kind}, {cfg.max_steps} steps -> {cfg.out}")
    every = max(1, cfg.max_steps // 50)

    def step(n: int, rec: dict) -> None:
        if n % every == 0 or n == cfg.max_steps or "val_loss" in rec:
            update_progress_artifact(progress, 100.0 * n / cfg.max_steps)
            logger.info("step %d/%d loss %.4f%s, %.1f samples/s", n, cfg.max_steps, rec["loss"],
                        f" val {rec['val_loss']:.4f}" if "val_loss" in rec else "", rec["samples_per_s"])

    card = run_training(cfg, progress=step)
    update_progress_artifact(progress, 100.0)
    return card


@flow(name="train", log_prints=True)
def train(archive: str, out: str, model: str = "cascade-flow", start: str | None = None, end: str | None = None,
          radar_files: list[str] | None = None, max_steps: int = 2000, patch: int = 128, batch_size: int = 8,
          lags: list[int] | None = None, device: str = "cpu", seed: int = 0, lr: float = 2e-4,
          ema_decay: float = 0.999, backbone: dict | None = None, options: dict | None = None) -> dict:
    """Train ``model`` on the archive over ``start``..``end`` (UTC, optional) into ``out``;
    ``radar_files`` are ingested into the archive first.  ``backbone``: U-Net keyword
    arguments ({} = defaults); ``options``: further TrainConfig fields (val_every, ...).
    Publishes the model card as a markdown artifact (key ``train-card``)."""
    cfg = load_settings(lags=lags)
    if radar_files:
        got = ingest_radar_task(radar_files, archive, cfg.cache_dir)
        print(f"ingested {got['written']} radar slot(s) into {archive}; {len(got['failed'])} file(s) failed")
    tcfg = TrainConfig(archive=archive, kind=model, out=out, max_steps=max_steps, patch=patch,
                       batch_size=batch_size, lags=cfg.lags, device=device, seed=seed, start=start, end=end,
                       lr=lr, ema_decay=ema_decay, min_radar_coverage=cfg.min_radar_coverage,
                       backbone=backbone or {}, **(options or {}))
    train_task(tcfg.model_dump())
    markdown = checkpoint_markdown(out, title=f"{model} checkpoint `{out}`")
    create_markdown_artifact(markdown, key="train-card", description=f"model card of {out}")
    scores = validation_scores(read_card(out), read_train_log(out))
    get_run_logger().info("checkpoint %s: %s", out, scores)
    return {"checkpoint": out, "kind": model, **scores}
