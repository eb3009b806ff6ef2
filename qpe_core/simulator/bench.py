"""Throughput benchmark of the simulator (target: 1,000 slots of 256 x 256 with the 7
default channels in under 60 s on 2 cores, i.e. < 60 ms per slot).

    python -m qpe_core.simulator.bench [n_slots]
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import pandas as pd

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.simulator import Simulator


def simulator_throughput(n_slots: int = 1000, shape: tuple[int, int] = (256, 256), seed: int = 0,
                         pixel_km: float = 3.0, channels: Sequence[str] = DEFAULT_CHANNELS,
                         workers: int | None = None) -> dict:
    """Time ``n_slots`` consecutive ``Simulator.step`` calls (UTC 15-min slots from
    2024-06-01T00:00; construction, spin-up and the first slot are not timed).

    Returns JSON-ready figures: ``slots_per_s``, ``seconds`` (total), ``ms_per_slot``,
    plus the setup (``n_slots``, ``shape``, ``channels``, ``workers``, ``cpus``)."""
    if n_slots < 1:
        raise ValueError("n_slots must be >= 1")
    sim = Simulator(shape, pixel_km, seed, channels=channels, workers=workers)
    start = pd.Timestamp("2024-06-01T00:00")
    step = pd.Timedelta(minutes=sim.slot_minutes)
    times = [start + i * step for i in range(n_slots + 1)]
    sim.step(times[0])
    tic = time.perf_counter()
    for t in times[1:]:
        sim.step(t)
    seconds = time.perf_counter() - tic
    return {
        "n_slots": int(n_slots),
        "shape": [int(shape[0]), int(shape[1])],
        "channels": len(sim.channels),
        "workers": int(sim.dynamics.workers),
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 3),
        "slots_per_s": round(n_slots / seconds, 2),
        "ms_per_slot": round(1000.0 * seconds / n_slots, 2),
    }


if __name__ == "__main__":
    print(json.dumps(simulator_throughput(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=2))
