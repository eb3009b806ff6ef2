"""OPERA ODIM HDF5 composites -> radar slot (rain rate in mm/h) on a named grid.

Layouts (both read):

* **ODYSSEY** (OPERA composites up to mid-2024, ``ODIM_H5/V2_0``): one quantity per
  ``datasetN``; ``quantity``, ``gain``, ``offset``, ``nodata``, ``undetect`` sit in
  ``datasetN/what`` and the array in ``datasetN/data1/data`` (float64, RATE in
  mm/h, ``QIND`` 0-1 in a second dataset).
* **NIMBUS / CIRRUS** (from 2024-07, ``ODIM_H5/V2_4``): the quantity and its
  scaling sit in ``datasetN/dataM/what`` (ODIM 2.4 standard); DBZH is at 1 km
  (3800 x 4400), RATE/ACRR at 2 km; data are often packed integers.  Quality
  may also come as ``dataM/qualityK`` groups.

Attributes are looked up with ODIM inheritance: ``dataM/what`` overrides
``datasetN/what``.  ``nodata`` -> NaN (no coverage), ``undetect`` -> 0 mm/h.
``DBZH`` (dBZ) is converted with Z = a R^b (Z in mm^6 m^-3, R in mm/h; default
Marshall-Palmer a=200, b=1.6) before area averaging, so rates, not dBZ, are
averaged.  The source grid is built from ``where/projdef`` and the corner
lon/lats (outer pixel corners, per ODIM); ``what/date`` + ``what/time`` give the
nominal time (UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from pyresample.geometry import AreaDefinition

from qpe_core.errors import InputFileError
from qpe_core.readers.radar_qc import quality_control
from qpe_core.readers.regrid import get_regridder
from qpe_core.slots import radar_slot

RAIN_QUANTITIES = ("RATE", "DBZH")
QUALITY_QUANTITY = "QIND"


@dataclass(frozen=True)
class OdimField:
    """One 2-D array of an ODIM file with its merged ``what`` attributes."""

    path: str  # e.g. "/dataset1/data1"
    quantity: str
    what: dict
    layout: str  # where the quantity was found: "dataset" (ODYSSEY) or "data" (ODIM 2.4 / NIMBUS)


def read_odim(path, area: str = "france-3km", zr: tuple[float, float] = (200.0, 1.6),
              cache_dir=None) -> xr.Dataset:
    """Read an OPERA ODIM HDF5 composite as a radar slot on ``area``.

    ``rain`` in mm/h (RATE directly, DBZH through Z = a R^b with ``zr=(a, b)``),
    NaN outside coverage, 0 where undetect, NaN where :mod:`~qpe_core.readers.radar_qc` removed a pixel
    (counts per rule in the ``qc_removed`` attribute); ``quality`` (QIND, 0-1) when present, NaN
    where OPERA leaves it undefined (most dry pixels: not assessed).
    Raises :class:`InputFileError` naming the file (and field) on bad input.
    """
    path = Path(path)
    with _open(path) as f:
        root_what = _attrs(_group(f, "what", path))
        where = _group(f, "where", path)
        time = _nominal_time(root_what, path)
        source = source_area(where, path)
        fields = list_fields(f)
        rain_field = _pick_rain(fields, path)
        quality_field = _pick_quality(fields, rain_field)
        regridder = get_regridder(source, area, cache_dir)
        rain = _read_rain(f, rain_field, regridder.slices, zr, source, path)
        quality = None
        if quality_field is not None:
            quality = _read_quality(f, quality_field, regridder.slices, source, path)
        attrs = _slot_attrs(f, path, rain_field, root_what, zr, regridder.method, source)
    rain_t, removed = quality_control(regridder.apply(rain))
    quality_t = regridder.apply(quality) if quality is not None else None
    return radar_slot(rain_t, time, area, quality=quality_t, qc_removed=removed, **attrs)


def dbz_to_rain(dbz: np.ndarray, a: float = 200.0, b: float = 1.6) -> np.ndarray:
    """Rain rate (mm/h) from reflectivity (dBZ) via Z = a R^b, Z = 10^(dBZ/10) mm^6 m^-3."""
    z = np.power(10.0, np.asarray(dbz, dtype="float64") / 10.0)
    return np.power(z / a, 1.0 / b)


# --------------------------------------------------------------------------- file structure


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise InputFileError(f"{path}: radar file does not exist")
    if not h5py.is_hdf5(path):
        raise InputFileError(f"{path}: not an HDF5 file (expected an OPERA ODIM HDF5 composite)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open HDF5 file: {exc}") from exc


def _group(parent, name: str, path: Path):
    obj = parent.get(name)
    if not isinstance(obj, h5py.Group):
        raise InputFileError(f"{path}: missing ODIM group '{name}' (not an ODIM composite?)")
    return obj


def _attrs(group) -> dict:
    """Attributes of an HDF5 group as plain Python values (bytes -> str)."""
    out = {}
    for key, value in group.attrs.items():
        if isinstance(value, (bytes, np.bytes_)):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _sub_attrs(group, name: str) -> dict:
    sub = group.get(name)
    return _attrs(sub) if isinstance(sub, h5py.Group) else {}


def _numbered(group, prefix: str) -> list[str]:
    pattern = re.compile(rf"{prefix}(\d+)$")
    names = [(int(m.group(1)), k) for k in group.keys() if (m := pattern.match(k))]
    return [k for _, k in sorted(names)]


def list_fields(f: h5py.File) -> list[OdimField]:
    """All ``datasetN/dataM`` (and ``qualityK``) arrays with merged ``what`` attributes, in file order."""
    fields = []
    for ds_name in _numbered(f, "dataset"):
        ds = f[ds_name]
        ds_what = _sub_attrs(ds, "what")
        for da_name in _numbered(ds, "data"):
            da = ds[da_name]
            da_what = _sub_attrs(da, "what")
            what = {**ds_what, **da_what}
            layout = "data" if "quantity" in da_what else "dataset"
            if isinstance(da.get("data"), h5py.Dataset):
                fields.append(OdimField(f"/{ds_name}/{da_name}", _quantity(what), what, layout))
            fields.extend(_quality_fields(da, f"/{ds_name}/{da_name}"))
        fields.extend(_quality_fields(ds, f"/{ds_name}"))
    return fields


def _quality_fields(group, prefix: str) -> list[OdimField]:
    """``qualityK`` groups; a quality group does not inherit its parent's quantity."""
    out = []
    for q_name in _numbered(group, "quality"):
        q = group[q_name]
        what = _sub_attrs(q, "what")
        task = str(_sub_attrs(q, "how").get("task", ""))
        quantity = _quantity(what) or ("QIND" if "QIND" in task.upper() else "")
        if isinstance(q.get("data"), h5py.Dataset):
            out.append(OdimField(f"{prefix}/{q_name}", quantity, what, "quality"))
    return out


