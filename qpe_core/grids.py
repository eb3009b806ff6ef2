"""Named target grids as pyresample ``AreaDefinition`` objects, and helpers that
put CF coordinates and a CRS on xarray objects defined on them.

Grid coordinates are pixel centres in metres of the grid's projection;
``y`` decreases with the row index (north up), as in pyresample.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xarray as xr
from pyproj import CRS
from pyresample.geometry import AreaDefinition

from qpe_core.errors import ConfigError

OPERA_PROJ = "+proj=laea +lat_0=55.0 +lon_0=10.0 +x_0=1950000.0 +y_0=-2100000.0 +units=m +ellps=WGS84"


@dataclass(frozen=True)
class GridSpec:
    """A named grid: projection, size (pixels) and extent (metres)."""

    name: str
    description: str
    crs: str
    width: int
    height: int
    extent: tuple[float, float, float, float]  # (x_min, y_min, x_max, y_max), outer edges

    @property
    def resolution_m(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.extent
        return (x1 - x0) / self.width, (y1 - y0) / self.height


GRIDS: dict[str, GridSpec] = {
    spec.name: spec
    for spec in (
        GridSpec(
            name="france-3km",
            description="Metropolitan France and Corsica, LAEA Europe (EPSG:3035), 3 km, 384 x 384",
            crs="EPSG:3035",
            width=384,
            height=384,
            extent=(3_150_000.0, 2_000_000.0, 4_302_000.0, 3_152_000.0),
        ),
        GridSpec(
            name="europe-opera-4km",
            description="EUMETNET OPERA composite LAEA grid (2 km, 1900 x 2200) coarsened x2: 4 km, 950 x 1100",
            crs=OPERA_PROJ,
            width=950,
            height=1100,
            extent=(0.0, -4_400_000.0, 3_800_000.0, 0.0),
        ),
    )
}

DEFAULT_AREA = "france-3km"


def area_names() -> list[str]:
    return list(GRIDS)


def get_spec(name: str) -> GridSpec:
    try:
        return GRIDS[name]
    except KeyError:
        raise ConfigError(f"unknown area {name!r}; known areas: {', '.join(GRIDS)}") from None


@lru_cache(maxsize=None)
def get_area(name: str = DEFAULT_AREA) -> AreaDefinition:
    """The pyresample ``AreaDefinition`` of a named grid."""
    spec = get_spec(name)
    return AreaDefinition(
        spec.name, spec.description, spec.name, CRS.from_user_input(spec.crs),
        spec.width, spec.height, spec.extent,
    )


def grid_xy(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in metres; ``y`` decreasing."""
    x, y = get_area(name).get_proj_vectors()
    return np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")


def grid_coords(name: str) -> dict[str, xr.DataArray]:
    """CF coordinate variables ``x``, ``y`` for a named grid."""
    x, y = grid_xy(name)
    return {
        "x": xr.DataArray(x, dims="x", attrs={
            "standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection",
            "units": "m", "axis": "X"}),
        "y": xr.DataArray(y, dims="y", attrs={
            "standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection",
            "units": "m", "axis": "Y"}),
    }


def crs_attrs(name: str) -> dict:
    """CF grid-mapping attributes (plus ``crs_wkt`` and ``spatial_ref``) of a named grid."""
    crs = CRS.from_user_input(get_spec(name).crs)
    attrs = crs.to_cf()
    attrs["spatial_ref"] = attrs["crs_wkt"]
    return attrs


def attach_grid(obj: xr.Dataset | xr.DataArray, name: str):
    """Return ``obj`` with grid coordinates, a ``spatial_ref`` grid-mapping variable and
    ``grid_mapping`` attributes on every data variable.  Its last two dims must be (y, x)."""
    spec = get_spec(name)
    obj = obj.assign_coords(grid_coords(name))
    obj = obj.assign_coords(spatial_ref=xr.DataArray(np.int32(0), attrs=crs_attrs(name)))
    obj.attrs["area"] = spec.name
    if isinstance(obj, xr.Dataset):
        for var in obj.data_vars.values():
            if {"y", "x"} <= set(var.dims):
                var.attrs["grid_mapping"] = "spatial_ref"
    else:
        obj.attrs["grid_mapping"] = "spatial_ref"
    return obj


def lonlats(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of pixel centres, shape (height, width)."""
    lon, lat = get_area(name).get_lonlats()
    return np.asarray(lon), np.asarray(lat)
