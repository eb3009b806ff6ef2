"""Nearest-neighbour resampling of geostationary images onto a named grid through a
cached look-up table (LUT).

The source is a regular grid in its own projection (SEVIRI: ``geos`` at the
satellite's sub-longitude).  Each target pixel centre is projected *into* the
source projection and the source cell that contains it is taken: an exact
nearest neighbour in image space, with no search radius.  Target pixels that
fall outside the source grid (a cropped image) or off the Earth disk (pyproj
returns ``inf``) get index ``-1`` and come out NaN.  Missing data in the
source (space, missing segments) stay NaN because the LUT depends on geometry
only.

The LUT is a pure function of (source area, target area), so it is computed
once and stored in ``cache_dir`` as ``.npy`` keyed by a hash of both areas'
CRS, extent and shape (the satellite's longitude is part of the CRS), and
memoised in the process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyproj import Transformer
from pyresample.geometry import AreaDefinition

from qpe_core.atomic import write_stream_atomically

LUT_VERSION = 1
_MEMO: dict[str, "NearestLUT"] = {}


@dataclass(frozen=True)
class NearestLUT:
    """Flat source index per target pixel (``-1``: no source pixel).

    ``index`` has the target shape (rows, cols); ``source_shape`` is the
    (rows, cols) of the source image the indices refer to."""

    index: np.ndarray
    source_shape: tuple[int, int]

    @property
    def valid(self) -> np.ndarray:
        return self.index >= 0

    def window(self) -> tuple[slice, slice]:
        """The smallest (row, col) window of the source that the LUT reads."""
        idx = self.index[self.valid]
        if idx.size == 0:
            return slice(0, 0), slice(0, 0)
        rows, cols = np.divmod(idx, self.source_shape[1])
        return slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)

    def apply(self, window_data: np.ndarray) -> np.ndarray:
        """Resample ``window_data`` (..., rows, cols), cut to :meth:`window`, to the
        target grid; float32, NaN where the LUT has no source pixel."""
        rs, cs = self.window()
        data = np.asarray(window_data, dtype="float32")
        if data.shape[-2:] != (rs.stop - rs.start, cs.stop - cs.start):
            raise ValueError(f"window data has shape {data.shape}, LUT window is "
                             f"{rs.stop - rs.start} x {cs.stop - cs.start}")
        out = np.full(data.shape[:-2] + self.index.shape, np.nan, dtype="float32")
        valid = self.valid
        rows, cols = np.divmod(self.index[valid], self.source_shape[1])
        out[..., valid] = data[..., rows - rs.start, cols - cs.start]
        return out

    def coverage(self) -> float:
        """Fraction of target pixels that have a source pixel (geometry only)."""
        return float(self.valid.mean())


def area_fingerprint(area: AreaDefinition) -> str:
    """Stable hash of an area's CRS (WKT), shape and extent (rounded to 1 mm)."""
    extent = ",".join(f"{v:.3f}" for v in area.area_extent)
    key = f"{area.crs.to_wkt()}|{area.shape}|{extent}"
    return hashlib.sha1(key.encode()).hexdigest()


def compute_lut(source: AreaDefinition, target: AreaDefinition) -> NearestLUT:
    """Compute the LUT: target pixel centres projected into the source projection."""
    tx, ty = target.get_proj_coords()
    transformer = Transformer.from_crs(target.crs, source.crs, always_xy=True)
    with np.errstate(invalid="ignore"):
        sx, sy = transformer.transform(np.asarray(tx, "float64"), np.asarray(ty, "float64"))
    sx, sy = np.asarray(sx), np.asarray(sy)
    x0, y0, x1, y1 = source.area_extent  # outer edges; x0/y1 are column 0 / row 0 sides
    height, width = source.shape
    with np.errstate(invalid="ignore", over="ignore"):
        col = np.floor((sx - x0) / ((x1 - x0) / width))
        row = np.floor((y1 - sy) / ((y1 - y0) / height))
    ok = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    index = np.full(target.shape, -1, dtype="int64")
    index[ok] = row[ok].astype("int64") * width + col[ok].astype("int64")
    return NearestLUT(index=index, source_shape=(int(height), int(width)))


def lut_path(source: AreaDefinition, target: AreaDefinition, cache_dir: str | Path) -> Path:
    """Where the LUT of (source, target) lives in ``cache_dir``."""
    name = f"nnlut-v{LUT_VERSION}-{area_fingerprint(source)[:16]}-{target.area_id}-{area_fingerprint(target)[:8]}"
    return Path(cache_dir) / f"{name}_{source.shape[0]}x{source.shape[1]}.npy"


def get_lut(source: AreaDefinition, target: AreaDefinition, cache_dir: str | Path | None = None) -> NearestLUT:
    """LUT of (source, target): memoised in the process, else read from ``cache_dir``,
    else computed; saved to ``cache_dir`` (when given) if not there yet."""
    key = f"{area_fingerprint(source)}:{area_fingerprint(target)}"
    lut = _MEMO.get(key)
    path = lut_path(source, target, cache_dir) if cache_dir is not None else None
    stored = path is not None and path.is_file()
    if lut is None and stored:
        lut = _load(path, source, target)
        stored = lut is not None  # a bad cache entry gets overwritten below
    if lut is None:
        lut = compute_lut(source, target)
    if path is not None and not stored:
        _save_atomic(path, lut.index)
    _MEMO[key] = lut
    return lut


def _load(path: Path, source: AreaDefinition, target: AreaDefinition) -> NearestLUT | None:
    """A LUT from disk, or None if the file is unreadable or does not fit."""
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if index.shape != target.shape or index.dtype != np.int64 or index.max(initial=-1) >= source.size:
        return None
    return NearestLUT(index=index, source_shape=(int(source.shape[0]), int(source.shape[1])))


def clear_memory_cache() -> None:
    """Forget LUTs memoised in this process (the on-disk cache is untouched)."""
    _MEMO.clear()


def _save_atomic(path: Path, index: np.ndarray) -> None:
    write_stream_atomically(path, lambda fh: np.save(fh, index, allow_pickle=False))
