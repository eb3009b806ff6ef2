"""One nowcast cycle, without Prefect: newest slot -> inputs -> archive -> stack ->
ensemble -> products.  The Prefect flow (:mod:`flows.nowcast`) orchestrates these
functions stage by stage; each is usable and tested on its own.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qpe_core.archive import Archive
from qpe_core.errors import InputFileError, QpeError
from qpe_core.ingest import ingest_seviri
from qpe_core.products import stac
from qpe_core.products.cog import write_cogs
from qpe_core.products.cube import ProductCube
from qpe_core.products.ensemble_stats import ensemble_stats
from qpe_core.products.quicklook import write_quicklook
from qpe_core.sources.base import GranuleSource
from qpe_core.stack import lag_times
from qpe_core.timeutil import check_on_grid, floor_slot, iso, to_utc


@dataclass
class CycleResult:
    """What one cycle did (one row of the run table in the Prefect UI)."""

    slot: str
    status: str  # done | skipped | stale | failed
    inputs_present: list[str] = field(default_factory=list)
    missing_inputs: list[str] = field(default_factory=list)
    members: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    rain_area_fraction: float = float("nan")
    max_rate_mm_h: float = float("nan")
    products: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    area: str = ""
    model_kind: str = ""

    def row(self) -> dict:
        d = asdict(self)
        d["inputs_present"], d["missing_inputs"] = len(self.inputs_present), ", ".join(self.missing_inputs)
        d["seconds"] = ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())
        d["products"] = len(self.products)
        return d


def newest_slot(now=None, slot_minutes: int = 15, latency_minutes: int = 20) -> pd.Timestamp:
    """The newest slot whose data should be complete at ``now`` (UTC): a 15-minute SEVIRI
    repeat cycle is disseminated about ``latency_minutes`` after its start."""
    now = to_utc(now) if now is not None else pd.Timestamp.now("UTC").tz_localize(None)
    return floor_slot(now - pd.Timedelta(minutes=latency_minutes), slot_minutes)


def check_fresh(slot, now=None, max_age_minutes: int = 180) -> None:
    """Refuse slots older than ``max_age_minutes`` (a late run after an outage) or in the future."""
    now = to_utc(now) if now is not None else pd.Timestamp.now("UTC").tz_localize(None)
    age = (now - to_utc(slot)) / pd.Timedelta(minutes=1)
    if age > max_age_minutes:
        raise QpeError(f"slot {iso(slot)} is stale: {age:.0f} min old > {max_age_minutes} min (use backfill)")
    if age < 0:
        raise QpeError(f"slot {iso(slot)} is in the future (now {iso(now)})")


def ensure_inputs(archive: Archive, source: GranuleSource, slot, lags, cache_dir: str | None = None,
                  errors: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Bring every stack slot of ``slot`` into the archive from ``source``; returns
    (present, missing) slot names.  A slot that cannot be had is reported, not fatal: its
    cause goes to ``errors`` (slot name -> message) when given."""
    present, missing = [], []
    for t in lag_times(slot, lags, archive.slot_minutes):
        if not archive.has_slot(t, "bt"):
            try:
                with archive.slot_lock(t):  # another cycle may be bringing the same slot
                    if not archive.has_slot(t, "bt"):
                        _bring(archive, source, t, cache_dir)
            except QpeError as exc:
                if errors is not None:
                    errors[iso(t)] = str(exc)
        (present if archive.has_slot(t, "bt") else missing).append(iso(t))
    return present, missing


def _bring(archive: Archive, source: GranuleSource, t: pd.Timestamp, cache_dir: str | None) -> None:
    if hasattr(source, "simulate_slot"):
        sev, radar = source.simulate_slot(t)
        archive.write_seviri(sev)
        archive.write_radar(radar)
        return
    files = source.fetch(t, cache_dir)
    if files:
        from qpe_core.readers.seviri import group_slots

        held = set(group_slots(files, archive.slot_minutes))  # the slots the files say they hold
        if held != {t}:  # a granule of another slot: refused before anything is written
            raise InputFileError(f"granule(s) {', '.join(Path(f).name for f in files)} fetched for slot {iso(t)} "
                                 f"hold slot(s) {', '.join(iso(u) for u in sorted(held))}: not ingested")
        report = ingest_seviri(files, archive, cache_dir=cache_dir)
        if report.failed:
            raise QpeError("; ".join(r.reason for r in report.failed))


