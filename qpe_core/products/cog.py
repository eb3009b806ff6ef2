"""Cloud-Optimized GeoTIFFs of the ensemble statistics.

One single-band float32 COG per product (mean, p90 and the exceedance probabilities), at
``<root>/<area>/<YYYY>/<MM>/<DD>/qpe_<YYYYmmddTHHMM>Z_<product>.tif``, ``root`` a local
folder or an ``s3://bucket/prefix`` URL.

Profile: GDAL's COG driver (through rasterio's CreateCopy) with DEFLATE, floating-point
predictor (TIFF predictor 3), 256 x 256 internal tiles, internal overviews (AVERAGE, until
the smallest one fits in a tile), NaN nodata, the grid's CRS and geotransform, and GDAL
metadata tags describing the slot (see :func:`cog_tags`).

Atomicity: the file is written under a temporary name and renamed into place (local), or
written to a local temporary file and uploaded with one PUT to the final key (S3: the
object appears whole or not at all; nothing is ever written under a temporary key).

Determinism: GDAL's GTiff writer stores no creation time (TIFF DateTime) or software tag
unless asked; we pass no such tag, disable PAM side-car files (``GDAL_PAM_ENABLED=NO``),
compress single-threaded (``NUM_THREADS=1``, blocks written in a fixed order), and write
the metadata tags in sorted order from values that depend only on the slot (no wall-clock
timings).  Rewriting a slot from the same ensemble therefore gives identical bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
import xarray as xr
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from qpe_core.atomic import write_atomically
from qpe_core.errors import QpeError
from qpe_core.grids import get_spec
from qpe_core.products.ensemble_stats import (
    PROB_VARS,
    STAT_VARS,
    ensemble_stats,
    product_metadata,
    stat_attrs,
)
from qpe_core.timeutil import to_utc

COG_PRODUCTS: tuple[str, ...] = ("mean", "p90", *PROB_VARS)
BLOCKSIZE = 256
COG_OPTIONS = {
    "COMPRESS": "DEFLATE", "LEVEL": 6, "PREDICTOR": "FLOATING_POINT", "BLOCKSIZE": BLOCKSIZE,
    "OVERVIEWS": "IGNORE_EXISTING", "OVERVIEW_RESAMPLING": "AVERAGE", "BIGTIFF": "NO", "NUM_THREADS": 1,
}
GDAL_ENV = {"GDAL_PAM_ENABLED": "NO", "GDAL_NUM_THREADS": 1}
#: What a failed write of a product file raises: OS and object-store errors, and GDAL's (a full
#: disk gives CPLE_AppDefinedError "Write error", or SystemError "Unknown GDAL Error").
_STORAGE_ERRORS = (OSError, rasterio.errors.RasterioError, CPLE_BaseError, SystemError)


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def product_path(root: str | Path, area: str, valid_time, product: str, ext: str = "tif") -> str:
    """``<root>/<area>/<YYYY>/<MM>/<DD>/qpe_<YYYYmmddTHHMM>Z_<product>.<ext>`` (str; URL kept as URL)."""
    ts = to_utc(valid_time)
    root = str(root).removeprefix("file://").rstrip("/")
    return f"{root}/{area}/{ts:%Y/%m/%d}/qpe_{ts:%Y%m%dT%H%M}Z_{product}.{ext}"


def publish(write, dest: str, storage_options: dict | None = None) -> str:
    """Produce ``dest`` atomically: ``write(tmp_path)`` fills a local temporary file, which is
    then renamed to ``dest`` (local) or uploaded to ``dest`` in one PUT (``s3://``).  Storage
    failures (disk full, object store errors) raise :class:`QpeError` naming ``dest``; nothing
    appears under ``dest`` then."""
    try:
        return _publish(write, dest, storage_options)
    except _STORAGE_ERRORS as exc:
        raise QpeError(f"cannot write {dest} ({type(exc).__name__}: {str(exc)[:300]}); "
                       "nothing was published under that name") from exc


def _publish(write, dest: str, storage_options: dict | None = None) -> str:
    suffix = Path(dest).suffix
    if is_remote(dest):
        import fsspec

        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="qpe-")
        os.close(fd)
        try:
            write(tmp)
            data = Path(tmp).read_bytes()
            fs, path = fsspec.core.url_to_fs(dest, **(storage_options or {}))
            fs.pipe_file(path, data)  # one PutObject below s3fs's multipart size (100 MiB)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest
    return str(write_atomically(dest, lambda p: write(str(p))))


def cog_tags(stats: xr.Dataset, product: str) -> dict[str, str]:
    """GDAL metadata tags of one product COG (all strings, deterministic)."""
    meta = product_metadata(stats)
    attrs = stat_attrs(product)
    tags = {
        "product": product,
        "long_name": attrs["long_name"],
        "units": attrs["units"],
        "valid_time": meta["datetime"],
        "area": str(meta["area"] or stats.attrs.get("area", "")),
        "model_kind": meta["model_kind"],
        "model_card": meta["model_card"],
        "members": str(meta["members"]),
        "seed": str(meta["seed"]),
        "input_slots": ",".join(meta["input_slots"]),
        "missing_inputs": ",".join(meta["missing_inputs"]) or "none",
    }
    if "standard_name" in attrs:
        tags["standard_name"] = attrs["standard_name"]
    for key in ("threshold", "quantile", "relative_to_threshold", "quantile_method"):
        if key in attrs:
            tags[key] = str(attrs[key])
    return dict(sorted(tags.items()))


def _georef(stats: xr.Dataset) -> tuple[CRS, object, bool]:
    """CRS, north-up geotransform and whether rows must be flipped (``y`` increasing)."""
    area = stats.attrs.get("area")
    if area:
        crs = CRS.from_user_input(get_spec(area).crs)
    elif "spatial_ref" in stats.coords and "crs_wkt" in stats["spatial_ref"].attrs:
        crs = CRS.from_wkt(stats["spatial_ref"].attrs["crs_wkt"])
    else:
        raise QpeError("statistics carry no grid: need an 'area' attribute or a 'spatial_ref' crs_wkt")
    x, y = stats["x"].values, stats["y"].values
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    flip = dy > 0
    dy = abs(dy)
    top = float(y.max()) + dy / 2
    return crs, Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, -dy, top), flip


def _write_cog(stats: xr.Dataset, product: str, path: str) -> None:
    data = np.asarray(stats[product].values, dtype="float32")
    crs, transform, flip = _georef(stats)
    if flip:
        data = data[::-1]
    tags = cog_tags(stats, product)
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": "float32", "crs": crs, "transform": transform, "nodata": float("nan")}
    with rasterio.Env(**GDAL_ENV), MemoryFile() as mem:
        with mem.open(**profile) as src:
            src.write(data, 1)
            src.update_tags(**tags)
            src.update_tags(1, units=tags["units"])
            src.set_band_description(1, product)
            src.units = (tags["units"],)
        with mem.open() as src:
            rasterio.shutil.copy(src, path, driver="COG", **COG_OPTIONS)
        # GDAL does not always report a failed write (a full disk can leave a truncated file
        # behind a successful copy): read the file back before it is published.
        with rasterio.open(path) as out:
            back = out.read(1)
            for factor in out.overviews(1):
                out.read(1, out_shape=(max(1, data.shape[0] // factor), max(1, data.shape[1] // factor)))
        if not np.array_equal(back, data, equal_nan=True):
            raise QpeError(f"{path}: the COG written does not read back as the data (incomplete write)")


def _as_stats(ds: xr.Dataset) -> xr.Dataset:
    return ensemble_stats(ds) if "rain" in ds and not set(STAT_VARS) <= set(ds.data_vars) else ds


def write_cog(ds: xr.Dataset, product: str, root: str | Path, storage_options: dict | None = None) -> str:
    """Write one product COG of a slot (``ds``: statistics, or the ensemble itself); returns its path/URL."""
    stats = _as_stats(ds)
    if product not in stats:
        raise QpeError(f"unknown product {product!r}; COG products: {', '.join(COG_PRODUCTS)}")
    area = stats.attrs.get("area") or "grid"
    dest = product_path(root, area, stats["time"].values, product)
    return publish(lambda tmp: _write_cog(stats, product, tmp), dest, storage_options)


def write_cogs(ds: xr.Dataset, root: str | Path, products: tuple[str, ...] = COG_PRODUCTS,
               storage_options: dict | None = None) -> dict[str, str]:
    """Write the COGs of one slot (``ds``: statistics, or the ensemble); returns {product: path/URL}."""
    stats = _as_stats(ds)
    return {p: write_cog(stats, p, root, storage_options) for p in products}
