"""Training samples from the archive cube: valid times, leakage-free splits, patches.

A sample is one valid time ``t`` whose stack slots ``t + lag`` are all complete and
whose radar slot covers at least ``min_radar_coverage`` of the grid.  Samples are
split into train / validation by contiguous blocks of time (default 2 days), with a
buffer of ``len(lags)`` slots dropped on each side of every boundary so that no
input slot of one split is the target of the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from qpe_core.archive import Archive
from qpe_core.errors import QpeError
from qpe_core.models.transform import BTNormalizer, RainTransform
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY, below_quality_to_nan
from qpe_core.timeutil import to_utc


def valid_times(archive: Archive, lags: Sequence[int], min_radar_coverage: float = 0.5,
                start=None, end=None) -> pd.DatetimeIndex:
    """Valid times (UTC) with every lag slot complete and enough radar coverage."""
    bt = set(archive.times("bt"))
    rain = archive.coverage("rain")
    rain = rain[rain >= min_radar_coverage]
    out = [t for t in rain.index if all(t + pd.Timedelta(minutes=int(lag)) in bt for lag in lags)]
    times = pd.DatetimeIndex(sorted(out))
    if start is not None:
        times = times[times >= to_utc(start)]
    if end is not None:
        times = times[times <= to_utc(end)]
    return times


def block_split(times: pd.DatetimeIndex, val_fraction: float = 0.2, block: str = "2D", buffer_slots: int = 4,
                slot_minutes: int = 15, seed: int = 0) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """Split ``times`` into (train, validation) by whole contiguous blocks of length ``block``;
    times within ``buffer_slots`` slots of a block of the other split are dropped."""
    if len(times) == 0:
        raise QpeError("no valid training times in the archive (need all lags and radar coverage)")
    blocks = times.floor(block)
    uniq = np.array(sorted(set(blocks)))
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_fraction * len(uniq)))) if len(uniq) > 1 and val_fraction > 0 else 0
    val_blocks = set(rng.choice(uniq, size=n_val, replace=False)) if n_val else set()
    is_val = np.array([b in val_blocks for b in blocks])
    buf = pd.Timedelta(minutes=slot_minutes * buffer_slots)
    val_t, train_t = times[is_val], times[~is_val]

    def far_from(a: pd.DatetimeIndex, b: pd.DatetimeIndex) -> pd.DatetimeIndex:
        if len(b) == 0:
            return a
        bi = b.as_unit("ns").asi8
        pos = np.searchsorted(bi, a.as_unit("ns").asi8)
        left = np.abs(a.as_unit("ns").asi8 - bi[np.clip(pos - 1, 0, len(bi) - 1)])
        right = np.abs(bi[np.clip(pos, 0, len(bi) - 1)] - a.as_unit("ns").asi8)
        return a[np.minimum(left, right) > buf.value]

    return far_from(train_t, val_t), far_from(val_t, train_t)


@dataclass
class PatchSampler:
    """Reads normalised (cond, target, mask) patches from the archive.

    ``cond`` is ``(lags*channels + lags, P, P)``: normalised brightness temperatures (NaN -> 0)
    followed by one validity mask per lag; ``target`` is the transformed rain ``(1, P, P)``
    and ``mask`` is 1 where the radar has data of at least ``min_quality`` (NaN quality = kept).
    """

    archive: Archive
    lags: Sequence[int]
    channels: Sequence[str]
    normalizer: BTNormalizer
    transform: RainTransform
    patch: int = 128
    memory: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (row of each slot or -1, bt, rain) from preload()
    min_quality: float = MIN_RAIN_QUALITY  # rain below this stored quality is masked (radar_qc)

    def preload(self, times: pd.DatetimeIndex) -> int:
        """Hold the slots that ``times`` and their lags need in memory (float32, K and mm/h): reading a
        patch from the store decompresses whole-grid chunks, which made data loading ~60 % of a CPU
        training step. Only the needed slots are held, each written once into a preallocated array
        (holding the whole time range and stacking it took 18.4 GB at the peak of the cpu study for
        ~5.7 GB of needed slots). Returns the bytes held."""
        need = self._needed(times)
        if not need:
            self.memory = None
            return 0
        sel = [self.archive.channels.index(c) for c in self.channels]
        ny, nx = self.archive.group["rain"].shape[-2:]
        bt = np.empty((len(need), len(sel), ny, nx), np.float32)
        rain = np.empty((len(need), ny, nx), np.float32)
        for row, i in enumerate(need):
            bt[row] = self.archive.group["bt"][i][sel]
            rain[row] = self._masked(self.archive.group["rain"][i], i)
        rows = np.full(max(need) + 1, -1, np.int64)
        rows[need] = np.arange(len(need))
        self.memory = (rows, bt, rain)
        return bt.nbytes + rain.nbytes

    def _needed(self, times: pd.DatetimeIndex) -> list[int]:
        """Archive indices of the slots ``times`` and their lags read, sorted."""
        return sorted({self.archive.index_of(t + pd.Timedelta(minutes=int(lag)))
                       for t in times for lag in {0, *(int(v) for v in self.lags)}})

    def preload_bytes(self, times: pd.DatetimeIndex) -> int:
        """Bytes :meth:`preload` would hold for ``times`` (float32 BT of the sampler's channels and rain)."""
        ny, nx = self.archive.group["rain"].shape[-2:]
        return len(self._needed(times)) * (len(self.channels) + 1) * ny * nx * 4

    def read(self, t: pd.Timestamp, y0: int, x0: int, size: int | None = None):
        """Encoded ``(cond, target, mask)`` of the patch at ``(y0, x0)`` for valid time ``t``."""
        return self.encode(*self.read_raw(t, y0, x0, size))

    def read_raw(self, t: pd.Timestamp, y0: int, x0: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The patch as stored: BT ``(lag, channel, p, p)`` K and rain ``(p, p)`` mm/h (NaN where
        missing or below ``min_quality``). Training reads raw patches and encodes whole batches on its
        device (:meth:`encode_batch`): encoding one patch at a time on the CPU was ~85 % of the
        loader's time (measured), which held a GPU training to ~190 samples/s."""
        p = size or self.patch
        idx = [self.archive.index_of(t + pd.Timedelta(minutes=int(lag))) for lag in self.lags]
        i_t = self.archive.index_of(t)
        if self.memory is not None and max(idx + [i_t]) < len(self.memory[0]) \
                and (self.memory[0][idx + [i_t]] >= 0).all():
            rows, bt_all, rain_all = self.memory
            return bt_all[rows[idx], :, y0:y0 + p, x0:x0 + p], rain_all[rows[i_t], y0:y0 + p, x0:x0 + p]
        sel = [self.archive.channels.index(c) for c in self.channels]
        bt = np.stack([self.archive.group["bt"][i, :, y0:y0 + p, x0:x0 + p][sel] for i in idx])  # (lag, ch, p, p) K
        rain = self._masked(self.archive.group["rain"][i_t, y0:y0 + p, x0:x0 + p], (i_t, slice(y0, y0 + p), slice(x0, x0 + p)))
        return bt, rain

    def encode_batch(self, bt: torch.Tensor, rain: torch.Tensor):
        """Raw patches ``(B, lag, channel, p, p)`` K and ``(B, p, p)`` mm/h, on any device -> the
        ``(cond, target, mask)`` batch that :meth:`encode` gives patch by patch (same values)."""
        cond = self.normalizer.condition(bt)
        r = rain[:, None]
        return cond, self.transform.forward(torch.nan_to_num(r, nan=0.0)), torch.isfinite(r).float()

    def _masked(self, rain: np.ndarray, where) -> np.ndarray:
        """``rain`` with NaN where the archive's ``rain_quality`` at ``where`` is below ``min_quality``."""
        if self.min_quality <= 0:
            return rain
        return below_quality_to_nan(rain, self.archive.group["rain_quality"][where], self.min_quality)

    def encode(self, bt: np.ndarray, rain: np.ndarray | None):
        """(lag, channel, y, x) K and (y, x) mm/h -> model tensors."""
        bt = torch.from_numpy(np.ascontiguousarray(bt))[None]
        if rain is None:
            return self.normalizer.condition(bt)[0], None, None
        return tuple(x[0] for x in self.encode_batch(bt, torch.from_numpy(np.ascontiguousarray(rain))[None]))

    def random(self, t: pd.Timestamp, rng: np.random.Generator):
        ny, nx = self.archive.group["rain"].shape[-2:]
        y0 = int(rng.integers(0, ny - self.patch + 1))
        x0 = int(rng.integers(0, nx - self.patch + 1))
        return self.read(t, y0, x0)