def publish_products(ens, products_url: str, area: str, storage_options: dict | None = None) -> dict[str, str]:
    """Product cube slot, COGs and quick-look of one ensemble; returns product name -> path."""
    stats = ensemble_stats(ens)
    cube = ProductCube.open_or_create(f"{products_url.rstrip('/')}/{area}.zarr", area, ens.sizes["member"],
                                      storage_options=storage_options)
    # a duplicate run of the same slot waits here: rewriting the slot hides it for a moment, which
    # failed the other run's STAC step reading it
    with cube.slot_lock(ens["time"].values):
        cube.write_slot(ens, stats)
        paths = {"cube": cube.url}
        paths.update(write_cogs(stats, products_url, storage_options=storage_options))
        paths["quicklook"] = write_quicklook(stats, products_url, storage_options=storage_options)
        paths["stac_item"] = stac.add_slot(products_url, area, ens["time"].values, storage_options)
    return paths


def _input_problems(errors: dict[str, str]) -> str:
    """``; input slot <slot>: <cause>`` for each input slot that could not be had."""
    return "".join(f"; input slot {t}: {msg}" for t, msg in errors.items())


def already_done(products_url: str, area: str, slot) -> bool:
    try:
        return ProductCube.open(f"{products_url.rstrip('/')}/{area}.zarr").has_slot(slot)
    except QpeError:
        return False


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_cycle(archive_url: str, products_url: str, checkpoint: str | Path, source: GranuleSource,
              slot=None, now=None, members: int = 16, steps: int | None = None, seed: int = 0,
              max_age_minutes: int = 180, gaps: str = "mask", cache_dir: str | None = None,
              device: str = "auto") -> CycleResult:
    """One full cycle for ``slot`` (default: the newest complete one); never raises for data
    problems: the result says ``failed`` with the reason, and nothing half-written is visible.
    ``device``: where the ensemble runs (``auto`` = the GPU when one is visible, else the CPU)."""
    from qpe_core.training.checkpoint import check_card, read_card
    from qpe_core.training.inference import predict

    slot = check_on_grid(slot, source.slot_minutes, "slot") if slot is not None else newest_slot(now)
    res = CycleResult(iso(slot), "failed")
    try:
        check_fresh(slot, now, max_age_minutes)
    except QpeError as exc:
        res.status, res.reason = "stale", str(exc)
        return res
    card = read_card(checkpoint)
    res.area, res.model_kind = card["area"], card["kind"]
    if already_done(products_url, card["area"], slot):
        res.status, res.reason = "skipped", "products already exist"
        return res
    input_errors: dict[str, str] = {}
    try:
        t0 = time.perf_counter()
        archive = Archive.open_or_create(archive_url, card["area"], card["channels"], source.slot_minutes)
        check_card(card, archive.area, archive.channels)  # before anything is written to the archive
        res.inputs_present, res.missing_inputs = ensure_inputs(archive, source, slot, card["lags"], cache_dir,
                                                               input_errors)
        res.seconds["inputs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ens = predict(archive, slot, checkpoint, members, steps, seed, gaps=gaps, device=resolve_device(device))
        res.seconds["inference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res.products = publish_products(ens, products_url, archive.area)
        res.seconds["products"] = time.perf_counter() - t0
    except QpeError as exc:
        res.reason = str(exc) + _input_problems(input_errors)
        return res
    res.reason = _input_problems(input_errors).removeprefix("; ")
    mean = ens["rain"].mean("member").values
    res.members = int(ens.sizes["member"])
    res.rain_area_fraction = float(np.nanmean(mean > 0.1))
    res.max_rate_mm_h = float(np.nanmax(ens["rain"].values))
    res.status = "done"
    return res
