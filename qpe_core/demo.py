"""The demo on the embedded default: simulate -> archive -> stack -> summary.

It grows into the full nowcast cycle (inference, products, Prefect) in later work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from qpe_core.archive import Archive, summarize
from qpe_core.config import load_settings
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.stack import temporal_stack
from qpe_core.timeutil import iso, slot_range

DEMO_START = "2024-06-01T00:00"


def run_demo(workdir: Path, periods: int, console, progress_bar) -> dict:
    """Simulate ``periods`` slots into ``workdir/archive.zarr`` and summarise; returns the summary."""
    cfg = load_settings()
    url = str(Path(workdir) / f"{cfg.area}.zarr")
    archive = Archive.open_or_create(url, cfg.area, cfg.channels, cfg.slot_minutes)
    with progress_bar(periods, "simulate") as step:
        stats = simulate_to_archive(archive, DEMO_START, periods, seed=0, progress=step)
    info = summarize(archive)
    last = slot_range(DEMO_START, periods, cfg.slot_minutes)[-1]
    stack = temporal_stack(archive, last, cfg.lags, gaps=cfg.stack_gaps)
    rain = archive.read_rain(last)

    table = Table(title=f"qpe demo: {cfg.area}, {periods} simulated slots")
    table.add_column("item")
    table.add_column("value")
    table.add_row("archive", url)
    table.add_row("SEVIRI slots / radar slots", f"{info['bt']['slots']} / {info['rain']['slots']}")
    table.add_row("period", f"{info['bt']['first']} .. {info['bt']['last']}")
    table.add_row("simulator speed", f"{stats['slots_per_s']:.1f} slots/s")
    table.add_row("mean wet fraction (> 0.1 mm/h)", f"{stats['wet_fraction']:.1%}")
    table.add_row("max rain rate", f"{stats['max_rain_mm_h']:.1f} mm/h")
    table.add_row(f"stack for {iso(last)}", f"{tuple(stack['bt'].shape)} (lag, channel, y, x)")
    ir108 = stack["bt"].sel(channel="IR_108").isel(lag=0).values if "IR_108" in cfg.channels else None
    if ir108 is not None:
        table.add_row("IR_108 at valid time", f"{np.nanmin(ir108):.1f} .. {np.nanmax(ir108):.1f} K")
    table.add_row("rain at valid time", f"wet {np.mean(rain > 0.1):.1%}, max {np.nanmax(rain):.1f} mm/h")
    console.print(table)
    return {"archive": url, "summary": info, "simulation": stats}
