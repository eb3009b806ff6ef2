"""Prefect flow ``evaluate``: score checkpoints (and baselines such as the NWC SAF CRR) against the
archive's radar and publish the report.

Thin: the work is :func:`qpe_core.evaluation.evaluate` and :func:`qpe_core.report.write_report`.  The
flow adds a progress artifact, the comparison table as a table artifact (key ``evaluation-table``),
the expectation checks and each figure as markdown artifacts (``evaluation-expectations``,
``evaluation-<figure>``, PNGs inlined as base64 as the nowcast quick-look is) and returns the paths of
``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import base64
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from qpe_core.evaluation import evaluate as run_evaluate
from qpe_core.report import FIGURES, table_rows, write_report
from qpe_core.report.summary import expectation_lines

KEY = "evaluation"


def _key(name: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes."""
    return f"{KEY}-" + "".join(c if c.isalnum() else "-" for c in name.lower())


@task(retries=1, retry_delay_seconds=10)
def evaluate_task(archive: str, checkpoints: list[str], start: str | None, end: str | None, members: int,
                  every: int, max_cases: int | None, steps: dict | None, seed: int, baselines: dict | None,
                  other_grid: bool, window: list[int] | None, device: str, report: str) -> str:
    """Run the evaluation and write the report; returns the report directory."""
    progress = create_progress_artifact(0.0, description=f"evaluating {len(checkpoints)} checkpoint(s) "
                                                         f"and {len(baselines or {})} baseline(s) on {archive}")
    logger = get_run_logger()

    def step(done: int, total: int, label: str) -> None:
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
        if label:
            logger.info("case %d/%d %s", done, total, label)

    metrics = run_evaluate(archive, checkpoints, start, end, members, every, max_cases, steps, seed,
                           progress=step, baselines=baselines, other_grid=other_grid, window=window, device=device)
    update_progress_artifact(progress, 100.0)
    return str(write_report(metrics, report))


def publish(report_dir: str | Path) -> dict:
    """Table, expectation and figure artifacts of a written report; returns what was published."""
    import json

    out = Path(report_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = table_rows(metrics)
    create_table_artifact(rows, key=f"{KEY}-table",
                          description=f"evaluation on {metrics.get('archive')}: {metrics['cases']} cases "
                                      f"{metrics['period'][0]} .. {metrics['period'][1]}")
    create_markdown_artifact("### Expectations\n\n" + "\n".join(expectation_lines(metrics["expectations"])),
                             key=f"{KEY}-expectations", description="expectation checks")
    figures = {}
    for name, caption in FIGURES.items():
        png = out / "figures" / f"{name}.png"
        if not png.is_file():
            continue
        create_markdown_artifact(
            f"### {caption}\n\n![{name}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})\n\n"
            f"`{png}`", key=_key(name), description=caption)
        figures[name] = str(png)
    return {"rows": len(rows), "figures": figures, "expectations": metrics["expectations"],
            "models": list(metrics["models"]), "cases": metrics["cases"]}


@flow(name="evaluate", log_prints=True)
def evaluate(archive: str, checkpoints: list[str], report: str = "data/report", start: str | None = None,
             end: str | None = None, members: int = 8, every: int = 1, max_cases: int | None = None,
             steps: dict | None = None, seed: int = 0, baselines: dict | None = None, other_grid: bool = False,
             window: list[int] | None = None, device: str = "cpu") -> dict:
    """Score ``checkpoints`` and ``baselines`` (e.g. ``{"crr": "/data/crr"}``) against the archive's radar
    over ``start``..``end`` (UTC) and publish the report (table, expectations, figures) as artifacts.
    ``steps``: sampler steps per model kind; ``other_grid``: allow checkpoints trained on another grid;
    ``window``: score only rows y0:y1, cols x0:x1 given as [y0, y1, x0, x1]."""
    out = evaluate_task(archive, [str(c) for c in checkpoints], start, end, members, every, max_cases, steps, seed,
                        baselines, other_grid, window, device, report)
    published = publish(out)
    for check in published["expectations"]:
        get_run_logger().info("%s", check["text"])
    return {"metrics": str(Path(out) / "metrics.json"), "report": str(Path(out) / "report.md"),
            "figures": published["figures"], "models": published["models"], "cases": published["cases"],
            "expectations": {c["check"] + (f":{c['model']}" if c["model"] else ""): c["held"]
                             for c in published["expectations"]}}
