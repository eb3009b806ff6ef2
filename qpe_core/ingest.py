"""Ingest: files -> readers -> archive, slot by slot.

A slot that fails (bad file, wrong channel...) is reported with its reason and
leaves the archive untouched; the other slots go on.  Used by the CLI and flows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qpe_core.archive import Archive
from qpe_core.errors import InputFileError, QpeError
from qpe_core.timeutil import iso

Progress = Callable[[str], None]


@dataclass
class SlotResult:
    """Outcome of ingesting one slot: ``status`` is 'written', 'skipped' (a 5-minute slot
    between the archive's slots) or 'failed' (``reason`` says why)."""

    kind: str
    time: pd.Timestamp | None
    files: list[str]
    status: str
    coverage: float = float("nan")
    seconds: float = 0.0
    reason: str = ""
    qc_removed: dict = field(default_factory=dict)  # radar: pixels set to NaN per quality-control rule


@dataclass
class IngestReport:
    results: list[SlotResult] = field(default_factory=list)

    @property
    def failed(self) -> list[SlotResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def written(self) -> list[SlotResult]:
        return [r for r in self.results if r.status == "written"]

    def qc_totals(self) -> dict[str, int]:
        """Pixels removed by each radar quality-control rule over the written slots."""
        out: dict[str, int] = {}
        for r in self.written:
            for k, v in r.qc_removed.items():
                out[k] = out.get(k, 0) + int(v)
        return out


def _is_satip(path: Path) -> bool:
    return path.name.endswith(".zarr.zip") or path.suffix == ".zarr"


def seviri_units(files: Sequence[str | Path]) -> list[tuple[pd.Timestamp | None, list[Path]]]:
    """Split SEVIRI inputs into slots: Satip Zarr files are one slot each; other files are
    grouped by nominal slot time through the satpy-based reader."""
    from qpe_core.readers.seviri import group_slots

    paths = [Path(f) for f in files]
    if not paths:
        raise InputFileError("no SEVIRI files given")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputFileError(f"file(s) not found: {', '.join(missing)}")
    units: list[tuple[pd.Timestamp | None, list[Path]]] = [(None, [p]) for p in paths if _is_satip(p)]
    others = [p for p in paths if not _is_satip(p)]
    if others:
        units += [(t, list(group)) for t, group in sorted(group_slots(others).items())]
    return units


def ingest_seviri(files: Sequence[str | Path], archive: Archive, cache_dir: str | Path | None = None,
                  progress: Progress | None = None) -> IngestReport:
    """Read, calibrate and resample SEVIRI files onto the archive grid and write each slot."""
    from qpe_core.readers.satip import read_satip
    from qpe_core.readers.seviri import read_seviri

    def read(t, paths):
        if _is_satip(paths[0]):
            return read_satip(paths[0], area=archive.area, channels=archive.channels, cache_dir=cache_dir)
        return read_seviri(paths, area=archive.area, channels=archive.channels, cache_dir=cache_dir,
                           expect_time=t, slot_minutes=archive.slot_minutes)

    return _run("seviri", seviri_units(files), read, archive.write_seviri, archive.slot_minutes, progress)


def ingest_radar(files: Sequence[str | Path], archive: Archive, cache_dir: str | Path | None = None,
                 progress: Progress | None = None) -> IngestReport:
    """Read radar composites (ODIM HDF5 or MeteoNet npz) onto the archive grid; write each slot
    that lies on the archive's slot grid (MeteoNet 5-minute steps in between are skipped)."""
    from qpe_core.readers.meteonet import read_meteonet
    from qpe_core.readers.odim import read_odim

    paths = [Path(f) for f in files]
    if not paths:
        raise InputFileError("no radar files given")
    report = IngestReport()
    for p in paths:
        if not p.exists():
            report.results.append(SlotResult("radar", None, [str(p)], "failed", reason=f"file not found: {p}"))
            continue
        if p.suffix == ".npz":
            def read(_t, ps):
                slots = read_meteonet(ps[0], area=archive.area)
                return slots
        else:
            def read(_t, ps):
                return read_odim(ps[0], area=archive.area, cache_dir=cache_dir)
        report.results += _run("radar", [(None, [p])], read, archive.write_radar, archive.slot_minutes,
                               progress).results
    return report


def _run(kind: str, units: Iterable[tuple[pd.Timestamp | None, list[Path]]], read, write,
         slot_minutes: int, progress: Progress | None) -> IngestReport:
    import time

    report = IngestReport()
    for t, paths in units:
        names = [str(p) for p in paths]
        t0 = time.perf_counter()
        try:
            out = read(t, paths)
            slots = out if isinstance(out, list) else [out]
            for ds in slots:
                ts = pd.Timestamp(ds["time"].values)
                if ts != ts.floor(f"{slot_minutes}min"):
                    report.results.append(SlotResult(kind, ts, names, "skipped",
                                                     reason=f"not on the archive's {slot_minutes}-minute slots"))
                    continue
                w = write(ds)
                report.results.append(SlotResult(kind, w.time, names, "written", w.coverage,
                                                 time.perf_counter() - t0, qc_removed=dict(ds.attrs.get("qc_removed", {}))))
        except QpeError as exc:
            report.results.append(SlotResult(kind, t, names, "failed", reason=str(exc)))
        if progress:
            progress(f"{kind} {iso(t) if t is not None else Path(names[0]).name}")
    return report
