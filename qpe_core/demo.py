"""The demo on the embedded defaults: one full nowcast cycle as a Prefect flow run.

Local Prefect (ephemeral server, SQLite under ``WORKDIR/prefect``), the simulated source,
local disk, and the checkpoint shipped in :mod:`qpe_core.assets` (trained by this project;
its card lists the commands that reproduce it).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

DEMO_SLOT = "2024-06-01T12:00Z"


def run_demo(workdir: Path, members: int, console, slot: str = DEMO_SLOT) -> dict:
    """Run the nowcast flow for ``slot`` into ``workdir`` and print where everything went."""
    workdir = Path(workdir).resolve()
    (workdir / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect does not create parents
    os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # slow laptops, busy CI
    from flows.nowcast import nowcast
    from qpe_core.assets import DEMO_CHECKPOINT

    out = nowcast(valid_time=slot, checkpoint=str(DEMO_CHECKPOINT), source="simulated", members=members,
                  seed=0, max_age_minutes=10**9, archive_url=str(workdir / "archive.zarr"),
                  products_url=str(workdir / "products"))
    table = Table(title=f"qpe demo: nowcast cycle for {out['slot']}")
    table.add_column("item")
    table.add_column("value")
    status = f"{out['status']} {out['reason']}".strip()
    if out["status"] == "skipped":  # idempotent by slot: an earlier demo's products (maybe another checkpoint)
        status += f" (an earlier run's; `make clean` removes them to run the cycle again: {workdir})"
    table.add_row("status", status)
    from qpe_core.training.checkpoint import read_card

    kind = read_card(DEMO_CHECKPOINT)["kind"]
    table.add_row("model", f"{kind} (shipped demo checkpoint), {out['members']} members")
    table.add_row("inputs present / missing", f"{out['inputs_present']} / {out['missing_inputs'] or 0}")
    table.add_row("wall time per stage (s)", out["seconds"])
    table.add_row("rain area (mean > 0.1 mm/h)", f"{out['rain_area_fraction']:.1%}")
    table.add_row("max rate in the ensemble", f"{out['max_rate_mm_h']:.1f} mm/h")
    for name, path in out["products"].items():
        table.add_row(name, str(path))
    table.add_row("Prefect", f"PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start  # runs, "
                             "tables and quick-look in the UI")
    console.print(table)
    if out["status"] in ("done", "skipped"):
        console.print(truth_table(workdir / "archive.zarr", workdir / "products" / "france-3km.zarr", out["slot"]))
    return out


def compare_with_truth(archive_url, cube_url, slot) -> dict:
    """Headline numbers of the slot's ensemble (product cube) against its radar truth (archive; the
    simulated source writes both): :func:`qpe_core.report.summarize` of a one-case evaluation plus
    the maxima (mm/h)."""
    import numpy as np

    from qpe_core.archive import Archive
    from qpe_core.evaluation import score_ensembles
    from qpe_core.products.cube import ProductCube

    truth = np.asarray(Archive.open(str(archive_url)).read_rain(slot), dtype="float32")
    rain = ProductCube.open(str(cube_url)).read_slot(slot)["rain"].values.astype("float32")
    metrics = score_ensembles(truth[None], {"ensemble": rain[None]}, pixel_km=3.0, map_cases=0)
    s = metrics["models"]["ensemble"]["summary"]
    s["max"], s["max_truth"] = float(np.nanmax(rain)), float(np.nanmax(truth))
    return s


def truth_table(archive_url, cube_url, slot) -> Table:
    """The slot's truth beside the ensemble: wet fraction, q99, maximum, CSI and FSS at 24 km."""
    s = compare_with_truth(archive_url, cube_url, slot)
    table = Table(title=f"ensemble vs the simulated truth at {slot} (radar slot of the same simulation)")
    for col in ("", "ensemble", "truth"):
        table.add_column(col)
    table.add_row("wet fraction (>= 0.1 mm/h, all members)", f"{s['wet_fraction']:.3f}", f"{s['wet_fraction_truth']:.3f}")
    table.add_row("q99 (mm/h, all members)", f"{s['q99']:.2f}", f"{s['q99_truth']:.2f}")
    table.add_row("maximum (mm/h, any member)", f"{s['max']:.1f}", f"{s['max_truth']:.1f}")
    table.add_row("CSI at 1 mm/h (ensemble mean)", f"{s['CSI_1']:.3f}", "1")
    table.add_row("FSS at 1 mm/h, 24 km (ensemble mean)", f"{s['FSS_1_24km']:.3f}", "1")
    table.add_row("CRPS (mm/h)", f"{s['CRPS']:.3f}", "0")
    return table
