"""Radar quality control on the target grid: what is kept as truth, and what quality means.

Every radar reader (:func:`~qpe_core.readers.odim.read_odim`,
:func:`~qpe_core.readers.meteonet.read_meteonet`) calls :func:`quality_control` on the regridded
rain rate (mm/h) before it becomes a slot. Three stated rules set bad pixels to **NaN** (no
truth; never 0, which would be a confident "dry"):

* ``cap``: rates above ``max_rate`` (250 mm/h: no 15-minute radar rate on a 3 km grid comes near
  it outside hail and clutter; OPERA 2018-08-24 22:15 has 2163 mm/h on france-3km, 8647 on its
  own grid, where OPERA's quality index is 0);
* ``isolated``: a pixel of at least ``isolated_min`` (1 mm/h) whose 8 neighbours are all dry
  (< 0.1 mm/h) or without data: speckle (isolated drizzle below 1 mm/h is kept);
* ``spike``: a pixel above ``spike_min`` (20 mm/h) and more than ``spike_ratio`` (4) times the
  largest of its 8 neighbours: a single-pixel peak no convective core of several kilometres gives
  (211 mm/h next to at most 34 at 18:00, 146 next to at most 17 at 22:00).

On the 24 OPERA composites of 2018-08-24 these rules remove 254 of 281,659 wet pixels (0.09 %).
The counts per rule go into the slot's ``qc_removed`` attribute and the ingest summary.

``rain_quality`` (0-1, higher is better) is what the source says of each pixel: OPERA ``QIND``;
MeteoNet's rainfall quality code / 100. Where the source gives none (OPERA leaves QIND undefined
on most dry pixels, the simulator has none) it is NaN: **not assessed**, and such pixels count as
truth. Training and evaluation ignore pixels whose quality is below ``min_rain_quality`` (setting,
default 0.05: the pixels OPERA itself rates at 0, 6-13 % of the wet area on 2018-08-24);
:func:`truth_mask` is that rule.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import maximum_filter

WET = 0.1  # mm/h
MIN_RAIN_QUALITY = 0.05  # the default of every min_rain_quality setting (training, evaluation, verification)
RULES = ("cap", "isolated", "spike")


class RadarQC(BaseModel):
    """Thresholds of the quality-control rules (module docstring); rates in mm/h."""

    model_config = ConfigDict(extra="forbid")
    max_rate: float = Field(250.0, gt=0)
    isolated_min: float = Field(1.0, ge=WET)
    spike_min: float = Field(20.0, gt=0)
    spike_ratio: float = Field(4.0, gt=1)


def quality_control(rain: np.ndarray, qc: RadarQC | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """``rain (y, x)`` mm/h with the bad pixels set to NaN, and how many pixels each rule removed
    (a pixel caught by several rules counts for the first of ``RULES``)."""
    qc = qc or RadarQC()
    r = np.asarray(rain, dtype="float32")
    v = np.nan_to_num(r, nan=0.0)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    nb_max = maximum_filter(v, footprint=ring, mode="constant", cval=0.0)
    rules = {
        "cap": v > qc.max_rate,
        "isolated": (v >= qc.isolated_min) & (nb_max < WET),
        "spike": (v > qc.spike_min) & (v > qc.spike_ratio * nb_max),
    }
    out, taken, counts = r.copy(), np.zeros(r.shape, bool), {}
    for name in RULES:
        hit = rules[name] & ~taken
        counts[name] = int(hit.sum())
        taken |= hit
    out[taken] = np.nan
    return out, counts


def below_quality_to_nan(rain: np.ndarray, quality: np.ndarray | None, min_quality: float) -> np.ndarray:
    """``rain`` (float32 copy) with NaN where ``quality`` is below ``min_quality`` (NaN quality = not
    assessed = kept; ``min_quality`` 0 keeps everything). The one rule training, evaluation and live
    verification use (:meth:`Archive.read_truth`, ``PatchSampler``)."""
    rain = np.array(rain, dtype="float32")
    if quality is not None and min_quality > 0:
        rain[np.asarray(quality) < min_quality] = np.nan
    return rain


def truth_mask(rain: np.ndarray, quality: np.ndarray | None, min_quality: float) -> np.ndarray:
    """True where ``rain`` counts as truth: finite, and quality not below ``min_quality``."""
    return np.isfinite(below_quality_to_nan(rain, quality, min_quality))
