"""SEVIRI Level 1.5 granules (native ``.nat``, HRIT segments, netCDF; plain or in
zip archives as the EUMETSAT Data Store ships them) -> one calibrated slot on a
named grid, through satpy.

* :func:`detect_format` - the satpy reader of a file, from its content.
* :func:`group_slots` - files grouped by nominal slot start (UTC).
* :func:`read_seviri` - one slot: brightness temperatures (K) of the IR/WV
  channels, nearest-neighbour resampled with a cached look-up table
  (:mod:`qpe_core.readers.resample`), as :func:`qpe_core.slots.seviri_slot`.

Compressed HRIT segments (``-C_``) are decompressed by satpy itself, in memory,
with ``pyPublicDecompWT``; nothing needs to be done here.
"""

from __future__ import annotations

import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.errors import InputFileError
from qpe_core.grids import DEFAULT_AREA, get_area
from qpe_core.readers.resample import get_lut
from qpe_core.slots import seviri_slot
from qpe_core.timeutil import iso, to_utc

NATIVE, HRIT, NETCDF = "seviri_l1b_native", "seviri_l1b_hrit", "seviri_l1b_nc"

_NATIVE_MAGIC = b"FormatName                  : NATIVE"
_NATIVE_HEADER_BYTES = 445_286  # L1.5 header without the ASCII archive header
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HRIT_FILE_TYPES = {0, 1, 2, 3, 128, 129, 130, 131}

_HRIT_NAME = re.compile(r"^[HL]-000-\w{6}-(?P<sat>\w{4})_\w{7}-(?P<chan>\w{9})-(?P<seg>\w{9})-"
                        r"(?P<time>\d{12})-(?:C_|__)(?:\.bz2)?$")
_NATIVE_NAME = re.compile(r"^(?P<sat>MSG\d)-SEVI-MSG\d\d-\w{4}-NA-(?P<time>\d{14})\.\d+Z")
_NC_NAME = re.compile(r"^W_XX-EUMETSAT-Darmstadt,VIS\+IR\+HRV\+IMAGERY,(?P<sat>MSG\d)\+SEVIRI_C_EUMG_"
                      r"(?P<time>\d{14})\.nc$")


# ----------------------------------------------------------------------------- detection

def _sniff(head: bytes, name: str) -> str | None:
    """Satpy reader name from the first bytes of a file (and its name), or None."""
    if head.startswith(_NATIVE_MAGIC):
        return NATIVE
    if head.startswith(_HDF5_MAGIC) or head[:4] in (b"CDF\x01", b"CDF\x02"):
        return NETCDF if name.endswith(".nc") or _NC_NAME.match(name) else None
    if len(head) >= 16 and head[:3] == b"\x00\x00\x10" and head[3] in _HRIT_FILE_TYPES:
        return HRIT
    if head.startswith(b"BZh") and _HRIT_NAME.match(name):
        return HRIT  # bzip2-packed HRIT segment, which satpy opens itself
    if name.endswith(".nat") and len(head) >= 64 and _NATIVE_NAME.match(name):
        return NATIVE  # native file without the ASCII archive header
    return None


def _zip_members(path: Path) -> dict[str, str]:
    """``{member name: reader}`` of the SEVIRI files in a zip (manifests etc. skipped)."""
    try:
        with zipfile.ZipFile(path) as zf:
            found = {}
            for info in zf.infolist():
                if info.is_dir():
                    continue
                with zf.open(info) as fh:
                    reader = _sniff(fh.read(64), Path(info.filename).name)
                if reader:
                    found[info.filename] = reader
            return found
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: corrupt or truncated zip archive ({exc})") from exc


