"""Satip zipped-Zarr SEVIRI files (openclimatefix/Satip ``data/latest`` layout) ->
one calibrated slot on a named grid.

One file = one 5-minute Rapid Scan slot: ``data(time, y_geostationary,
x_geostationary, variable)`` int16 on a 0..1023 scale per channel, cropped
geostationary image whose pyresample area is stored as YAML in the ``area``
attribute.  Decoding: ``value = min + raw / 1023 * (max - min)``, K for the IR
and WV channels.

Scaling: stored attributes are used when present (``{channel}_min`` /
``{channel}_max``, ``mins`` / ``maxs`` with ``variable_order``, or CF
``scale_factor`` / ``add_offset``).  The sample files carry none of these (their
attributes are satpy's per-channel metadata only), so the reader falls back to
the constants of Satip's ``Compressor`` / ``ScaleToZeroToOne`` (satip/compression.py:
IR_108 199.10002-313.2767 K) and records which was used in ``scaling_source``.

Satip labels a Rapid Scan slot by the *end* of its 5-minute scan (file name and
``time`` coordinate).  Like every reader here, ``read_satip`` returns the nominal
slot *start* (the scan start floored to 5 minutes: the 12:00 file is slot 11:55),
so Satip, HRIT and native slots line up; the label is kept as ``file_time``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.errors import InputFileError
from qpe_core.grids import DEFAULT_AREA, get_area
from qpe_core.readers.resample import get_lut
from qpe_core.slots import seviri_slot
from qpe_core.timeutil import iso, to_utc

RAW_MAX = 1023  # 10-bit scale
#: Satip Compressor defaults (openclimatefix/Satip, satip/compression.py), K for IR/WV, % for VIS/IR_016.
SATIP_RANGES: dict[str, tuple[float, float]] = {
    "IR_016": (-2.5118103, 69.60857), "IR_039": (-64.83977, 339.15588), "IR_087": (63.404694, 340.26526),
    "IR_097": (2.844452, 317.86752), "IR_108": (199.10002, 313.2767), "IR_120": (-17.254883, 315.99194),
    "IR_134": (-26.29155, 274.82297), "VIS006": (-1.1009827, 93.786545), "VIS008": (-2.4184198, 101.34922),
    "WV_062": (199.57048, 249.91806), "WV_073": (198.95093, 286.96323),
}
_NAME_TIME = re.compile(r"^(\d{12})\.zarr\.zip$")


def _open(path: Path):
    """(ZipStore, lazily opened Dataset) of the Zarr store inside the zip."""
    from zarr.storage import ZipStore

    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise InputFileError(f"{path}: not a zip archive (corrupt or truncated Satip file?)")
    store = ZipStore(path, mode="r")
    try:
        ds = xr.open_zarr(store, consolidated=None, mask_and_scale=False, chunks=None)
    except Exception as exc:  # zipfile / zarr / json errors on a corrupt store
        _close(store)
        raise InputFileError(f"{path}: not a readable Satip zipped Zarr ({exc})") from exc
    if "data" not in ds or "variable" not in ds.coords:
        _close(store)
        raise InputFileError(f"{path}: no 'data' array with a 'variable' coordinate (not a Satip file)")
    return store, ds


def _close(store) -> None:
    try:
        store.close()
    except AttributeError:  # zarr's ZipStore.close fails when the zip was never opened
        pass


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def stored_scaling(attrs: dict, channel: str) -> tuple[float, float] | None:
    """(min, max) of ``channel`` from stored attributes, or None if absent."""
    lo, hi = _float(attrs.get(f"{channel}_min")), _float(attrs.get(f"{channel}_max"))
    if lo is not None and hi is not None:
        return lo, hi
    order = list(attrs.get("variable_order") or [])
    if channel in order and "mins" in attrs and "maxs" in attrs:
        i = order.index(channel)
        return float(np.asarray(attrs["mins"])[i]), float(np.asarray(attrs["maxs"])[i])
    scale, offset = _float(attrs.get("scale_factor")), _float(attrs.get("add_offset"))
    if scale is not None and offset is not None:
        return offset, offset + scale * RAW_MAX
    return None


def _scaling(ds: xr.Dataset, channel: str, path: Path) -> tuple[float, float, str]:
    """(min, max, source) for a channel: stored attributes first, Satip constants otherwise."""
    for attrs in (ds["data"].attrs, ds.attrs):
        found = stored_scaling(attrs, channel)
        if found:
            source = "stored attributes"
            break
    else:
        if channel not in SATIP_RANGES:
            raise InputFileError(f"{path}: no scaling for channel {channel} (none stored, no Satip default)")
        found, source = SATIP_RANGES[channel], "Satip Compressor defaults (no scaling stored in the file)"
    lo, hi = found
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise InputFileError(f"{path}: invalid scaling for {channel}: min {lo}, max {hi}")
    return lo, hi, source


def _source_area(ds: xr.Dataset, path: Path):
    """The stored pyresample area, checked against the x/y_geostationary pixel centres (m)."""
    from pyresample.area_config import load_area_from_string

    text = ds["data"].attrs.get("area") or ds.attrs.get("area")
    if not text:
        raise InputFileError(f"{path}: no 'area' attribute (geostationary projection unknown)")
    try:
        src = load_area_from_string(text)
    except Exception as exc:
        raise InputFileError(f"{path}: unreadable 'area' attribute ({exc})") from exc
    x, y = src.get_proj_vectors()
    for name, vec in (("x_geostationary", x), ("y_geostationary", y)):
        if name in ds.coords and (ds[name].size != vec.size or np.abs(ds[name].values - vec).max() > 1.0):
            raise InputFileError(f"{path}: 'area' attribute disagrees with the {name} coordinate")
    if ds["data"].sizes.get("y_geostationary") != src.height or ds["data"].sizes.get("x_geostationary") != src.width:
        raise InputFileError(f"{path}: data shape {dict(ds['data'].sizes)} does not match area {src.shape}")
    return src


def _slot_time(ds: xr.Dataset, path: Path) -> pd.Timestamp:
    """The file's slot time (naive UTC), checked against the file name when it has one."""
    if "time" not in ds.coords or ds["time"].size != 1:
        raise InputFileError(f"{path}: expected one time step, found {ds.sizes.get('time', 0)}")
    time = to_utc(ds["time"].values.ravel()[0])
    m = _NAME_TIME.match(path.name)
    if m and pd.Timestamp(pd.to_datetime(m[1], format="%Y%m%d%H%M")) != time:
        raise InputFileError(f"{path}: time coordinate {iso(time)} disagrees with the file name")
    return time


