"""Ensemble inference: stack from the archive -> checkpoint -> rain(member, y, x) in mm/h.

Grids larger than ``tile`` are processed in overlapping tiles: :class:`TiledNet` wraps
each network so that every evaluation runs tile by tile and blends the overlaps with
a linear ramp.  The sampler's noise is drawn once on the full grid, so the result
does not depend on the tiling beyond the blending, and is deterministic for a seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from qpe_core.archive import Archive
from qpe_core.grids import attach_grid
from qpe_core.slots import RAIN_ATTRS
from qpe_core.stack import temporal_stack
from qpe_core.timeutil import iso, to_utc
from qpe_core.training.checkpoint import Loaded, check_card, load_checkpoint

#: Physical cap on estimated rain rates (mm/h): 3-km instantaneous radar rates stay below it, and
#: the generative tails (exp of a transformed value) must not produce impossible outliers.
MAX_RAIN_MM_H = 300.0


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    w = torch.ones(n)
    if overlap:
        r = torch.linspace(0, 1, overlap + 2)[1:-1]
        if not first:
            w[:overlap] = r
        if not last:
            w[-overlap:] = r.flip(0)
    return w


class TiledNet(torch.nn.Module):
    """Evaluate ``net`` on overlapping ``tile`` x ``tile`` windows and blend them (linear ramps)."""

    def __init__(self, net: torch.nn.Module, tile: int, overlap: int = 32):
        super().__init__()
        self.net, self.tile, self.overlap = net, tile, overlap

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H <= self.tile and W <= self.tile:
            return self.net(x, t)
        ys, xs = _starts(H, self.tile, self.overlap), _starts(W, self.tile, self.overlap)
        out, norm = None, torch.zeros(H, W, device=x.device)
        for i, y0 in enumerate(ys):
            wy = _ramp(min(self.tile, H), self.overlap, i == 0, i == len(ys) - 1).to(x.device)
            for j, x0 in enumerate(xs):
                wx = _ramp(min(self.tile, W), self.overlap, j == 0, j == len(xs) - 1).to(x.device)
                w = wy[:, None] * wx[None, :]
                y = self.net(x[..., y0:y0 + self.tile, x0:x0 + self.tile], t)
                if out is None:
                    out = torch.zeros(*y.shape[:-2], H, W, device=x.device, dtype=y.dtype)
                out[..., y0:y0 + self.tile, x0:x0 + self.tile] += y * w
                norm[y0:y0 + self.tile, x0:x0 + self.tile] += w
        return out / norm


def _pad_to(x: torch.Tensor, factor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    H, W = x.shape[-2:]
    ph, pw = (-H) % factor, (-W) % factor
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate"), (H, W)


def ensemble(model: Loaded, stack_bt: np.ndarray, members: int, steps: int | None = None, seed: int = 0,
             sampler: str | None = None, device: str = "cpu", tile: int | None = None, overlap: int = 32,
             chunk: int | None = None) -> np.ndarray:
    """Run the model on one stack ``(lag, channel, y, x)`` in K; returns ``(member, y, x)`` mm/h."""
    cond = model.normalizer.condition(torch.from_numpy(np.ascontiguousarray(stack_bt))[None]).to(device)
    factor = next(iter(model.nets.values())).factor
    cond, (H, W) = _pad_to(cond, factor)
    nets = model.nets
    if device == "cpu":
        nets.to(memory_format=torch.channels_last)  # 10-35 % faster convolutions on CPU (measured)
    if tile is not None and max(cond.shape[-2:]) > tile:
        nets = torch.nn.ModuleDict({k: TiledNet(v, tile, overlap) for k, v in model.nets.items()})
    gen = torch.Generator(device=device).manual_seed(seed)
    y = model.objective.sample(nets, cond, members=members, steps=steps, sampler=sampler, generator=gen,
                               chunk=chunk)
    rain = model.transform.inverse(y[0, :, :H, :W].float().cpu()).clamp(max=MAX_RAIN_MM_H)
    return rain.numpy().astype("float32")


def predict(archive: Archive, valid_time, checkpoint: str | Path, members: int = 16, steps: int | None = None,
            seed: int = 0, sampler: str | None = None, device: str = "cpu", tile: int | None = 512,
            gaps: str = "error", other_grid_ok: bool = False) -> xr.Dataset:
    """Ensemble rain rate ``rain(member, y, x)`` in mm/h for ``valid_time`` (UTC) on the archive grid."""
    model = load_checkpoint(checkpoint, device)
    check_card(model.card, archive.area, archive.channels, None, other_grid_ok)
    t0 = time.perf_counter()
    st = temporal_stack(archive, valid_time, model.card["lags"], model.card["channels"], gaps=gaps)
    members = 1 if model.card["kind"] == "unet" else members
    rain = ensemble(model, st["bt"].values, members, steps, seed, sampler, device, tile)
    valid = st["valid"].values[0].astype(bool)
    rain[:, ~valid] = np.nan  # no estimate where the current slot has no data
    ds = xr.Dataset({"rain": (("member", "y", "x"), rain, dict(RAIN_ATTRS))},
                    coords={"member": np.arange(rain.shape[0]), "time": to_utc(valid_time).to_datetime64()},
                    attrs={"model_kind": model.card["kind"], "checkpoint": str(checkpoint),
                           "members": int(rain.shape[0]), "seed": seed, "steps": steps or 0,
                           "input_slots": [iso(t) for t in st["slot_time"].values],
                           "missing_inputs": st.attrs["missing_slots"],
                           "seconds": round(time.perf_counter() - t0, 3)})
    return attach_grid(ds, archive.area)


def write_prediction(ds: xr.Dataset, out_dir: str | Path, fmt: str = "zarr") -> Path:
    """Write a prediction under ``out_dir`` as ``qpe_<time>.zarr`` or ``.nc``, atomically
    (:mod:`qpe_core.atomic`: a temporary store or file of its own, then renamed into place)."""
    from qpe_core.atomic import write_atomically, write_dir_atomically

    stamp = np.datetime_as_string(ds["time"].values, unit="m").replace(":", "").replace("-", "")
    final = Path(out_dir) / f"qpe_{stamp}.{'zarr' if fmt == 'zarr' else 'nc'}"
    if fmt == "zarr":
        return write_dir_atomically(final, lambda tmp: ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False))
    return write_atomically(final, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
