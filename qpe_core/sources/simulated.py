"""The simulated source: no files; slots come from :mod:`qpe_core.simulator`.

:meth:`SimulatedSource.fetch` returns ``[]`` (nothing to ingest); a nowcast flow
calls :func:`simulate_slot` (or the method of the same name) to get the slot's
``(seviri, radar)`` Datasets and writes them to its archive.

Determinism and cost: the slot at ``t`` is the state at ``t`` of one simulation
per UTC day, seeded by ``(seed, day)`` (:func:`day_seed`) and started
``SPINUP_SLOTS`` slots before 00:00 of that day.  Any slot can thus be produced
alone, in any order, always with the same result, and consecutive slots of a day
share the same evolving weather (only the sensor noise draws differ from a
sequential run).  The price is ``SPINUP_SLOTS + (slots since 00:00)`` dynamics
steps per call: about 110 steps for the last slot of a day (a few seconds on the
France grid).  Weather is not continuous across midnight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.grids import DEFAULT_AREA, get_spec, lonlats
from qpe_core.sources.base import GranuleRef, GranuleSource
from qpe_core.timeutil import check_on_grid

#: Slots simulated before 00:00 UTC so that clouds and anvils are developed.
SPINUP_SLOTS = 16


def day_seed(seed: int, slot: pd.Timestamp) -> int:
    """Seed of the simulation of ``slot``'s UTC day, from the user ``seed``."""
    day = int((slot.normalize() - pd.Timestamp("1970-01-01")) // pd.Timedelta(days=1))
    return int(np.random.SeedSequence([int(seed), day]).generate_state(1)[0])


def simulate_slot(area: str, slot, seed: int, channels: Sequence[str] = DEFAULT_CHANNELS,
                  slot_minutes: int = 15) -> tuple[xr.Dataset, xr.Dataset]:
    """``(seviri_slot, radar_slot)`` of the slot starting at ``slot`` (UTC, on the
    ``slot_minutes`` grid) on the named grid ``area``: brightness temperatures (K)
    and rain rate (mm/h), deterministic for ``(area, slot, seed, channels)``."""
    from qpe_core.simulator import SOURCE, Simulator
    from qpe_core.slots import radar_slot, seviri_slot

    slot = check_on_grid(slot, slot_minutes, "slot")
    spec = get_spec(area)
    lon, lat = lonlats(area)
    res_x, res_y = spec.resolution_m
    since_midnight = int((slot - slot.normalize()) // pd.Timedelta(minutes=slot_minutes))
    sim = Simulator((spec.height, spec.width), 0.5 * (res_x + res_y) / 1000.0, day_seed(seed, slot),
                    lon=lon, lat=lat, channels=channels, slot_minutes=slot_minutes,
                    spinup_slots=SPINUP_SLOTS + since_midnight)
    bt, rain, _ = sim.step(slot)
    attrs = {"source": SOURCE, "seed": int(seed), "day_seed": day_seed(seed, slot)}
    return seviri_slot(bt, sim.channels, slot, area, **attrs), radar_slot(rain, slot, area, **attrs)


class SimulatedSource(GranuleSource):
    """Simulated slots on ``area`` for ``seed`` (no granule files)."""

    name = "simulated"

    def __init__(self, area: str = DEFAULT_AREA, seed: int = 0, channels: Sequence[str] = DEFAULT_CHANNELS,
                 slot_minutes: int = 15):
        get_spec(area)  # unknown areas fail here
        self.area, self.seed, self.channels = area, int(seed), list(channels)
        self.slot_minutes = int(slot_minutes)

    def __repr__(self) -> str:
        return f"<SimulatedSource {self.area} seed={self.seed}>"

    def available(self, slot) -> list[GranuleRef]:
        """Every slot is available: one virtual granule, without files."""
        slot = self.check_slot(slot)
        pid = f"sim-{self.area}-{slot.strftime('%Y%m%d%H%M')}-seed{self.seed}"
        return [GranuleRef(self.name, f"simulated:{self.area}", pid, slot)]

    def fetch(self, slot, dest_cache=None) -> list:
        """No files: always ``[]`` (use :meth:`simulate_slot`)."""
        self.check_slot(slot)
        return []

    def simulate_slot(self, slot) -> tuple[xr.Dataset, xr.Dataset]:
        """``(seviri, radar)`` Datasets of ``slot`` (see :func:`simulate_slot`)."""
        return simulate_slot(self.area, slot, self.seed, self.channels, self.slot_minutes)
