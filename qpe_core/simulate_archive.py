"""Write simulated slots into an archive cube: the embedded default data source
(:func:`simulate_to_archive`), or SEVIRI brightness temperatures (K) synthesised for the real radar
rain (mm/h) of another archive (:func:`rain_from_archive`, ``qpe simulate --rain-from``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from qpe_core.archive import Archive
from qpe_core.errors import ArchiveError, QpeError
from qpe_core.timeutil import check_on_grid, iso, slot_range

HEAVY_MM_H = 10.0       # summary: IR_108 over rates at least this (mm/h) against dry pixels


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


def open_rain_pair(source_url: str, out_url: str, area: str | None = None, start=None,
                   periods: int | None = None) -> tuple[Archive, Archive]:
    """Open the rain source archive and open, or create on the source's grid, channels and slot
    length, the output archive, once the range holds radar slots (:func:`rain_slots`).  ``area``,
    when given, must be the source's.  Raises :class:`QpeError` naming the archive or the range when
    the source is missing, is the output, holds no radar slot in the range, or the grids or slot
    lengths differ; nothing is created then."""
    from qpe_core.grids import get_spec

    try:
        source = Archive.open(source_url)
    except ArchiveError:
        raise ArchiveError(f"rain source {source_url}: no archive there (write its radar first, e.g. "
                           f"`qpe ingest radar FILES --archive {source_url}`)") from None
    if _same_store(source_url, out_url):
        raise ArchiveError(f"the output archive {out_url} is the rain source: give a new --archive")
    if area is not None and area != source.area:
        get_spec(area)  # an unknown name says so first
        raise ArchiveError(f"area {area!r} != area {source.area!r} of the rain source {source_url}: the "
                           f"synthesised slots are written on the source's grid (leave out --area)")
    rain_slots(source, start, periods)
    try:
        out = Archive.open(out_url, "a")
    except ArchiveError:
        return source, Archive.open_or_create(out_url, source.area, source.channels, source.slot_minutes)
    if out.area != source.area or out.slot_minutes != source.slot_minutes:
        raise ArchiveError(f"output archive {out_url} is on {out.area} at {out.slot_minutes} min, the rain source "
                           f"{source_url} on {source.area} at {source.slot_minutes} min: use a new --archive")
    return source, out


def _same_store(a: str, b: str) -> bool:
    from pathlib import Path

    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def rain_slots(source: Archive, start=None, periods: int | None = None) -> pd.DatetimeIndex:
    """Slots of ``source`` with radar rain to synthesise: all of them by default; from ``start``
    (UTC) for ``periods`` slots, or from ``start`` to the source's last radar slot.  Raises
    :class:`QpeError` naming the range when it holds none."""
    have = source.times("rain")
    n = len(have)
    held = f"it has {n} radar slot(s)" + (f": {iso(have.min())} .. {iso(have.max())}" if n else "")
    if start is None:
        if periods is not None:
            raise QpeError("a number of periods needs a start slot (--start)")
        if not n:
            raise QpeError(f"rain source {source.url} has no radar slot ({held})")
        return have.sort_values()
    if periods is not None and periods < 1:
        raise QpeError(f"periods must be >= 1, got {periods}")
    first = check_on_grid(start, source.slot_minutes, "start")
    last = (slot_range(first, periods, source.slot_minutes)[-1] if periods is not None
            else (have.max() if n else first))
    chosen = have[(have >= first) & (have <= last)].sort_values() if n else have
    if not len(chosen):
        raise QpeError(f"no radar slot in the rain source {source.url} between {iso(first)} and "
                       f"{iso(max(first, last))} ({held})")
    return chosen


def rain_from_archive(source: Archive, archive: Archive, start=None, periods: int | None = None, seed: int = 0,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Synthesise the SEVIRI slot (K) of every radar slot of ``source`` in the range (see
    :func:`rain_slots`) with the simulator's radiative model driven by that rain
    (:mod:`qpe_core.simulator.rain_driven`), and write it to ``archive`` beside the unchanged rain
    (mm/h, NaN kept) and rain quality: each slot SEVIRI then radar, each write atomic with its
    completion marker.  Deterministic for ``(seed, range)``: a re-run rewrites the same bytes.
    Returns what was written and the IR_108 medians over heavy rain and over dry pixels (K)."""
    from qpe_core.simulator.rain_driven import simulate_from_rain
    from qpe_core.slots import radar_slot, seviri_slot

    if archive.area != source.area or archive.slot_minutes != source.slot_minutes:
        raise ArchiveError(f"{archive.url} ({archive.area}, {archive.slot_minutes} min) does not match the rain "
                           f"source {source.url} ({source.area}, {source.slot_minutes} min)")
    wanted = rain_slots(source, start, periods)
    step = pd.Timedelta(minutes=source.slot_minutes)
    span = slot_range(wanted[0], int((wanted[-1] - wanted[0]) / step) + 1, source.slot_minutes)
    archive.ensure_range(span[0], span[-1])
    write = set(wanted)
    attrs = {"source": "qpe simulator, radar-driven", "seed": int(seed), "rain_from": source.url}

    def frame_of(t: pd.Timestamp):
        return source.read_rain(t) if source.has_slot(t, "rain") else None

    t0 = time.perf_counter()
    ir = archive.channels.index("IR_108") if "IR_108" in archive.channels else None
    heavy_k, dry_k, wet = [], [], []
    for t, bt, _ in simulate_from_rain(source.area, span, frame_of, seed, archive.channels, source.slot_minutes):
        if t not in write:
            continue
        rain = source.read_rain(t)
        archive.write_seviri(seviri_slot(bt, archive.channels, t, archive.area, **attrs))
        archive.write_radar(radar_slot(rain, t, archive.area, quality=source.read_rain_quality(t), **attrs))
        valid = np.isfinite(rain)
        wet.append(float(np.mean(rain[valid] >= 0.1)))
        if ir is not None:
            heavy_k.append(bt[ir][valid & (np.nan_to_num(rain) >= HEAVY_MM_H)])
            dry_k.append(bt[ir][valid & (np.nan_to_num(rain) == 0)])
        if progress:
            progress(iso(t))
    seconds = time.perf_counter() - t0

    def median(parts):
        v = np.concatenate(parts) if parts else np.zeros(0)
        return float(np.median(v)) if v.size else None

    return {"slots": len(wanted), "first": iso(wanted[0]), "last": iso(wanted[-1]),
            "skipped": [iso(t) for t in span if t not in write], "seconds": seconds,
            "slots_per_s": len(wanted) / seconds, "wet_fraction": float(np.mean(wet)),
            "ir108_heavy_median_k": median(heavy_k), "ir108_dry_median_k": median(dry_k)}
