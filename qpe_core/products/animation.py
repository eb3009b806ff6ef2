"""An animated loop of the ensemble mean over the last hours, from the product cube (for the UI).

:func:`mean_loop_gif` takes the complete slots of the product cube in the ``hours`` before a slot
(at most ``frames``, default 12: three hours at 15 minutes), colours each slot's ensemble-mean rain
rate (mm/h) with the quick-look's levels and colours (white below 0.1 mm/h, grey where there is no
estimate), draws the coastlines, block-averages to at most ``size`` pixels a side and writes an
animated GIF with a time stamp (UTC) in each frame: a few hundred kB, small enough to embed in a
Prefect markdown artifact (the nowcast's ``nowcast-quicklook``).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from qpe_core.products.cube import ProductCube
from qpe_core.products.quicklook import NODATA_COLOUR, RAIN_LEVELS, projected_coastlines
from qpe_core.timeutil import iso, to_utc


def _colours(n: int) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["YlGnBu"](np.linspace(0.12, 0.88, n))[:, :3] * 255).astype(np.uint8)


def _rgb(mean: np.ndarray) -> np.ndarray:
    """(y, x) mm/h -> (y, x, 3) uint8 with the quick-look's levels (the top class open-ended)."""
    levels = np.asarray(RAIN_LEVELS)
    cls = np.digitize(np.nan_to_num(mean, nan=-1.0), levels) - 1  # -1 below 0.1 mm/h
    pal = _colours(len(levels))
    out = np.full(mean.shape + (3,), 255, np.uint8)
    wet = cls >= 0
    out[wet] = pal[np.minimum(cls[wet], len(levels) - 1)]
    grey = tuple(int(NODATA_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    out[~np.isfinite(mean)] = grey
    return out


def loop_slots(cube: ProductCube, end, frames: int = 12, hours: float = 3.0) -> list[pd.Timestamp]:
    """Complete slots of ``cube`` in ``(end - hours, end]`` (UTC), the last ``frames`` of them."""
    t1 = to_utc(end)
    times = [t for t in cube.times() if t1 - pd.Timedelta(hours=hours) < t <= t1]
    return times[-frames:]


def mean_loop_gif(cube: ProductCube, end, frames: int = 12, hours: float = 3.0, size: int = 192,
                  ms_per_frame: int = 400) -> bytes | None:
    """Animated GIF of the ensemble mean over the slots of :func:`loop_slots`; None without a slot."""
    from PIL import Image, ImageDraw

    times = loop_slots(cube, end, frames, hours)
    if not times:
        return None
    coast = _coast_pixels(cube)
    images = []
    for t in times:
        mean = np.asarray(cube.group["mean"][cube.index_of(t)], dtype="float32")
        rgb = _rgb(mean)
        rgb[coast] = (90, 90, 90)
        img = Image.fromarray(rgb)
        factor = max(1, int(np.ceil(max(mean.shape) / size)))
        img = img.resize((mean.shape[1] // factor, mean.shape[0] // factor), Image.Resampling.BOX)
        ImageDraw.Draw(img).text((4, 4), iso(t), fill=(0, 0, 0))
        images.append(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32))
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0,
                   optimize=True)
    return buf.getvalue()


def _coast_pixels(cube: ProductCube) -> np.ndarray:
    """Boolean (y, x) mask of the grid pixels the coastlines cross."""
    x, y = cube.group["x"][:], cube.group["y"][:]
    mask = np.zeros((len(y), len(x)), bool)
    cx, cy = projected_coastlines(cube.area)
    ok = np.isfinite(cx) & np.isfinite(cy)
    dx, dy = x[1] - x[0], y[1] - y[0]
    ix = np.round((cx[ok] - x[0]) / dx).astype(int)
    iy = np.round((cy[ok] - y[0]) / dy).astype(int)
    inside = (ix >= 0) & (ix < len(x)) & (iy >= 0) & (iy < len(y))
    mask[iy[inside], ix[inside]] = True
    return mask
