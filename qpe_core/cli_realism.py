"""``qpe realism``: the embedded simulator against the real samples of ``shared/data``
(:mod:`qpe_core.realism`): rain (mm/h, km/h) and IR (K) headline numbers per source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

RAIN_COLUMNS = {"wet_fraction": ("wet frac", "{:.2%}"), "wet_median_mm_h": ("median wet mm/h", "{:.2f}"),
                "wet_q99_mm_h": ("q99 wet mm/h", "{:.1f}"), "slope": ("PSD slope", "{:.2f}"),
                "persistence": ("persist. phi 15 min", "{:.2f}"), "advection_km_h": ("advection km/h", "{:.1f}")}
IR_COLUMNS = {"ir108_mean_k": ("IR_108 mean K", "{:.1f}"), "ir108_std_k": ("IR_108 std K", "{:.1f}"),
              "ir108_ir120_median_k": ("108-120 median K", "{:.2f}"),
              "wv062_ir108_median_k": ("062-108 median K", "{:.1f}"),
              "change_15min_std_k": ("15-min dIR_108 std K", "{:.2f}")}


def headline(report: Mapping) -> dict:
    """The headline numbers of a realism report: ``{"rain": {source: {...}}, "ir": {source: {...}}}``;
    None where a source cannot have the number (e.g. one HRIT slot: no 15-minute change)."""
    rain, ir = {}, {}
    for name, s in report["rain"].items():
        rain[name] = {"skipped": s["skipped"]} if "skipped" in s else {
            "wet_fraction": s["wet_fraction"], "wet_median_mm_h": s["wet_median_mm_h"],
            "wet_q99_mm_h": s["wet_q99_mm_h"], "slope": s["slope"], "persistence": s["persistence"]["phi"],
            "advection_km_h": s["advection"]["speed_km_h"]}
    for name, s in report["ir"].items():
        if "skipped" in s:
            ir[name] = {"skipped": s["skipped"]}
            continue
        ch, d = s["channels"].get("IR_108", {}), s["differences"]
        ir[name] = {"ir108_mean_k": ch.get("mean"), "ir108_std_k": ch.get("std"),
                    "ir108_ir120_median_k": d.get("IR_108-IR_120", {}).get("q50"),
                    "wv062_ir108_median_k": d.get("WV_062-IR_108", {}).get("q50"),
                    "change_15min_std_k": s["change_15min_ir108"]["std_k"]}
    return {"rain": rain, "ir": ir}


def _table(title: str, rows: Mapping, columns: Mapping):
    from rich.table import Table

    table = Table("source", *(label for label, _ in columns.values()), title=title, title_justify="left")
    for name, row in rows.items():
        if "skipped" in row:
            table.add_row(name, f"skipped ({row['skipped']})", *[""] * (len(columns) - 1))
        else:
            table.add_row(name, *("-" if row[k] is None else fmt.format(row[k]) for k, (_, fmt) in columns.items()))
    return table


def realism_cmd(
    shared: Annotated[Path, typer.Option("--shared", help="real sample data folder")] = Path("../shared/data"),
    out_dir: Annotated[Path, typer.Option("--out", help="output folder (realism.json, PNG figures)")]
    = Path("data/realism"),
    periods: Annotated[int, typer.Option(help="simulated 15-minute slots (96 = one day)", min=2)] = 96,
    seed: Annotated[int, typer.Option(help="simulator seed")] = 5,
    start: Annotated[str | None, typer.Option(help="first simulated slot (UTC; default 2024-08-24T00:00, the "
                                                   "OPERA sample's season); 2024-12-20T06:00 puts the IR in the "
                                                   "winter SEVIRI samples' season")] = None,
):
    """Compare the embedded simulator with the real radar and SEVIRI samples (statistics and figures)."""
    from qpe_core.cli import out  # the CLI's console (this module is registered by qpe_core.cli)
    from qpe_core.realism import SIM_START, realism_report

    report = realism_report(shared, out_dir, periods=periods, seed=seed, start=start or SIM_START)
    head = headline(report)
    sim = report["simulator"]
    out.print(_table(f"Rain (france-3km, valid pixels; simulator: {sim['periods']} slots from {sim['start']} UTC, "
                     f"seed {sim['seed']})", head["rain"], RAIN_COLUMNS))
    out.print(_table("IR brightness temperatures", head["ir"], IR_COLUMNS))
    out.print(f"report: {out_dir / 'realism.json'}; figures: " + ", ".join(report["figures"]), markup=False)
