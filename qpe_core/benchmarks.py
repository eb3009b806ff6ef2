"""Throughput benchmarks behind ``qpe bench`` (figures printed, never asserted in tests)."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}


def bench_simulator(n_slots: int = 1000) -> dict:
    """Simulator throughput on 256 x 256 slots (target: 1,000 slots in < 60 s on 2 cores)."""
    from qpe_core.simulator.bench import simulator_throughput

    return simulator_throughput(n_slots=n_slots, shape=(256, 256), seed=0)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_ingest(area: str = "france-3km") -> dict:
    """Read + resample time per slot for the shared real files, without and with the LUT cache."""
    from qpe_core.config import SEVIRI_IR_CHANNELS
    from qpe_core.readers.odim import read_odim
    from qpe_core.readers.satip import read_satip
    from qpe_core.readers.seviri import read_seviri

    if not SHARED.is_dir():
        return {"skipped": f"no shared sample data at {SHARED}"}
    hrit = sorted((SHARED / "seviri" / "hrit-20100119").glob("H-*"))
    satip = sorted((SHARED / "seviri" / "satip-rss-20231220").glob("*.zarr.zip"))[0]
    odim = sorted((SHARED / "radar" / "opera-odyssey-20180824").glob("*.hdf"))[0]
    hrit_ch = [c for c in SEVIRI_IR_CHANNELS if c in ("IR_039", "IR_108", "IR_134")]
    sat_ch = ["WV_062", "WV_073", "IR_087", "IR_097", "IR_108", "IR_120", "IR_134"]
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, fn in {
            "hrit_3ch": lambda: read_seviri(hrit, area=area, channels=hrit_ch, cache_dir=cache),
            "satip_7ch": lambda: read_satip(satip, area=area, channels=sat_ch, cache_dir=cache),
            "opera_odim": lambda: read_odim(odim, area=area, cache_dir=cache),
        }.items():
            first = _timed(fn)
            cached = min(_timed(fn) for _ in range(2))
            out[name] = {"uncached_s": round(first, 3), "cached_s": round(cached, 3)}
    return out


def bench_archive(area: str = "france-3km", n_slots: int = 24) -> dict:
    """Simulated slots per second on a named grid, and archive write time per slot (7 channels + radar)."""
    from qpe_core.archive import Archive
    from qpe_core.config import DEFAULT_CHANNELS
    from qpe_core.simulator import simulate

    with tempfile.TemporaryDirectory() as tmp:
        arc = Archive.create(f"{tmp}/a.zarr", area, DEFAULT_CHANNELS)
        times = pd.date_range("2024-06-01", periods=n_slots, freq="15min")
        arc.ensure_range(times[0], times[-1])
        t0 = time.perf_counter()
        slots = list(simulate(area, times[0], n_slots, seed=0))
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        for sev, radar in slots:
            arc.write_seviri(sev)
            arc.write_radar(radar)
        t_write = time.perf_counter() - t0
    return {"area": area, "slots": n_slots, "simulate_s_per_slot": round(t_sim / n_slots, 4),
            "simulate_note": "includes the 16-slot spin-up", "write_s_per_slot": round(t_write / n_slots, 4)}


def run_benchmarks(which: list[str], n_slots: int = 1000, members: int = 16, checkpoint: str | None = None,
                   archive: str | None = None, days: float = 7.0, load_dir: str | None = None,
                   train_steps: int = 100) -> dict:
    result = {"machine": _machine()}
    if "simulator" in which:
        result["simulator"] = bench_simulator(n_slots)
    if "archive" in which:
        result["archive"] = bench_archive()
    if "ingest" in which:
        result["ingest"] = bench_ingest()
    if "models" in which:
        from qpe_core.training.bench_models import bench_models

        result["models"] = bench_models(members=members, checkpoint=checkpoint, archive=archive)
    if "train" in which:
        from qpe_core.training.bench_train import bench_train

        result["train"] = bench_train(archive=archive, steps=train_steps)
    if "load" in which:
        from qpe_core.load_bench import run_load

        result["load"] = run_load(days=days, checkpoint=checkpoint, workdir=load_dir)
    return result
