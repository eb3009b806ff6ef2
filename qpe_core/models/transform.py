"""Invertible value transforms between physical units and the networks' unit-scale space.

* :class:`RainTransform`: rain rate (mm/h) <-> ``y = (log1p(R / scale) - offset) / spread``.
  With the defaults ``scale = 1 mm/h``, ``offset = 1``, ``spread = 1``: 0.1 mm/h -> -0.905,
  1.7 mm/h -> 0, 6.4 mm/h -> 1, 19 mm/h -> 2, 54 mm/h -> 3, so fields lie roughly in [-1.5, 3]
  with unit-scale spread, comparable to N(0, 1) noise. Dry pixels (< 0.1 mm/h) sit ``dry_gap``
  (0.5) below the formula's 0 mm/h value, at -1.5: generative samplers leave residual noise of
  ~0.1 around the dry value (measured on a trained DDPM), which without a gap turns dry pixels
  into drizzle (0.1 mm/h is only 0.095 above 0 mm/h in this space).
* :class:`BTNormalizer`: brightness temperature (K) per channel -> ``(BT - mean) / std``; NaN
  (missing) pixels become 0 and are flagged in a validity mask channel.

Plain tensors only; the constants go into the JSON model card via ``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class RainTransform:
    """Rain rate (mm/h) <-> transformed space ``y = (log1p(R / scale_mm_h) - offset) / spread``.

    ``forward`` clamps negative rain to 0 and keeps NaN (missing radar) as NaN; rain below
    ``dry_threshold_mm_h`` maps to the single value :attr:`dry_value` when ``dry_gap > 0``.
    ``inverse`` returns mm/h, never negative: 0 below the cut ``threshold_value - dry_gap / 2``
    (half-way into the gap), at least ``dry_threshold_mm_h`` above it, and the exact inverse of
    ``forward`` for wet values (up to float rounding). ``dry_gap = 0`` is the transform of cards
    written before the gap existed (continuous below the threshold, cut at the threshold).
    """

    def __init__(self, scale_mm_h: float = 1.0, dry_threshold_mm_h: float = 0.1,
                 offset: float = 1.0, spread: float = 1.0, dry_gap: float = 0.5):
        if scale_mm_h <= 0 or spread <= 0 or dry_threshold_mm_h < 0 or dry_gap < 0:
            raise ValueError("scale_mm_h and spread must be > 0, dry_threshold_mm_h and dry_gap >= 0")
        self.scale_mm_h = float(scale_mm_h)
        self.dry_threshold_mm_h = float(dry_threshold_mm_h)
        self.offset = float(offset)
        self.spread = float(spread)
        self.dry_gap = float(dry_gap)

    def _formula(self, R: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(R.clamp(min=0.0) / self.scale_mm_h) - self.offset) / self.spread

    def forward(self, R: torch.Tensor) -> torch.Tensor:
        """Rain rate (mm/h) -> transformed value (dimensionless); NaN stays NaN."""
        R = torch.as_tensor(R, dtype=torch.float32) if not torch.is_tensor(R) else R
        y = self._formula(R)
        if self.dry_gap > 0:
            y = torch.where(R < self.dry_threshold_mm_h, torch.full_like(y, self.dry_value), y)
        return y

    __call__ = forward

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Transformed value -> rain rate (mm/h) >= 0; 0 below the cut, >= the dry threshold above."""
        R = (self.scale_mm_h * torch.expm1(y * self.spread + self.offset)).clamp(min=self.dry_threshold_mm_h)
        return torch.where(y >= self.cut_value, R, torch.zeros_like(R))

    @property
    def dry_value(self) -> float:
        """Transformed value of dry pixels: the formula's 0 mm/h minus ``dry_gap`` (-1.5 by default)."""
        return -self.offset / self.spread - self.dry_gap

    @property
    def cut_value(self) -> float:
        """``inverse`` gives 0 below this value: half-way into the gap below the threshold."""
        return self.threshold_value - self.dry_gap / 2

    @property
    def threshold_value(self) -> float:
        """Transformed value of the dry threshold; ``inverse`` gives 0 below it."""
        return (math.log1p(self.dry_threshold_mm_h / self.scale_mm_h) - self.offset) / self.spread

    def to_dict(self) -> dict:
        return {"type": "RainTransform", "formula": "y = (log1p(R / scale_mm_h) - offset) / spread",
                "scale_mm_h": self.scale_mm_h, "dry_threshold_mm_h": self.dry_threshold_mm_h,
                "offset": self.offset, "spread": self.spread, "dry_gap": self.dry_gap}

    @classmethod
    def from_dict(cls, d: dict) -> RainTransform:
        """Rebuild from a card; cards without ``dry_gap`` predate it and mean 0."""
        return cls(d["scale_mm_h"], d["dry_threshold_mm_h"], d.get("offset", 1.0), d.get("spread", 1.0),
                   d.get("dry_gap", 0.0))


