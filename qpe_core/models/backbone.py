"""Conditional U-Net backbone shared by every objective (regression, DDPM, flow matching).

The network only maps ``(x, t) -> y``; what ``x`` holds (condition, noisy state, mean field) and what
``y`` means (rain, noise, velocity) is decided by the objective (:mod:`qpe_core.models.objectives`),
following the network / objective / sampler split of NVlabs/edm and torchcfm.

Architecture (Ronneberger et al. 2015 U-Net with the residual, time-conditioned blocks of
Ho et al. 2020 / Dhariwal & Nichol 2021):

* stem: 3x3 conv ``in_channels -> base``;
* encoder level ``i`` (resolution ``H / 2**i``, ``base * mults[i]`` channels): ``num_res_blocks``
  residual blocks, then one skip tensor, then a stride-2 3x3 conv (except at the coarsest level);
* middle: residual block, optional multi-head self-attention, residual block;
* decoder level ``i``: nearest x2 upsampling + 3x3 conv, concatenation with the level's skip,
  ``num_res_blocks`` residual blocks;
* head: GroupNorm, SiLU, 3x3 conv ``base -> out_channels``.

Residual block: ``GN -> SiLU -> conv3x3 -> GN -> FiLM(scale, shift from the embedding) -> SiLU ->
dropout -> conv3x3``, added to a (1x1-projected) skip and scaled by ``1/sqrt(2)``.
The scalar ``t`` (B,) in [0, 1] enters through sinusoidal features of ``1000 t`` and a 2-layer MLP.

Cost is dominated by the two finest levels, so one skip per level (not per block) is kept, the
upsampling conv maps straight to the finer level's width, and the default widths are
``32 * (1, 1, 2, 4)``: 1.96 M parameters, 36 GFLOP per evaluation at 384 x 384 with 29 input
channels, about 0.3 s on 2 CPU cores (channels_last, batch 1), so 16 members x 4 steps + 1 mean
evaluation take about 19 s. ``(1, 2, 2, 4)`` (2.17 M, 50 GFLOP, ~26 s) doubles the 1/2-resolution
width at 1.4x the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = 1.0 / math.sqrt(2.0)


def _groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: ``min(32, C // 4)`` rounded down to a divisor of ``C`` (EDM convention)."""
    g = max(1, min(max_groups, channels // 4))
    while channels % g:
        g -= 1
    return g


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(1000 t w_k), sin(1000 t w_k)]`` (Vaswani et al. 2017; Ho et al. 2020).

    ``t`` (B,) in [0, 1]; frequencies ``w_k = max_period**(-k / (dim/2))``. Returns (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """Residual block with GroupNorm + SiLU and FiLM (scale-shift) conditioning on the embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1.0 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return h.add_(self.skip(x)).mul_(SKIP_SCALE)  # in place: neither op's backward needs h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels (heads of 32 channels), residual, scaled 1/sqrt(2)."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return self.proj(out).add_(x).mul_(SKIP_SCALE)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv (avoids transposed-conv checkerboards)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Conditional U-Net ``forward(x (B, in_channels, H, W), t (B,) in [0, 1]) -> (B, out_channels, H, W)``.

    ``H`` and ``W`` must be divisible by ``2**(len(channel_mults) - 1)``. Units are those of the
    objective (transformed rain, noise, velocity). Regression passes ``t = 0``.
    """

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 1, 2, 4), num_res_blocks: int = 1,
                 attention_at_coarsest: bool = False, emb_dim: int = 128, dropout: float = 0.0,
                 tendency: tuple[int, int] | None = None, tendency_gain: float = 2.0,
                 slot_encoder: tuple[int, int, int] | None = None):
        super().__init__()
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
                           attention_at_coarsest=attention_at_coarsest, emb_dim=emb_dim, dropout=dropout)
        self.tendency = None if tendency is None else (int(tendency[0]), int(tendency[1]))
        if self.tendency is not None:  # recorded only when used: older cards stay valid
            if self.tendency[0] < 2 or self.tendency[0] * self.tendency[1] > in_channels:
                raise ValueError(f"tendency (lags, channels) {tendency} does not fit {in_channels} input channels")
            self.config.update(tendency=self.tendency, tendency_gain=float(tendency_gain))
        self.slots, stem_in = None, in_channels
        if slot_encoder is not None:
            L, K, E = (int(v) for v in slot_encoder)
            if tendency is not None or L < 2 or L * K > in_channels:
                raise ValueError(f"slot_encoder (lags, channels, features) {slot_encoder} does not fit "
                                 f"{in_channels} input channels (and excludes tendency)")
            self.config.update(slot_encoder=(L, K, E))
            self.slots = nn.Sequential(nn.Conv2d(K, E, 3, padding=1), nn.GroupNorm(_groups(E), E), nn.SiLU(),
                                       nn.Conv2d(E, E, 3, padding=1))
            stem_in = in_channels - L * K + L * E
        widths = [base_channels * m for m in channel_mults]
        self.factor = 2 ** (len(widths) - 1)
        self.emb = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(stem_in, widths[0], 3, padding=1)
        self.enc, self.down = nn.ModuleList(), nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            self.enc.append(nn.ModuleList(
                ResBlock(ch if j == 0 else w, w, emb_dim, dropout) for j in range(num_res_blocks)))
            ch = w
            if i < len(widths) - 1:
                self.down.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.attn = SelfAttention(ch) if attention_at_coarsest else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            if i < len(widths) - 1:
                self.up.append(Upsample(ch, w))
            self.dec.append(nn.ModuleList(
                ResBlock(2 * w if j == 0 else w, w, emb_dim, dropout) for j in range(num_res_blocks)))
            ch = w
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h_, w_ = x.shape[-2:]
        if h_ % self.factor or w_ % self.factor:
            raise ValueError(f"UNet input {h_}x{w_} is not divisible by {self.factor} (2**(levels-1))")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.emb(timestep_embedding(t, self.config["base_channels"]).to(x.dtype))
        h, skips = self.stem(self.encode_lags(x)), []
        for i, blocks in enumerate(self.enc):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for k, blocks in enumerate(self.dec):
            if k > 0:
                h = self.up[k - 1](h)
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        return self.head(h)

    def encode_lags(self, x: torch.Tensor) -> torch.Tensor:
        """With ``tendency = (L, K)``: the first ``L * K`` input channels (normalised BT, lag-major,
        newest first) become the newest slot and the ``L - 1`` tendencies between successive slots,
        times ``tendency_gain`` (on the simulated archive a 15-minute change at a pixel, advection
        included, has 0.4-0.5 of a channel's std, measured; the gain 2 brings it near unit scale).
        A fixed linear map: the same information, presented as change.

        With ``slot_encoder = (L, K, E)``: one small convolutional encoder (``K -> E`` features, two
        3x3 convs), its weights shared by every slot, maps each of the ``L`` slots alike; the stem then
        merges the ``L * E`` features, so a change between slots is a difference of like features."""
        if self.slots is not None:
            L, K, E = self.config["slot_encoder"]
            feats = self.slots(x[:, : L * K].reshape(x.shape[0] * L, K, *x.shape[-2:]))
            return torch.cat([feats.reshape(x.shape[0], L * E, *x.shape[-2:]), x[:, L * K:]], 1)
        if self.tendency is None:
            return x
        L, K = self.tendency
        bt = x[:, : L * K].unflatten(1, (L, K))
        enc = torch.cat([bt[:, :1], self.config["tendency_gain"] * (bt[:, :-1] - bt[:, 1:])], 1)
        return torch.cat([enc.flatten(1, 2), x[:, L * K:]], 1)

    def count_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def flops_per_eval(self, H: int, W: int, batch: int = 1) -> int:
        """FLOPs (multiply-add = 2) of one forward pass at ``batch`` x ``H`` x ``W``.

        Measured with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions,
        matmuls and attention; normalisations and activations (memory-bound) are not counted.
        """
        from torch.utils.flop_counter import FlopCounterMode

        p = next(self.parameters())
        x = torch.zeros(batch, self.config["in_channels"], H, W, dtype=p.dtype, device=p.device)
        with FlopCounterMode(display=False) as counter:
            self(x, torch.zeros(batch, dtype=p.dtype, device=p.device))
        return int(counter.get_total_flops())
