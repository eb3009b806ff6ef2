"""Evaluate checkpoints over a period of the archive against its radar slots.

For every valid time with radar coverage and a complete input stack (every ``every``-th
one), each checkpoint produces an ensemble; :class:`~qpe_core.verification.Scorer`
accumulates the scores.  Writes ``metrics.json`` and ``report.md`` under a report dir.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qpe_core.archive import Archive
from qpe_core.errors import QpeError
from qpe_core.stack import temporal_stack
from qpe_core.timeutil import iso
from qpe_core.training.checkpoint import check_card, load_checkpoint
from qpe_core.training.dataset import valid_times
from qpe_core.training.inference import ensemble
from qpe_core.verification import Scorer

TABLE = [("MAE", "MAE mm/h", "{:.3f}"), ("CSI_1", "CSI 1", "{:.3f}"), ("FSS_1_1px", "FSS 3 km", "{:.3f}"),
         ("FSS_1_8px", "FSS 24 km", "{:.3f}"), ("FSS_1_32px", "FSS 96 km", "{:.3f}"),
         ("FSS_member_1_8px", "FSS 24 km (1 member)", "{:.3f}"),
         ("wet_fraction", "wet frac", "{:.3f}"), ("q99", "q99 mm/h", "{:.2f}"), ("CRPS", "CRPS", "{:.3f}"),
         ("spread_skill", "spread/skill", "{:.2f}"), ("seconds_per_case", "s/case", "{:.1f}")]


def evaluate(archive: Archive, checkpoints: Sequence[str | Path], start=None, end=None, members: int = 8,
             every: int = 1, max_cases: int | None = None, steps: dict | None = None, seed: int = 0,
             min_radar_coverage: float = 0.5, progress: Callable[[str], None] | None = None) -> dict:
    """Scores per checkpoint (keyed by its model kind or directory name) over the period (UTC)."""
    models = {Path(c).name: load_checkpoint(c) for c in checkpoints}
    lags = next(iter(models.values())).card["lags"]
    for m in models.values():
        check_card(m.card, archive.area, archive.channels, None)
    times = valid_times(archive, lags, min_radar_coverage, start, end)[::every]
    if max_cases:
        times = times[np.linspace(0, len(times) - 1, min(max_cases, len(times))).astype(int)]
    if len(times) == 0:
        raise QpeError(f"no valid time with radar and a complete stack in {archive.url} between {start} and {end}")
    results = {}
    for name, model in models.items():
        scorer, seconds = Scorer(), 0.0
        n = 1 if model.card["kind"] == "unet" else members
        st_steps = (steps or {}).get(model.card["kind"])
        for k, t in enumerate(times):
            st = temporal_stack(archive, t, model.card["lags"], model.card["channels"])
            t0 = time.perf_counter()
            rain = ensemble(model, st["bt"].values, n, st_steps, seed + k)
            seconds += time.perf_counter() - t0
            scorer.update(rain, archive.read_rain(t))
            if progress:
                progress(f"{name} {iso(t)}")
        scores = scorer.compute()
        scores.update(kind=model.card["kind"], cases=len(times), seconds_per_case=seconds / len(times),
                      evals_per_member=model.objective.evals_per_member(st_steps),
                      parameters=model.card["parameters"], train_steps=model.card["steps"])
        results[name] = scores
    return {"archive": archive.url, "period": [iso(times.min()), iso(times.max())], "cases": len(times),
            "members": members, "models": results}


def write_report(metrics: dict, report_dir: str | Path) -> Path:
    """``metrics.json`` and a markdown table ``report.md`` under ``report_dir``."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = [f"# Evaluation on {metrics['archive']}", "",
             f"Period {metrics['period'][0]} .. {metrics['period'][1]}, {metrics['cases']} cases, "
             f"{metrics['members']} members for generative models; thresholds in mm/h; "
             "deterministic scores on the ensemble mean.", "",
             "| model | " + " | ".join(h for _, h, _ in TABLE) + " |", "|---" * (len(TABLE) + 1) + "|"]
    truth = None
    for name, s in metrics["models"].items():
        truth = s
        lines.append(f"| {name} | " + " | ".join(fmt.format(s[k]) if k in s else "-" for k, _, fmt in TABLE) + " |")
    if truth:
        lines.append("| radar (truth) | " + " | ".join(
            f"{truth['wet_fraction_truth']:.3f}" if k == "wet_fraction" else
            f"{truth['q99_truth']:.2f}" if k == "q99" else "" for k, _, _ in TABLE) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out