def _quantity(what: dict) -> str:
    return str(what.get("quantity", "")).strip().upper()


def _pick_rain(fields: list[OdimField], path: Path) -> OdimField:
    for quantity in RAIN_QUANTITIES:
        for field in fields:
            if field.quantity == quantity:
                return field
    found = sorted({fl.quantity or "<none>" for fl in fields})
    raise InputFileError(
        f"{path}: no RATE or DBZH dataset (field what/quantity); quantities found: "
        f"{', '.join(found) if found else 'none (no datasetN/dataM/data arrays)'}")


def _pick_quality(fields: list[OdimField], rain: OdimField) -> OdimField | None:
    """The QIND field of the rain field's dataset, else the first QIND of the file."""
    qind = [fl for fl in fields if fl.quantity == QUALITY_QUANTITY]
    dataset = rain.path.split("/")[1]
    same = [fl for fl in qind if fl.path.split("/")[1] == dataset]
    return (same or qind or [None])[0]


# --------------------------------------------------------------------------- metadata


def _nominal_time(root_what: dict, path: Path) -> pd.Timestamp:
    """Nominal time (naive UTC) from ``what/date`` (YYYYMMDD) and ``what/time`` (HHMMSS)."""
    date, time = root_what.get("date"), root_what.get("time")
    if not date or not time:
        raise InputFileError(f"{path}: missing nominal time (what/date and what/time)")
    try:
        return pd.Timestamp(pd.to_datetime(f"{date}{str(time).ljust(6, '0')}", format="%Y%m%d%H%M%S"))
    except ValueError as exc:
        raise InputFileError(f"{path}: bad nominal time what/date={date!r} what/time={time!r}") from exc


def source_area(where, path) -> AreaDefinition:
    """Source grid from ``where``: ``projdef``, ``xsize``/``ysize`` and the outer corner lon/lats
    (``LL_lon``/``LL_lat``, ``UR_lon``/``UR_lat``); extents snapped to 1 m (projected CRS)."""
    w = _attrs(where)
    projdef = w.get("projdef")
    if not projdef:
        raise InputFileError(f"{path}: unknown projection: where/projdef is missing")
    try:
        crs = CRS.from_user_input(str(projdef).strip())
    except CRSError as exc:
        raise InputFileError(f"{path}: unknown projection where/projdef={projdef!r}: {exc}") from exc
    xsize, ysize = (int(_where_number(w, key, path)) for key in ("xsize", "ysize"))
    corners = [_where_number(w, key, path) for key in ("LL_lon", "LL_lat", "UR_lon", "UR_lat")]
    transformer = Transformer.from_crs(CRS.from_epsg(4326), crs, always_xy=True)
    x0, y0 = transformer.transform(corners[0], corners[1])
    x1, y1 = transformer.transform(corners[2], corners[3])
    digits = 0 if crs.is_projected else 6
    extent = tuple(round(float(v), digits) for v in (x0, y0, x1, y1))
    if not (np.all(np.isfinite(extent)) and extent[2] > extent[0] and extent[3] > extent[1]):
        raise InputFileError(f"{path}: corner lon/lats in where/ do not give a valid extent in {projdef!r}")
    _check_scale(w, extent, xsize, ysize, path)
    return AreaDefinition("odim_source", "ODIM composite grid", "odim", crs, xsize, ysize, extent)


