"""NWC SAF Convective Rainfall Rate (CRR) netCDF -> rain slot (mm/h) on a named grid.

The CRR of the NWC SAF GEO software (v2016 and later, e.g. ``S_NWC_CRR_MSG4_Europe-VISIR_
20180601T120000Z.nc``) is an operational satellite rain-rate product; here it is an external
*deterministic baseline* for the evaluation (:mod:`qpe_core.evaluation`).

What is read
------------
* ``crr_intensity`` (uint16, ``scale_factor`` 0.1, units ``mm/h``): the instantaneous convective
  rain rate; 0 = no convective rain, ``_FillValue`` (65535) = no product (space, outside the
  region, missing inputs) -> NaN.  The class field ``crr`` and the hourly ``crr_accum`` are not
  used.  Values are decoded with the file's own ``scale_factor``/``add_offset``/``_FillValue``.
* Time: the global attribute ``nominal_product_time`` (slot start, UTC; the scan of the region
  itself is a few minutes later, ``time_coverage_start``), else the ``YYYYMMDDTHHMMSSZ`` stamp of
  the file name.

Projection
----------
The product lies on the satellite's ``geos`` projection (``gdal_projection``, e.g. ``+proj=geos
+a=6378137 +b=6356752.3 +lon_0=0 +h=35785863``; the CGMS form with ``h`` = 42164 km from the Earth's
centre is not used).  The raster is placed by ``gdal_geotransform_table`` (upper-left *outer* corner
and pixel size in metres, 3 km at nadir), cross-checked against the ``nx``/``ny`` pixel-centre
coordinates when present.  The resulting ``AreaDefinition`` is regridded onto the target grid with
:mod:`qpe_core.readers.regrid` (nearest source pixel where CRR pixels are as large as or larger than
the target cells, as over France on the 3 km grid; area average otherwise); target cells outside
the product footprint are NaN.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS
from pyproj.exceptions import CRSError
from pyresample.geometry import AreaDefinition

from qpe_core.errors import InputFileError
from qpe_core.readers.regrid import get_regridder
from qpe_core.slots import radar_slot
from qpe_core.timeutil import to_utc

RAIN_VARIABLE = "crr_intensity"
STAMP = re.compile(r"(\d{8}T\d{6})Z?")
MATCH_MINUTES = 7.0


def crr_time(path: str | Path, attrs: dict | None = None) -> pd.Timestamp:
    """Nominal time (naive UTC) of a CRR file: ``nominal_product_time``, else the file-name stamp."""
    nominal = (attrs or {}).get("nominal_product_time")
    if nominal:
        try:
            return to_utc(str(nominal))
        except (ValueError, TypeError):
            pass
    m = STAMP.search(Path(path).name)
    if not m:
        raise InputFileError(f"{path}: no nominal time (attribute nominal_product_time or YYYYMMDDTHHMMSSZ "
                             "in the file name)")
    return pd.Timestamp(pd.to_datetime(m.group(1), format="%Y%m%dT%H%M%S"))


def source_area(ds: xr.Dataset, path: str | Path) -> AreaDefinition:
    """The product raster as a pyresample ``AreaDefinition`` (geos, from the GDAL attributes)."""
    proj = ds.attrs.get("gdal_projection")
    gt = ds.attrs.get("gdal_geotransform_table")
    if proj is None or gt is None:
        raise InputFileError(f"{path}: missing gdal_projection / gdal_geotransform_table (not an NWC SAF "
                             "GEO product?)")
    try:
        crs = CRS.from_user_input(str(proj))
    except CRSError as exc:
        raise InputFileError(f"{path}: bad gdal_projection {proj!r}: {exc}") from None
    x0, dx, _, y0, _, dy = (float(v) for v in np.asarray(gt, dtype="float64").ravel()[:6])
    ny, nx = ds[RAIN_VARIABLE].shape[-2:]
    extent = (x0, y0 + ny * dy, x0 + nx * dx, y0)  # dy < 0: (x_min, y_min, x_max, y_max) outer edges
    for dim, first, step in (("nx", x0 + dx / 2, dx), ("ny", y0 + dy / 2, dy)):
        if dim in ds.coords and ds[dim].size:
            got = float(ds[dim].values[0])
            if abs(got - first) > abs(step) / 2:
                raise InputFileError(f"{path}: {dim}[0] = {got:.0f} m does not match the geotransform "
                                     f"pixel centre {first:.0f} m")
    return AreaDefinition("crr", str(ds.attrs.get("region_name", "NWC SAF region")), "crr", crs,
                          int(nx), int(ny), extent)


def read_crr(path: str | Path, area: str = "france-3km", cache_dir: str | Path | None = None) -> xr.Dataset:
    """Read an NWC SAF CRR netCDF file as a rain slot ``rain(y, x)`` in mm/h on ``area``.

    NaN where the product has no value; attributes name the source file, product and satellite.
    Raises :class:`InputFileError` naming the file on bad input.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: CRR file does not exist")
    try:
        ds = xr.open_dataset(path, mask_and_scale=True, decode_times=False)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot open as netCDF: {exc}") from None
    with ds:
        if RAIN_VARIABLE not in ds:
            raise InputFileError(f"{path}: no {RAIN_VARIABLE} variable (have {sorted(ds.data_vars)}); "
                                 "not an NWC SAF CRR product?")
        units = str(ds[RAIN_VARIABLE].attrs.get("units", "mm/h")).replace(" ", "")
        if units not in ("mm/h", "mmh-1", "mm.h-1", "kgm-2h-1"):
            raise InputFileError(f"{path}: {RAIN_VARIABLE} has units {units!r}, expected mm/h")
        time = crr_time(path, ds.attrs)
        source = source_area(ds, path)
        with np.errstate(invalid="ignore"):  # off-disk corners of the geos raster are inf
            regridder = get_regridder(source, area, cache_dir)
        window = ds[RAIN_VARIABLE][regridder.slices].values.astype("float32")
        attrs = {"source_file": path.name, "product": str(ds.attrs.get("product_name", "CRR")),
                 "source": str(ds.attrs.get("source", "")),
                 "satellite": str(ds.attrs.get("satellite_identifier", "")),
                 "region": str(ds.attrs.get("region_id", "")), "variable": RAIN_VARIABLE,
                 "regrid_method": regridder.method}
    rain = np.where(window >= 0, window, np.nan)  # decoded fill -> NaN already; guard odd negatives
    return radar_slot(regridder.apply(rain), time, area, **attrs)


