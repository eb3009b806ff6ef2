"""``qpe study``: the equal-budget comparison of every model kind (:mod:`qpe_core.study`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# every profile of qpe_core.study_profiles.PROFILES (test_study_help_lists_every_profile); written out
# so that `qpe` starts without importing the profiles (and pandas)
PROFILE_HELP = ("cpu (2 cores, <= 75 min) | gpu (one H100/H200, <= 10 min) | cpu-early | cpu-4slot | cpu-season | "
                "cpu-wide | cpu-confirm | cpu-confirm-recal | cpu-recal | cpu-guidance | cpu-lags | cpu-temporal | cpu-lags-mission | cpu-lags-fresh | cpu-ablation | gpu-lags | tiny")


def study_cmd(
    profile: Annotated[str, typer.Option(help=PROFILE_HELP)] = "cpu",
    out_dir: Annotated[Path, typer.Option("--out", help="study folder (re-runs resume)")] = Path("data/study"),
    archive: Annotated[Optional[str], typer.Option(help="use this archive instead of simulating one")] = None,
    models: Annotated[Optional[str], typer.Option(help="comma-separated model names of the profile to keep")] = None,
    steps: Annotated[Optional[int], typer.Option(help="override the profile's optimiser steps")] = None,
    device: Annotated[Optional[str], typer.Option(help="override the profile's device (cpu | cuda)")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(
        help="one learning-rate schedule for every model (constant | cosine), instead of the profile's")] = None,
):
    """Train every kind with one equal budget, score them on a held-out period, write the report."""
    from qpe_core.cli import err, out  # the CLI's consoles (this module is registered by qpe_core.cli)
    from qpe_core.study import customise, run_study

    keep = [m.strip() for m in models.split(",")] if models else None
    prof = customise(profile, keep, steps=steps, device=device, lr_schedule=lr_schedule)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[label]}"), console=err)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int, label: str) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, label="")
        bar.update(tasks[stage], completed=done, total=total, label=label)

    with bar:
        metrics = run_study(prof, out_dir, archive, progress)
    text = (out_dir / "report" / "report.md").read_text()
    out.print(text.split("\n## Figures")[0], markup=False)
    out.print(text[text.index("## Mission checks"):], markup=False)
    out.print(f"report: {out_dir / 'report' / 'report.md'}; checks "
              + ", ".join(f"{n} {m['held']}/{m['total']}" for n, m in metrics["mission"].items()), markup=False)


def recalibrate_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a cascade-flow checkpoint directory")],
    archive: Annotated[str, typer.Option(help="archive cube with radar over the period")],
    start: Annotated[str, typer.Option(help="first valid time of the period (UTC, ISO 8601)")],
    end: Annotated[str, typer.Option(help="last valid time of the period (UTC, ISO 8601)")],
    out_dir: Annotated[Path, typer.Option("--out", help="new checkpoint directory (never the input)")],
    patches: Annotated[int, typer.Option(help="random patches of the period to fit on")] = 256,
    seed: Annotated[int, typer.Option(help="patch and draw seed")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    only: Annotated[str, typer.Option(help="all | dry (only the certain-dry bins' wet shift)")] = "all",
):
    """Refit a cascade's clip and spread calibration on another period's radar, without retraining."""
    from qpe_core.cli import out
    from qpe_core.training.recalibrate import recalibrate

    entry = recalibrate(checkpoint, archive, start, end, out_dir, patches=patches, seed=seed, device=device,
                        only=only)
    gains = f"; gains {entry['summary']['gain'][-7:]}" if entry["summary"] else ""
    out.print(f"{out_dir}: calibration refitted on {entry['slots']} slots {entry['start']} .. {entry['end']} "
              f"({patches} patches){gains}", highlight=False)
