"""Evaluation reports: ``metrics.json``, ``report.md`` and PNG figures from a metrics dict.

* :mod:`qpe_core.report.summary` - headline numbers, expectation checks, tables, markdown;
* :mod:`qpe_core.report.figures` - the figures (matplotlib, Agg).

The metrics dict comes from :func:`qpe_core.evaluation.score_ensembles` or
:func:`qpe_core.evaluation.evaluate`.  Its ``"maps"`` entry (numpy fields of a few cases for the map
panel) is not JSON: :func:`write_report` stores it as ``maps.npz`` beside ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qpe_core.report.figures import FIGURES, write_figures
from qpe_core.report.summary import expectations, report_markdown, summarize, table_rows
from qpe_core.verification.suite import json_safe

FIGURE_DIR = "figures"


def write_report(metrics: dict, report_dir: str | Path, figures: bool = True) -> Path:
    """Write ``metrics.json``, ``maps.npz`` (map cases), ``figures/*.png`` and ``report.md`` under
    ``report_dir``; returns the directory."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = metrics.get("maps")
    plain = {k: v for k, v in metrics.items() if k != "maps"}
    (out / "metrics.json").write_text(json.dumps(json_safe(plain), indent=1, allow_nan=False))
    if maps and maps.get("truth") is not None:
        np.savez_compressed(out / "maps.npz", times=np.array(maps["times"]), truth=maps["truth"],
                            **{f"model_{n}": v for n, v in maps["models"].items()})
    refs = {}
    if figures:
        paths = write_figures(metrics, out / FIGURE_DIR)
        refs = {name: (f"{FIGURE_DIR}/{p.name}", FIGURES[name]) for name, p in paths.items()}
    (out / "report.md").write_text(report_markdown(metrics, refs))
    return out


__all__ = ["FIGURES", "expectations", "report_markdown", "summarize", "table_rows", "write_figures",
           "write_report"]
