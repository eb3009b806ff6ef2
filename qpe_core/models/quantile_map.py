"""Per-bin maps of a drawn residual onto a held-out one: the cascade flow's calibration by quantiles.

The cascade (:mod:`qpe_core.models.cascade`) calibrates its drawn normalised residual ``u`` per bin
of the U-Net's mean ``m``. By moments (``a + g u``) the drawn residual gets the held-out one's mean
and standard deviation, not its shape: where the held-out residual is a dry spike plus a wet
continuum, equal moments leave members dry too often (the default's wet fraction is 0.92 of the
truth's on the very validation cases it was fitted on). A quantile map takes each bin's drawn
quantiles to the held-out ones (``levels`` between the clip's quantiles), so the bin's whole
distribution is the held-out one: its wet probability, its spread and its tail.

A map is ``[x, src, dst]``: the bin's mean value ``x`` and increasing knots ``src -> dst``,
piecewise linear, flat beyond the end knots (the held-out range, as the clip). A moment or shift
calibration is the two-knot map of a line (:func:`line_map`). A pixel's map blends the two maps whose
``x`` bracket its mean, linearly (flat beyond the end bins), as the moment knots are interpolated.
"""

from __future__ import annotations

import torch

WIDE = 50.0  # |u| far beyond any drawn residual: a line map's end knots


def interp(x: torch.Tensor, kx: list[float], ky: list[float]) -> torch.Tensor:
    """Piecewise-linear ``ky(kx)`` at ``x`` (flat beyond the end knots), same shape as ``x``."""
    if len(kx) == 1:
        return torch.full_like(x, float(ky[0]))
    tx = torch.tensor(kx, dtype=x.dtype, device=x.device)
    ty = torch.tensor(ky, dtype=x.dtype, device=x.device)
    xc = x.clamp(tx[0], tx[-1])
    i = torch.searchsorted(tx, xc.contiguous()).clamp(1, len(tx) - 1)
    return ty[i - 1] + (ty[i] - ty[i - 1]) * (xc - tx[i - 1]) / (tx[i] - tx[i - 1])


def line_map(x: float, a: float, g: float) -> list:
    """The map ``u -> a + g u`` of a bin at mean value ``x`` (over ``|u| <= WIDE``)."""
    return [float(x), [-WIDE, WIDE], [a - g * WIDE, a + g * WIDE]]


def fit_map(x: float, drawn: torch.Tensor, held_out: torch.Tensor, levels: torch.Tensor) -> list:
    """The quantile map of one bin: the drawn residual's quantiles at ``levels`` to the held-out
    one's (both 1-D). Source knots are made strictly increasing (ties of a discrete draw)."""
    lv = levels.to(torch.float64)
    src = torch.quantile(drawn.double(), lv)
    dst = torch.quantile(held_out.double(), lv)
    src = torch.cummax(src, 0).values + 1e-9 * torch.arange(len(src), dtype=torch.float64)
    return [float(x), [float(v) for v in src], [float(v) for v in dst]]


def apply_maps(u: torch.Tensor, mean: torch.Tensor, maps: list) -> torch.Tensor:
    """``u`` mapped per pixel by the maps bracketing its ``mean`` (same shapes), blended linearly."""
    if len(maps) == 1:
        return interp(u, maps[0][1], maps[0][2])
    kx = torch.tensor([m[0] for m in maps], dtype=mean.dtype, device=mean.device)
    mc = mean.clamp(kx[0], kx[-1])
    i = torch.searchsorted(kx, mc.contiguous()).clamp(1, len(maps) - 1)
    w = (mc - kx[i - 1]) / (kx[i] - kx[i - 1])  # weight of map i; map i - 1 gets 1 - w
    out = torch.zeros_like(u)
    for j, (_, src, dst) in enumerate(maps):
        below, above = i == j + 1, i == j  # pixels whose lower / upper bracketing map is j
        sel = below | above
        if bool(sel.any()):
            wj = torch.where(above, w, 1.0 - w)[sel]
            out[sel] += wj * interp(u[sel], src, dst)
    return out
