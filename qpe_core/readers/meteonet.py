"""Météo-France MeteoNet radar samples (``.npz``) -> radar slots (rain in mm/h) on a named grid.

File contents (MeteoNet documentation, "Rain Radar"; checked on the samples):

* ``data`` (time, lat, lon) int16, ``dates`` (datetime per map, UTC),
  ``miss_dates`` (maps missing from the period).  5-minute steps; files cover
  days 1-9, 10-20 and 21-end of a month (suffix ``.1``, ``.2``, ``.3``).
* ``rainfall_<ZONE>_<YYYY>_<MM>.<part>.npz``: rainfall accumulated over the
  5-minute step in hundredths of a millimetre, -1 = missing.  Rain rate
  (mm/h) = value / 100 * 60 / 5 = 0.12 * value (the mean rate over the 5 min).
* ``reflectivity_old_<ZONE>_...npz``: reflectivity in dBZ as the lower bound of
  its class (0 = below 8 dBZ, 8, 16, then 1-dBZ classes 21..70), 255 = missing;
  converted with Z = a R^b (default 200, 1.6, the Météo-France relation): 0 ->
  0 mm/h.
* ``radar_coords_<ZONE>.npz``: ``lats``/``lons`` of pixel centres, a regular
  0.01° lon/lat grid (EPSG:4326), NW: 51.89-46.25 N, 5.84 W-1.99 E; SE:
  46.25-41.10 N, 2.00-9.84 E.

Times: the ``dates`` array gives each map's time; it is used as the slot time
as is (naive UTC).  MeteoNet does not document whether that time starts or
ends the 5-minute accumulation; Météo-France labels accumulations by their
end, which is recorded as an assumption in the ``time_convention`` attribute.
If a file lacks ``dates``, times are rebuilt from the file name (zone, year,
month, part) as every 5-minute step of the period minus ``miss_dates``, and
the ``time_source`` attribute says so.  All steps are returned; the attribute
``on_15min_grid`` (1/0) marks the steps the 15-minute archive uses.
"""

from __future__ import annotations

import calendar
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from pyresample.geometry import AreaDefinition, SwathDefinition

from qpe_core.errors import InputFileError
from qpe_core.readers.odim import dbz_to_rain
from qpe_core.readers.radar_qc import quality_control
from qpe_core.readers.regrid import get_regridder
from qpe_core.readers.safe_npz import safe_npz
from qpe_core.slots import radar_slot

STEP_MINUTES = 5
RAIN_FACTOR = 60.0 / STEP_MINUTES / 100.0  # 1/100 mm per 5 min -> mm/h
_NAME = re.compile(r"^(?P<kind>rainfall|reflectivity_old)_(?P<zone>[A-Z]+)_(?P<year>\d{4})_(?P<month>\d{2})"
                   r"\.(?P<part>[123])\.npz$")


def read_meteonet(path, area: str = "france-3km", coords=None, zr: tuple[float, float] = (200.0, 1.6),
                  cache_dir=None) -> list[xr.Dataset]:
    """Read a MeteoNet rainfall or reflectivity_old npz as a list of radar slots, one per time step.

    ``coords``: ``None`` (use ``radar_coords_<ZONE>.npz`` next to the file), a path to such a
    file, or a ``(lats, lons)`` pair of 2-D arrays (degrees).  ``rain`` in mm/h, NaN where
    missing and outside the zone; ``zr`` is used for reflectivity files only.
    """
    path = Path(path)
    match = _NAME.match(path.name)
    if match is None:
        raise InputFileError(f"{path}: not a MeteoNet radar file name (expected rainfall_<ZONE>_<YYYY>_<MM>.<1-3>"
                             f".npz or reflectivity_old_...; quality-code files are not rain maps)")
    data, dates, time_source = _load(path, match)
    lats, lons = _coords(path, match["zone"], coords, data.shape[1:])
    regridder = get_regridder(lonlat_source(lats, lons), area, cache_dir)
    kind = match["kind"]
    quality_maps, quality_file = _quality_maps(path, match)
    slots = []
    for i, time in enumerate(dates):
        rain, removed = quality_control(regridder.apply(_to_rain(data[i][regridder.slices], kind, zr)))
        attrs = _attrs(path, kind, match["zone"], time, time_source, regridder.method, zr)
        q = quality_maps.get(pd.Timestamp(time).normalize())
        if q is not None:
            attrs["quality_source"] = f"{quality_file} (daily mean quality code / 100)"
            q = regridder.apply(q[regridder.slices])
        slots.append(radar_slot(rain, time, area, quality=q, qc_removed=removed, **attrs))
    return slots


