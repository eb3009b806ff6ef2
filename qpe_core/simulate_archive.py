"""Write simulated slots (the embedded default data source) into an archive cube."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from qpe_core.archive import Archive
from qpe_core.timeutil import slot_range


def simulate_to_archive(archive: Archive, start, periods: int, seed: int = 0,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Simulate ``periods`` slots from ``start`` (UTC) on the archive grid and write both the
    SEVIRI and the radar slot of each.  Returns throughput and rain statistics."""
    from qpe_core.simulator import simulate

    times = slot_range(start, periods, archive.slot_minutes)
    archive.ensure_range(times[0], times[-1])
    t0 = time.perf_counter()
    wet, peak = [], 0.0
    for sev, radar in simulate(archive.area, times[0], periods, seed, channels=archive.channels,
                               slot_minutes=archive.slot_minutes):
        archive.write_seviri(sev)
        archive.write_radar(radar)
        rain = radar["rain"].values
        wet.append(float(np.mean(rain > 0.1)))
        peak = max(peak, float(np.nanmax(rain)))
        if progress:
            progress(str(sev["time"].values)[:16])
    seconds = time.perf_counter() - t0
    return {"slots": periods, "seconds": seconds, "slots_per_s": periods / seconds,
            "wet_fraction": float(np.mean(wet)), "max_rain_mm_h": peak}
