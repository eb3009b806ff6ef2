"""Load check behind ``qpe bench --what load``: a simulated backfill of several days into one
archive cube by parallel writer processes, with a nowcast cycle writing to the same archive
while the backfill runs.

* **Backfill.** The period is cut into chunks (one UTC day by default); ``workers`` processes
  each run :func:`qpe_core.simulate_archive.simulate_to_archive` (the function behind the
  ``simulate-archive`` flow's task) on one chunk at a time.  The time axis is allocated once
  before the writers start (:meth:`~qpe_core.timecube.TimeCube.ensure_range`: one growth under the
  cube's lock instead of the writers queueing for it).  Memory is bounded by construction: the simulator streams one slot at a time
  and a worker holds one chunk's simulator only; the RSS each worker has after its first and its
  last chunk are reported to show it does not grow.
* **Nowcast.** One :func:`qpe_core.nowcast.run_cycle` (the ``nowcast`` flow's task) with the
  simulated source on the slot that follows the backfill by ``len(lags)`` slots, so its input
  slots continue the backfilled period without a gap; it starts with the backfill, brings its
  inputs into the same archive, runs the ensemble and writes the products.  Inference (about 30 s
  per slot with 4 members on 2 CPU cores) is run for this one slot only, not for the backfill.
* **Completeness.** At the end the archive is summarised as ``qpe archive info`` does
  (:func:`qpe_core.archive.summarize`): every backfilled slot must have both its SEVIRI and radar
  markers set, with no gap.

Figures: slots, seconds, slots per minute, peak RSS (the sum over the driver, the fork server and
the worker processes, sampled every 0.2 s, and each process's own peak), archive completeness and
the nowcast result.  Not asserted here: ``tests/test_load.py`` checks a few slots.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from qpe_core.timeutil import iso, slot_range, to_utc

SLOTS_PER_DAY = 96  # 15-minute slots


def rss_mib(pid: int | None = None) -> float:
    """Resident set size (MiB) of a process now, from ``/proc`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def peak_rss_mib() -> float:
    """Peak resident set size (MiB) of this process so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _TreeSampler:
    """Samples the summed RSS of this process and the worker processes of some executors."""

    def __init__(self, pools: list[cf.ProcessPoolExecutor], every_s: float = 0.2):
        self.pools, self.every_s = pools, every_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qpe-rss-sampler", daemon=True)

    def _pids(self) -> list[int]:
        from multiprocessing import forkserver

        server = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
        pids = [os.getpid()] + ([server] if server else [])
        for pool in self.pools:
            pids += list(getattr(pool, "_processes", None) or {})
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_mib(p) for p in self._pids()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> _TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- worker entry points

def backfill_chunk(url: str, start: str, periods: int, seed: int) -> dict:
    """Simulate ``periods`` slots from ``start`` into the archive at ``url`` (a worker's task)."""
    from qpe_core.archive import Archive
    from qpe_core.simulate_archive import simulate_to_archive

    t0 = time.time()
    stats = simulate_to_archive(Archive.open(url, "a"), start, periods, seed)
    return {"start": start, "slots": periods, "t0": t0, "t1": time.time(), "pid": os.getpid(),
            "seconds": stats["seconds"], "rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}


def nowcast_cycle(url: str, products_url: str, checkpoint: str, area: str, channels: list[str], seed: int,
                  slot: str, now: str, members: int, steps: int | None) -> dict:
    """One nowcast cycle on the simulated source (a worker's task)."""
    from qpe_core.nowcast import run_cycle
    from qpe_core.sources import make_source

    t0 = time.time()
    src = make_source("simulated", area=area, seed=seed, channels=channels)
    res = run_cycle(url, products_url, checkpoint, src, slot=slot, now=now, members=members, steps=steps,
                    seed=seed)
    return {"slot": res.slot, "status": res.status, "reason": res.reason, "members": res.members,
            "inputs_present": res.inputs_present, "missing_inputs": res.missing_inputs,
            "stage_seconds": {k: round(v, 2) for k, v in res.seconds.items()}, "products": res.products,
            "t0": t0, "t1": time.time(), "peak_rss_mib": round(peak_rss_mib(), 1)}


# ----------------------------------------------------------------------------- the load check

def _context():
    """Worker processes forked from a clean server process that has the archive and simulator
    modules imported (no fork of this process: its zarr event-loop thread would not survive)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["qpe_core.archive", "qpe_core.simulate_archive", "qpe_core.simulator",
                                "qpe_core.sources.simulated", "qpe_core.load_bench"])
    return ctx


def chunks(start, periods: int, chunk_slots: int, slot_minutes: int = 15) -> list[tuple[str, int]]:
    """``(chunk start, slots)`` covering ``periods`` slots from ``start``."""
    times = slot_range(start, periods, slot_minutes)
    return [(iso(times[i]), min(chunk_slots, periods - i)) for i in range(0, periods, chunk_slots)]


def completeness(url: str, start, periods: int) -> dict:
    """How complete the backfilled period is in the archive, and its ``qpe archive info`` summary."""
    from qpe_core.archive import Archive, summarize

    arc = Archive.open(url)
    expected = slot_range(start, periods, arc.slot_minutes)
    present = {kind: int(arc.coverage(kind).index.intersection(expected).size) for kind in ("bt", "rain")}
    info = summarize(arc)
    gaps = info["bt"]["missing_slots"] + info["rain"]["missing_slots"]
    return {"expected_slots": periods, "bt_slots": present["bt"], "rain_slots": present["rain"],
            "archive_slots": info["bt"]["slots"], "paired_slots": info["paired_slots"],
            "first": info["bt"]["first"], "last": info["bt"]["last"], "missing_slots": gaps,
            "min_coverage": min(info["bt"]["min_coverage"] or 0.0, info["rain"]["min_coverage"] or 0.0),
            "complete": present["bt"] == present["rain"] == periods and gaps == 0}


def run_load(days: float = 7.0, start: str = "2024-06-01T00:00Z", slots: int | None = None,
             chunk_slots: int = SLOTS_PER_DAY, workers: int = 2, seed: int = 0, checkpoint: str | None = None,
             members: int = 4, steps: int | None = None, workdir: str | Path | None = None,
             nowcast: bool = True) -> dict:
    """Backfill ``days`` of simulated 15-minute slots (or exactly ``slots``) from ``start`` with
    ``workers`` writer processes, with one nowcast cycle (``checkpoint``, default the shipped demo
    checkpoint; ``members``, ``steps``) running meanwhile on the same archive.  Archive and
    products go to ``workdir`` (kept) or a temporary folder (removed).  Returns the figures."""
    from qpe_core.archive import Archive
    from qpe_core.assets import DEMO_CHECKPOINT
    from qpe_core.sources.simulated import day_seed

    checkpoint = str(checkpoint or DEMO_CHECKPOINT)
    card = json.loads((Path(checkpoint) / "card.json").read_text())  # without importing torch here
    area, channels, lags, minutes = card["area"], card["channels"], card["lags"], card.get("slot_minutes", 15)
    periods = int(slots) if slots is not None else int(round(days * 24 * 60 / minutes))
    if periods < 1 or workers < 1 or chunk_slots < 1:
        raise ValueError("need at least one slot, one worker and one slot per chunk")
    t_start = to_utc(start)
    # the nowcast's input slots (lags) are the len(lags) slots right after the backfilled period
    now_slot = t_start + pd.Timedelta(minutes=minutes * (periods + len(lags) - 1))
    tmp = None if workdir is not None else tempfile.mkdtemp(prefix="qpe-load-")
    root = Path(workdir if workdir is not None else tmp)
    root.mkdir(parents=True, exist_ok=True)
    url, products = str(root / f"{area}.zarr"), str(root / "products")
    try:
        arc = Archive.open_or_create(url, area, channels, minutes)
        arc.ensure_range(t_start, now_slot)  # once, before the parallel writers (one growth)
        parts = chunks(t_start, periods, chunk_slots, minutes)
        ctx = _context()
        t0 = time.time()
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool, \
                cf.ProcessPoolExecutor(1, mp_context=ctx) as side, _TreeSampler([pool, side]) as sampler:
            futures = [pool.submit(backfill_chunk, url, s, n, day_seed(seed, to_utc(s))) for s, n in parts]
            now_future = (side.submit(nowcast_cycle, url, products, checkpoint, area, channels, seed,
                                      iso(now_slot), iso(now_slot + pd.Timedelta(minutes=30)), members, steps)
                          if nowcast else None)
            done = [f.result() for f in futures]
            t_backfill = time.time()
            now_res = now_future.result() if now_future is not None else None
        t_end = time.time()
        seconds = t_backfill - t0
        by_pid: dict[int, list[dict]] = {}
        for d in sorted(done, key=lambda d: d["t1"]):
            by_pid.setdefault(d["pid"], []).append(d)
        figures = {
            "area": area, "start": iso(t_start), "days": round(periods * minutes / 1440, 3),
            "slots": periods, "workers": workers, "chunk_slots": chunk_slots, "chunks": len(parts),
            "seconds": round(seconds, 1), "slots_per_min": round(60.0 * periods / seconds, 1),
            "total_seconds": round(t_end - t0, 1),
            "peak_rss_total_mib": round(sampler.peak, 1),
            "peak_rss_worker_mib": round(max(d["peak_rss_mib"] for d in done), 1),
            "worker_rss_after_first_chunk_mib": round(max(v[0]["rss_mib"] for v in by_pid.values()), 1),
            "worker_rss_after_last_chunk_mib": round(max(v[-1]["rss_mib"] for v in by_pid.values()), 1),
            "peak_rss_driver_mib": round(peak_rss_mib(), 1),
            "archive": completeness(url, t_start, periods),
            "archive_url": url if tmp is None else None,
        }
        if now_res is not None:
            overlap = min(now_res["t1"], t_backfill) - max(now_res["t0"], t0)
            now_res["overlap_with_backfill_s"] = round(max(0.0, overlap), 1)
            now_res["seconds"] = round(now_res.pop("t1") - now_res.pop("t0"), 1)
            if tmp is not None:
                now_res["products"] = sorted(now_res["products"])
            figures["nowcast"] = now_res
        return figures
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