class CRRFiles:
    """CRR files of a directory, a glob or a list, indexed by nominal time (from the file names, so no
    file is opened until it is read); :meth:`nearest` matches a slot within ``MATCH_MINUTES``."""

    def __init__(self, paths: str | Path | Iterable[str | Path]):
        files = _expand(paths)
        stamped = []
        for f in files:
            try:
                stamped.append((crr_time(f), f))
            except InputFileError:
                continue
        if not stamped:
            raise InputFileError(f"no CRR netCDF file with a YYYYMMDDTHHMMSSZ time stamp found in {paths}")
        stamped.sort()
        self.times = [t for t, _ in stamped]
        self.paths = [p for _, p in stamped]

    def __len__(self) -> int:
        return len(self.paths)

    def nearest(self, time, tolerance_minutes: float = MATCH_MINUTES) -> Path | None:
        """The file whose nominal time is nearest to ``time`` (UTC) within the tolerance, else ``None``."""
        t = to_utc(time)
        i = bisect_left(self.times, t)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self.times):
                d = abs((self.times[j] - t).total_seconds()) / 60.0
                if d <= tolerance_minutes and (best is None or d < best[0]):
                    best = (d, self.paths[j])
        return None if best is None else best[1]


def _expand(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        if p.is_dir():
            return sorted(q for q in p.iterdir() if q.suffix == ".nc")
        if p.is_file():
            return [p]
        matches = sorted(Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.anchor else str(p)))
        if not matches:
            raise InputFileError(f"{paths}: no such CRR file or directory")
        return matches
    return [Path(q) for q in paths]