class BTNormalizer:
    """Per-channel brightness-temperature normalisation ``x = (BT[K] - mean) / std`` (dimensionless).

    Inputs are ``(..., K, H, W)`` with the channel axis third from last, e.g. a temporal stack
    ``(lag, K, H, W)`` or a batch ``(B, lag, K, H, W)``. Non-finite inputs (missing slot, off-disk)
    become 0 after normalisation, i.e. the channel's mean, and ``valid`` (..., H, W) is 1 where all
    K channels are finite, 0 elsewhere; the model receives ``valid`` as an extra input channel per
    lag (see :meth:`condition`), so "0 = climatological mean" and "0 = missing" stay distinguishable.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std must have the same non-zero length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be > 0, got {list(std)}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, samples: torch.Tensor) -> BTNormalizer:
        """Mean and std (K) per channel over every finite value of ``samples`` (..., K, H, W)."""
        x = torch.as_tensor(samples, dtype=torch.float64)
        x = x.movedim(-3, 0).reshape(x.shape[-3], -1)
        finite = torch.isfinite(x)
        n = finite.sum(1).clamp(min=1)
        xz = torch.where(finite, x, torch.zeros_like(x))
        mean = xz.sum(1) / n
        var = (torch.where(finite, x - mean[:, None], torch.zeros_like(x)) ** 2).sum(1) / n
        return cls(mean.tolist(), var.sqrt().clamp(min=1e-3).tolist())

    def __call__(self, bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bt`` (..., K, H, W) in K -> (normalised float32 (..., K, H, W), valid (..., H, W) float 0/1)."""
        bt = torch.as_tensor(bt, dtype=torch.float32)
        if bt.shape[-3] != self.channels:
            raise ValueError(f"expected {self.channels} channels on axis -3, got shape {tuple(bt.shape)}")
        mean = torch.tensor(self.mean, dtype=bt.dtype, device=bt.device)[:, None, None]
        std = torch.tensor(self.std, dtype=bt.dtype, device=bt.device)[:, None, None]
        finite = torch.isfinite(bt)
        x = torch.where(finite, (bt - mean) / std, torch.zeros_like(bt))
        return x, finite.all(dim=-3).to(bt.dtype)

    def condition(self, stack: torch.Tensor, static: torch.Tensor | None = None) -> torch.Tensor:
        """Network condition from a stack ``(B, L, K, H, W)`` (K) and optional static ``(B, S, H, W)``.

        Returns ``(B, L*K + L + S, H, W)``: normalised BT (lag-major), then one validity channel per
        lag, then the static fields (already normalised by the caller).
        """
        x, valid = self(stack)
        parts = [x.flatten(1, 2), valid]
        if static is not None:
            parts.append(torch.as_tensor(static, dtype=x.dtype))
        return torch.cat(parts, dim=1)

    def to_dict(self) -> dict:
        return {"type": "BTNormalizer", "units": "K", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> BTNormalizer:
        return cls(d["mean"], d["std"])