def _quality_maps(path: Path, match) -> tuple[dict[pd.Timestamp, np.ndarray], str | None]:
    """Daily maps of ``rainfall_mean_quality-code_<ZONE>_<YYYY>_<MM>.<part>.npz`` next to ``path``
    (when there), as quality 0-1 (code / 100; 255 = not assessed -> NaN), keyed by UTC day."""
    qpath = path.with_name(f"rainfall_mean_quality-code_{match['zone']}_{match['year']}_{match['month']}"
                           f".{match['part']}.npz")
    if not qpath.is_file():
        return {}, None
    try:
        with safe_npz(qpath) as z:
            data, days = z["data"], z["dates"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputFileError(f"{qpath}: cannot read MeteoNet quality-code npz: {exc}") from exc
    maps = {}
    for d, code in zip(days, data):
        q = code.astype("float32")
        q[(code < 0) | (code > 100)] = np.nan
        maps[pd.Timestamp(d).normalize()] = q / 100.0
    return maps, qpath.name


def rain_rate(values: np.ndarray, kind: str = "rainfall", zr: tuple[float, float] = (200.0, 1.6)) -> np.ndarray:
    """MeteoNet raw values -> rain rate in mm/h (float32, NaN where missing)."""
    return _to_rain(values, kind, zr)


def _to_rain(values: np.ndarray, kind: str, zr) -> np.ndarray:
    v = np.asarray(values)
    if kind == "rainfall":
        out = v.astype("float32") * np.float32(RAIN_FACTOR)
        out[v < 0] = np.nan
        return out
    out = dbz_to_rain(v, *zr).astype("float32")  # reflectivity_old, dBZ class lower bounds
    out[v == 0] = 0.0
    out[(v == 255) | (v < 0)] = np.nan
    return out


def _load(path: Path, match) -> tuple[np.ndarray, list[pd.Timestamp], str]:
    """``data`` (time, y, x) and the time of each map (see module docstring)."""
    try:
        with safe_npz(path) as z:  # 'dates' are pickled datetimes: no other pickle code runs
            if "data" not in z.files:
                raise InputFileError(f"{path}: MeteoNet npz has no 'data' array (found {', '.join(z.files)})")
            data = z["data"]
            dates = z["dates"] if "dates" in z.files else None
            missing = z["miss_dates"] if "miss_dates" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputFileError(f"{path}: cannot read MeteoNet npz: {exc}") from exc
    if data.ndim != 3:
        raise InputFileError(f"{path}: 'data' must be (time, lat, lon), got shape {data.shape}")
    if dates is not None:
        times = [pd.Timestamp(d) for d in dates]
        source = "npz 'dates' array"
    else:
        times = _times_from_name(path, match, missing)
        source = "file name period (every 5 min) minus 'miss_dates' (npz has no 'dates')"
    if len(times) != data.shape[0]:
        raise InputFileError(f"{path}: {len(times)} times ({source}) for {data.shape[0]} maps in 'data'")
    return data, times, source


def _times_from_name(path: Path, match, missing) -> list[pd.Timestamp]:
    """Every 5-minute step of the file's period (days 1-9, 10-20 or 21-end) minus ``miss_dates``."""
    year, month, part = int(match["year"]), int(match["month"]), int(match["part"])
    first, last = {1: (1, 9), 2: (10, 20), 3: (21, calendar.monthrange(year, month)[1])}[part]
    start = pd.Timestamp(year, month, first)
    end = pd.Timestamp(year, month, last) + pd.Timedelta(days=1) - pd.Timedelta(minutes=STEP_MINUTES)
    steps = pd.date_range(start, end, freq=f"{STEP_MINUTES}min")
    gone = pd.DatetimeIndex([pd.Timestamp(d) for d in missing]) if missing is not None else pd.DatetimeIndex([])
    return list(steps.difference(gone))


def _coords(path: Path, zone: str, coords, shape) -> tuple[np.ndarray, np.ndarray]:
    if coords is None or isinstance(coords, (str, Path)):
        cpath = Path(coords) if coords is not None else path.with_name(f"radar_coords_{zone}.npz")
        try:
            with np.load(cpath) as z:
                lats, lons = z["lats"], z["lons"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise InputFileError(f"{cpath}: cannot read MeteoNet radar coordinates (lats, lons) "
                                 f"for {path.name}: {exc}") from exc
    else:
        lats, lons = (np.asarray(a, dtype="float64") for a in coords)
    if lats.shape != tuple(shape) or lons.shape != tuple(shape):
        raise InputFileError(f"{path}: coordinates {lats.shape} do not match the maps {tuple(shape)}")
    return lats, lons


def lonlat_source(lats: np.ndarray, lons: np.ndarray):
    """An EPSG:4326 ``AreaDefinition`` when the centres form a regular north-up lon/lat grid
    (the MeteoNet case), else a ``SwathDefinition``."""
    ny, nx = lats.shape
    dlon = (lons[0, -1] - lons[0, 0]) / (nx - 1) if nx > 1 else 0.0
    dlat = (lats[0, 0] - lats[-1, 0]) / (ny - 1) if ny > 1 else 0.0
    if dlon > 0 and dlat > 0:
        grid_lon = lons[0, 0] + dlon * np.arange(nx)[None, :]
        grid_lat = lats[0, 0] - dlat * np.arange(ny)[:, None]
        if np.abs(lons - grid_lon).max() < 1e-3 * dlon and np.abs(lats - grid_lat).max() < 1e-3 * dlat:
            extent = (lons[0, 0] - dlon / 2, lats[-1, 0] - dlat / 2, lons[0, -1] + dlon / 2, lats[0, 0] + dlat / 2)
            extent = tuple(round(float(v), 6) for v in extent)
            return AreaDefinition("meteonet", "MeteoNet radar grid", "lonlat", "EPSG:4326", nx, ny, extent)
    return SwathDefinition(lons=lons, lats=lats)


def _attrs(path: Path, kind: str, zone: str, time: pd.Timestamp, time_source: str, method: str, zr) -> dict:
    attrs = {
        "source_file": path.name,
        "source": "Meteo-France MeteoNet radar sample (npz)",
        "product": kind,
        "zone": zone,
        "time_source": time_source,
        "time_convention": "map time as given by the file (UTC); assumed end of the 5-min accumulation "
                           "(Meteo-France convention, not stated by MeteoNet)" if kind == "rainfall"
                           else "map time as given by the file (UTC)",
        "on_15min_grid": int(time == time.floor("15min")),
        "regrid_method": method,
        "regrid_rule": "mean of covered source pixels; NaN if < half covered or outside the zone",
    }
    if kind == "rainfall":
        attrs["conversion"] = "5-min accumulation in 1/100 mm x 0.12 = mean rain rate in mm/h; -1 -> NaN"
    else:
        a, b = float(zr[0]), float(zr[1])
        attrs["conversion"] = "dBZ class lower bound -> Z = a R^b; 0 (< 8 dBZ) -> 0 mm/h; 255 -> NaN"
        attrs.update(zr_relation=f"Z = {a:g} R^{b:g} (Z in mm6 m-3, R in mm/h)", zr_a=a, zr_b=b)
    return attrs