def detect_format(path: str | Path) -> str:
    """Satpy reader name of a SEVIRI file, from its content: ``seviri_l1b_native``,
    ``seviri_l1b_hrit`` or ``seviri_l1b_nc``.  A zip archive is detected by the
    SEVIRI file(s) it holds.  Raises :class:`InputFileError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        readers = set(_zip_members(path).values())
        if len(readers) != 1:
            what = "no SEVIRI file" if not readers else f"several formats ({', '.join(sorted(readers))})"
            raise InputFileError(f"{path}: zip archive holds {what}")
        return readers.pop()
    with open(path, "rb") as fh:
        head = fh.read(64)
    reader = _sniff(head, path.name)
    if reader is None:
        raise InputFileError(f"{path}: not a SEVIRI native, HRIT or netCDF file "
                             f"({len(head)} first bytes unrecognised)")
    return reader


# ----------------------------------------------------------------------------- names -> slots

def _name_info(name: str) -> tuple[str, pd.Timestamp] | None:
    """(satellite id, time in the file name) from a SEVIRI file name, or None.  The
    native name holds the scan *end* time; flooring to the slot gives its start."""
    for pattern, fmt in ((_HRIT_NAME, "%Y%m%d%H%M"), (_NATIVE_NAME, "%Y%m%d%H%M%S"),
                         (_NC_NAME, "%Y%m%d%H%M%S")):
        m = pattern.match(name)
        if m:
            return m["sat"], pd.Timestamp(pd.to_datetime(m["time"], format=fmt))
    return None


def _file_slots(path: Path, slot_minutes: int) -> set[tuple[str, pd.Timestamp]]:
    """(satellite, slot start) of a file, or of each SEVIRI member of a zip."""
    names = list(_zip_members(path)) if zipfile.is_zipfile(path) else [path.name]
    found = set()
    for name in names:
        info = _name_info(Path(name).name) or (_name_info(path.name) if path.suffix == ".zip" else None)
        if info is None:
            raise InputFileError(f"{path}: cannot tell the slot time from the file name {Path(name).name!r}")
        found.add((info[0], info[1].floor(f"{slot_minutes}min")))
    return found


def group_slots(paths: Iterable[str | Path], slot_minutes: int = 15) -> dict[pd.Timestamp, list[Path]]:
    """Group SEVIRI files / zips by nominal slot start (naive UTC, floored to
    ``slot_minutes``), from the file names; sorted by time."""
    groups: dict[pd.Timestamp, list[Path]] = {}
    for p in map(Path, paths):
        detect_format(p)
        slots = {t for _, t in _file_slots(p, slot_minutes)}
        if len(slots) != 1:
            raise InputFileError(f"{p}: archive holds several slots ({', '.join(map(iso, sorted(slots)))})")
        groups.setdefault(slots.pop(), []).append(p)
    return dict(sorted(groups.items()))


# ----------------------------------------------------------------------------- checks

def _hrit_header_problem(path: Path, header_len: int, label: str) -> str | None:
    """Why the header records of an HRIT file are not sound (records must tile the header,
    the annotation record must name the same channel, segment and slot as the file), or None."""
    with open(path, "rb") as fh:
        head = fh.read(min(header_len, 1 << 20))
    if len(head) < header_len:
        return None  # truncated: reported by the size check
    pos, annotation = 0, None
    while pos < header_len:
        if pos + 3 > header_len:
            return f"header record at byte {pos} overruns the {header_len}-byte header"
        kind, length = head[pos], int.from_bytes(head[pos + 1:pos + 3], "big")
        if length < 3 or pos + length > header_len or (pos == 0 and (kind, length) != (0, 16)):
            return f"corrupt header record at byte {pos} (type {kind}, length {length})"
        if kind == 4:
            annotation = head[pos + 3:pos + length].decode("ascii", errors="replace").strip("\x00 ")
        pos += length
    name, text = _HRIT_NAME.match(path.name), _HRIT_NAME.match(annotation or "")
    if name and text and any(name[k] != text[k] for k in ("sat", "chan", "seg", "time")):
        return f"the file name disagrees with its header annotation {annotation!r}"
    return None


def _check_complete(path: Path, reader: str, label: str) -> None:
    """Raise if a file is empty or shorter than its own header says (truncated), or if an
    HRIT header is corrupt."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4096)
    expected = None
    if reader == HRIT and head[:3] == b"\x00\x00\x10" and len(head) >= 16:
        expected = int.from_bytes(head[4:8], "big") + -(-int.from_bytes(head[8:16], "big") // 8)
        problem = _hrit_header_problem(path, int.from_bytes(head[4:8], "big"), label)
        if problem:
            raise InputFileError(f"{label}: {problem}")
    elif reader == NATIVE:
        m = re.search(rb"TotalFileSize\s*:\s*(\d+)", head)
        expected = int(m[1]) if m else _NATIVE_HEADER_BYTES
    if size == 0 or (expected is not None and size < expected):
        raise InputFileError(f"{label}: truncated file ({size} bytes, header announces {expected})")


def _check_slot(files: list[tuple[str, Path]], reader: str, slot_minutes: int) -> pd.Timestamp | None:
    """One satellite and one slot among the files (by name); HRIT has PRO and EPI."""
    info = {label: _name_info(p.name) for label, p in files}
    sats = {i[0] for i in info.values() if i}
    if len(sats) > 1:
        raise InputFileError(f"files of several satellites ({', '.join(sorted(sats))}): "
                             + ", ".join(f"{Path(k).name} ({v[0]})" for k, v in info.items() if v))
    slots = {i[1].floor(f"{slot_minutes}min") for i in info.values() if i}
    if len(slots) > 1:
        per_slot = {iso(s): [Path(k).name for k, v in info.items() if v and v[1].floor(f"{slot_minutes}min") == s]
                    for s in sorted(slots)}
        raise InputFileError("files of several slots given for one slot: "
                             + "; ".join(f"{s}: {', '.join(n)}" for s, n in per_slot.items()))
    if reader == HRIT:
        segs = {m["seg"].rstrip("_") for _, p in files if (m := _HRIT_NAME.match(p.name))}
        for part in ("PRO", "EPI"):
            if part not in segs:
                slot = f" of slot {iso(next(iter(slots)))}" if slots else ""
                raise InputFileError(f"HRIT files{slot} lack the {part} file (prologue/epilogue): "
                                     + _describe(files, None))
    return next(iter(slots)) if slots else None


# ----------------------------------------------------------------------------- reading

def _materialize(paths: list[Path], tmp: Path) -> list[tuple[str, Path]]:
    """``(label, local path)`` per SEVIRI file; zip members are extracted into ``tmp``."""
    out = []
    for p in paths:
        if not p.is_file():
            raise InputFileError(f"{p}: no such file")
        if not zipfile.is_zipfile(p):
            out.append((str(p), p))
            continue
        with zipfile.ZipFile(p) as zf:
            for member in _zip_members(p):
                dest = tmp / Path(member).name  # flatten: never write outside tmp
                if dest.exists():
                    raise InputFileError(f"{p}: several members named {dest.name}")
                with zf.open(member) as src, open(dest, "wb") as dst:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
                out.append((f"{p}!{member}", dest))
    return out


def _describe(files: list[tuple[str, Path]], slot: pd.Timestamp | None) -> str:
    """Short name of a slot's files for messages: the slot and one or two file names."""
    names = [Path(label).name for label, _ in files]
    shown = ", ".join(names) if len(names) <= 2 else f"{names[0]} and {len(names) - 1} other files"
    return f"slot {iso(slot)} ({shown})" if slot is not None else shown


def _scene(files: list[tuple[str, Path]], reader: str):
    from satpy import Scene  # heavy import, only when reading

    names = ", ".join(Path(label).name for label, _ in files)  # all of them: one may be at fault
    try:
        return Scene(filenames=[str(p) for _, p in files], reader=reader)
    except Exception as exc:  # satpy raises assorted errors on unreadable input
        raise InputFileError(f"satpy reader {reader} cannot open {names}: {exc}") from exc


def _load(scn, channels: Sequence[str], names: str) -> list[xr.DataArray]:
    available = set(scn.available_dataset_names())
    missing = [c for c in channels if c not in available]
    if missing:
        raise InputFileError(f"channel(s) {', '.join(missing)} not in {names} "
                             f"(present: {', '.join(sorted(available)) or 'none'})")
    try:
        scn.load(list(channels), calibration="brightness_temperature")
    except Exception as exc:
        raise InputFileError(f"cannot calibrate {', '.join(channels)} to brightness temperature "
                             f"from {names}: {exc}") from exc
    not_loaded = [c for c in channels if c not in scn]
    if not_loaded:
        raise InputFileError(f"channel(s) {', '.join(not_loaded)} could not be loaded from {names}")
    return [scn[c] for c in channels]


def _slot_time(arr: xr.DataArray, slot_minutes: int) -> pd.Timestamp:
    tp = arr.attrs.get("time_parameters") or {}
    start = tp.get("nominal_start_time") or arr.attrs.get("nominal_start_time") or arr.attrs["start_time"]
    return to_utc(start).floor(f"{slot_minutes}min")


def _platform(arrays: list[xr.DataArray], names: str) -> str:
    platforms = {a.attrs.get("platform_name") for a in arrays}
    if len(platforms) != 1:
        raise InputFileError(f"files of several satellites ({', '.join(map(str, platforms))}): {names}")
    return platforms.pop()


def _corrupt_channels(arrays: list[xr.DataArray], rows, cols, files: list[tuple[str, Path]]) -> str:
    """``channel(s) X (file names) of `` for the channels whose data cannot be decoded, or ''."""
    bad = []
    for a in arrays:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
                a.data[rows, cols].compute()
        except Exception:
            bad.append(str(a.attrs.get("name", "?")))
    if not bad:
        return ""
    culprits = [Path(label).name for label, _ in files if any(ch in Path(label).name for ch in bad)]
    return f"channel(s) {', '.join(bad)}" + (f" ({', '.join(culprits)})" if culprits else "") + " of "


def _resample(arrays: list[xr.DataArray], area: str, cache_dir, names: str,
              files: list[tuple[str, Path]] = ()) -> np.ndarray:
    """(channel, y, x) float32 K on the grid; only the source window the grid needs is read."""
    sources = {a.attrs["area"].area_extent for a in arrays}
    if len(sources) != 1:
        raise InputFileError(f"channels of {names} are on different grids; only 3 km IR/WV channels are supported")
    lut = get_lut(arrays[0].attrs["area"], get_area(area), cache_dir)
    rows, cols = lut.window()
    try:
        with warnings.catch_warnings():  # log10 of zero counts (space) inside satpy's calibration
            warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
            window = da.stack([a.data[rows, cols] for a in arrays]).compute()
    except Exception as exc:
        which = _corrupt_channels(arrays, rows, cols, list(files))
        raise InputFileError(f"corrupt data in {which}{names}: {exc}") from exc
    bt = lut.apply(window)
    bt[~np.isfinite(bt) | (bt <= 0)] = np.nan  # space, missing segments, invalid counts
    return bt


def read_seviri(paths: Sequence[str | Path], area: str = DEFAULT_AREA, channels: Sequence[str] = DEFAULT_CHANNELS,
                cache_dir: str | Path | None = None, expect_time=None, slot_minutes: int = 15) -> xr.Dataset:
    """Read one SEVIRI slot to ``bt(channel, y, x)`` brightness temperature (K) on ``area``.

    ``paths``: the slot's files (native, netCDF, or all HRIT segments plus PRO/EPI),
    plain or zipped.  ``time`` is the nominal slot start (UTC) floored to
    ``slot_minutes``; with ``expect_time`` given it must match.  The resampling
    look-up table is cached in ``cache_dir`` when given.  NaN: space, outside the
    disk, missing segments.  Raises :class:`InputFileError` naming the file, slot
    or channel at fault."""
    paths = [Path(p) for p in paths]
    channels = list(channels)
    if not paths:
        raise InputFileError("no SEVIRI file given for the slot")
    if not channels:
        raise InputFileError("no channel requested")
    with tempfile.TemporaryDirectory(prefix="qpe-seviri-") as tmp:
        files = _materialize(paths, Path(tmp))
        readers = {label: detect_format(p) for label, p in files}
        if len(set(readers.values())) > 1:
            raise InputFileError("files of several formats for one slot: "
                                 + ", ".join(f"{Path(k).name} ({v})" for k, v in readers.items()))
        reader = next(iter(readers.values()))
        name_slot = _check_slot(files, reader, slot_minutes)
        for label, p in files:
            _check_complete(p, reader, label)
        names = _describe(files, name_slot)
        arrays = _load(_scene(files, reader), channels, names)
        time = _slot_time(arrays[0], slot_minutes)
        if name_slot is not None and name_slot != time:
            raise InputFileError(f"{names}: the data hold slot {iso(time)}, the file names {iso(name_slot)}")
        if expect_time is not None and to_utc(expect_time) != time:
            raise InputFileError(f"{names}: got slot {iso(time)}, expected {iso(expect_time)}")
        platform = _platform(arrays, names)
        bt = _resample(arrays, area, cache_dir, names, files)
    return seviri_slot(bt, channels, time, area, platform_name=platform, sensor="seviri", reader=reader,
                       source_files=[p.name for p in paths], resampling="nearest (cached LUT)")
