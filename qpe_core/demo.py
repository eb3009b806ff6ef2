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
    table.add_row("status", f"{out['status']} {out['reason']}".strip())
    table.add_row("model", f"residual-flow (shipped demo checkpoint), {out['members']} members")
    table.add_row("inputs present / missing", f"{out['inputs_present']} / {out['missing_inputs'] or 0}")
    table.add_row("wall time per stage (s)", out["seconds"])
    table.add_row("rain area (mean > 0.1 mm/h)", f"{out['rain_area_fraction']:.1%}")
    table.add_row("max rate in the ensemble", f"{out['max_rate_mm_h']:.1f} mm/h")
    for name, path in out["products"].items():
        table.add_row(name, str(path))
    table.add_row("Prefect", f"PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start  # runs, "
                             "tables and quick-look in the UI")
    console.print(table)
    return out