def _where_number(w: dict, key: str, path: Path) -> float:
    try:
        return float(w[key])
    except KeyError:
        raise InputFileError(f"{path}: missing grid attribute where/{key}") from None
    except (TypeError, ValueError):
        raise InputFileError(f"{path}: bad grid attribute where/{key}={w[key]!r}") from None


def _check_scale(w: dict, extent, xsize: int, ysize: int, path: Path) -> None:
    for key, size, span in (("xscale", xsize, extent[2] - extent[0]), ("yscale", ysize, extent[3] - extent[1])):
        if key in w and abs(span / size - float(w[key])) > 0.01 * float(w[key]):
            raise InputFileError(f"{path}: where/{key}={w[key]} disagrees with the corners "
                                 f"({span / size:.1f} per pixel)")


def _nodes(f: h5py.File) -> int:
    """Number of radars listed in ``how/nodes`` (root, else first dataset); -1 if absent."""
    candidates = [_sub_attrs(f, "how")] + [_sub_attrs(f[d], "how") for d in _numbered(f, "dataset")[:1]]
    for how in candidates:
        nodes = how.get("nodes")
        if nodes:
            return len([n for n in re.split(r"[,\s]+", str(nodes)) if n.strip("'\"")])
    return -1


def _slot_attrs(f, path: Path, field: OdimField, root_what: dict, zr, method: str, source) -> dict:
    a, b = float(zr[0]), float(zr[1])
    conventions = f.attrs.get("Conventions", b"")
    return {
        "source_file": path.name,
        "source": "OPERA ODIM HDF5 composite",
        "odim_conventions": conventions.decode() if isinstance(conventions, bytes) else str(conventions),
        "odim_path": field.path,
        "odim_layout": {"dataset": "ODYSSEY (quantity in datasetN/what)",
                        "data": "ODIM 2.4 / NIMBUS (quantity in datasetN/dataM/what)"}.get(field.layout, field.layout),
        "quantity": field.quantity,
        "product": str(field.what.get("product", root_what.get("object", ""))),
        "odim_source": str(root_what.get("source", "")),
        "nodes_count": _nodes(f),
        "zr_relation": f"Z = {a:g} R^{b:g} (Z in mm6 m-3, R in mm/h)" if field.quantity == "DBZH"
        else "none: RATE read directly in mm/h",
        "zr_a": a,
        "zr_b": b,
        "source_grid": f"{source.width} x {source.height} pixels of {source.pixel_size_x:g} x "
                       f"{source.pixel_size_y:g} (projection units)",
        "source_projdef": str(_attrs(f["where"]).get("projdef", "")),
        "regrid_method": method,
        "regrid_rule": "mean of covered source pixels; NaN if < half covered or outside coverage",
    }


# --------------------------------------------------------------------------- data


def _decode(f, field: OdimField, slices, source: AreaDefinition, path: Path):
    """Physical values (raw * gain + offset) of the source window with NaN at ``nodata`` and
    ``undetect``, and the boolean ``undetect`` mask."""
    dset = f[field.path + "/data"]
    if dset.shape != (source.height, source.width):
        raise InputFileError(f"{path}: {field.path}/data has shape {dset.shape}, where/ysize,xsize say "
                             f"{(source.height, source.width)}")
    raw = dset[slices]
    what = field.what
    values = raw.astype("float64") * float(what.get("gain", 1.0)) + float(what.get("offset", 0.0))
    undetect = raw == what["undetect"] if "undetect" in what else np.zeros(raw.shape, dtype=bool)
    if "nodata" in what:
        values[raw == what["nodata"]] = np.nan
    values[undetect] = np.nan
    return values, undetect


def _read_rain(f, field: OdimField, slices, zr, source, path: Path) -> np.ndarray:
    """Rain rate (mm/h) of the source window: RATE as is, DBZH through Z = a R^b; undetect -> 0."""
    values, undetect = _decode(f, field, slices, source, path)
    if field.quantity == "DBZH":
        values = dbz_to_rain(values, *zr)
    values[undetect] = 0.0
    return values


def _read_quality(f, field: OdimField, slices, source, path: Path) -> np.ndarray:
    """Quality index (0-1) of the source window; nodata and undetect -> NaN."""
    values, _ = _decode(f, field, slices, source, path)
    return np.clip(values, 0.0, 1.0)