def _decode(ds: xr.Dataset, channels: Sequence[str], path: Path) -> tuple[np.ndarray, list[str]]:
    """(channel, y, x) float32 physical values (K) in the source geometry; NaN for fill."""
    present = [str(v) for v in ds["variable"].values]
    missing = [c for c in channels if c not in present]
    if missing:
        raise InputFileError(f"{path}: channel(s) {', '.join(missing)} absent (present: {', '.join(present)})")
    data = ds["data"].isel(time=0).transpose("variable", "y_geostationary", "x_geostationary")
    try:
        raw = np.asarray(data.sel(variable=list(channels)).values)
    except Exception as exc:
        raise InputFileError(f"{path}: corrupt data chunks ({exc})") from exc
    fill = _float(ds["data"].attrs.get("_FillValue", ds["data"].encoding.get("_FillValue")))
    out = np.empty(raw.shape, dtype="float32")
    sources = []
    for i, ch in enumerate(channels):
        lo, hi, source = _scaling(ds, ch, path)
        r = raw[i].astype("float32")
        bad = (r < 0) | (r > RAW_MAX) | ((r == fill) if fill is not None else False)
        out[i] = np.where(bad, np.nan, lo + r / RAW_MAX * (hi - lo))
        sources.append(source)
    return out, sources


RSS_MINUTES = 5  # Rapid Scan Service repeat cycle


def read_satip(path: str | Path, area: str = DEFAULT_AREA, channels: Sequence[str] = DEFAULT_CHANNELS,
               cache_dir: str | Path | None = None) -> xr.Dataset:
    """Read one Satip zipped-Zarr slot to ``bt(channel, y, x)`` brightness temperature
    (K) on ``area``.  ``time`` is the nominal slot start (UTC): the file's label minus
    the 5-minute Rapid Scan repeat cycle.  NaN outside the cropped image and for fill values.  The
    resampling look-up table is cached in ``cache_dir`` when given."""
    path = Path(path)
    channels = list(channels)
    if not channels:
        raise InputFileError(f"{path}: no channel requested")
    store, ds = _open(path)
    try:
        file_time = _slot_time(ds, path)
        time = file_time - pd.Timedelta(minutes=RSS_MINUTES)
        src = _source_area(ds, path)
        values, sources = _decode(ds, channels, path)
        attrs = dict(platform_name=str(ds.attrs.get("platform_name", "unknown")), scan_start_time=_scan_start(ds))
    finally:
        ds.close()
        _close(store)
    lut = get_lut(src, get_area(area), cache_dir)
    rows, cols = lut.window()
    bt = lut.apply(values[:, rows, cols])
    return seviri_slot(bt, channels, time, area, platform_name=attrs["platform_name"], sensor="seviri",
                       reader="satip_zarr", source_files=[path.name], scan_start_time=attrs["scan_start_time"],
                       file_time=iso(file_time),
                       scaling_source="; ".join(sorted(set(sources))), resampling="nearest (cached LUT)")


def _scan_start(ds: xr.Dataset) -> str:
    """Start of the scan (ISO, UTC) from satpy's stored ``time_parameters`` / ``start_time``."""
    tp = ds.attrs.get("time_parameters")
    try:
        parsed = yaml.safe_load(tp) if isinstance(tp, str) else tp
        start = (parsed or {}).get("nominal_start_time") or ds.attrs["start_time"]
        return to_utc(start).isoformat()
    except Exception:
        return ""
