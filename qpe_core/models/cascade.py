"""Cascade flow: a frozen U-Net regression, then flow matching on what it misses (the product default).

The two-stage design of CorrDiff (Mardani et al. 2024, NVIDIA physicsnemo) and CasCast (Gong et al.
2024), with flow matching as the generative stage:

1. ``mean`` = ``UNet(C, 1)``, a :class:`~qpe_core.models.objectives.Regression` trained first (the
   study's own U-Net baseline, or one trained on the spot by :func:`qpe_core.training.train.train`)
   and **frozen**: it gives the placement, ``m = E[y | cond]`` in transformed rain units;
2. ``flow`` = ``UNet(C + 2, 1)`` on ``cat(cond, m, x_t)`` learns the normalised residual
   ``u = (y - m) / s(m)`` by conditional flow matching from ``x_0 ~ N(0, sigma0^2)``; it gives the
   texture, the spread and the tail. ``s(m)`` is the RMS residual of the frozen mean as a function of
   the mean itself, measured on the **held-out** validation patches (:meth:`fit_residual_scale`):
   piecewise linear between ``scale_knots`` (mean value, RMS) at quantile bins of ``m``, floored at
   ``scale_floor`` (0.25, half the transform's dry gap: a pixel the mean calls certainly dry that
   turns out wet, ``r >= 0.35``, is then a ~1.5-sigma event of ``u`` instead of a 10-sigma one; with
   a floor of 0.05 the flow learned those heavy tails and drew isolated 100+ mm/h pixels, measured). Held-out, because a network's training residuals are smaller than its errors on
   new data (SFM / CorrDiff++), which starves the spread; per pixel, because the residual is near
   zero where rain is certain to be absent and large in convection, so that ``u`` has about unit
   variance everywhere and the flow's paths from unit noise are nearly straight (few steps).
   Without knots ``s = residual_std``, one number.

Sampling integrates the flow from t = 0 to 1 with the explicit midpoint rule, 4 steps (8 evaluations
per member): on the study's 6 cost-check cases it reproduces the 64-step solution's spread/skill
(0.82 vs 0.85), spectrum and q99, where Heun with its last step plain Euler (EDM's choice for
diffusion, 7 evaluations) lost a fifth of the spread (0.69) and of the small-scale power.

The ensemble is ``y = m + s(m) u'``. ``u' = a(m) + g(m) u`` moves the drawn residual to the mean and
standard deviation the held-out one has at the same mean value (``spread_knots``, fitted after
training on the validation patches with the final weights, :meth:`calibrate`); ``u'`` is then kept
inside the held-out range at that mean value (``clip_knots``: the 2 % and 98 % quantiles of the
held-out ``u`` per bin, ``clip_quantile``): an under-trained flow drew isolated pixels of
100-300 mm/h next to dry neighbours where the mean said ~0 mm/h, and whole cells several times the
truth's maximum (measured), values no held-out residual comes near. The quantile was chosen on the
validation period (``scripts/validation_draws.py``, 16 cases of the cpu study's validation blocks):
0.98 held every mission check there and was best on FSS, CRPS, spread/skill and spectrum; 0.99, 0.995
and 0.999 left 1-3 of 16 cases with a member above twice the truth's maximum, always at the top of
the mean's range, where the held-out residual's extreme quantiles are the least certain. Where the mean
says certainly dry (bins whose scale is the floor) fewer than 2 % of held-out pixels are wet, so their
98 % quantile is the dry value and no member could rain there: those bins are clipped at the held-out
maximum (``dry_clip_quantile`` 1.0) and their draw shifted so members are wet there as often as the
held-out truth (``calibrate_dry``; chosen on the validation cases: wet fraction 0.90 -> 0.92 of truth,
every other figure unchanged; on the cpu study's held-out cases 0.87 -> 0.89, q99 0.81 -> 0.82,
rank-histogram RI 0.21 -> 0.19). The bins are quantiles of ``m``
with the top 4 % split in halving bins (``tail_bins``), where the heaviest rain has its own, smaller
residual. One mean evaluation is shared by all members.

``calibrate_quantiles`` N > 0 calibrates by quantile maps instead of moments (each bin's drawn
residual mapped onto the held-out quantiles at N levels, :mod:`.quantile_map`); it lost on the
held-out cases (spread and texture fell in every run, docs/studies/quantile) and stays an option.

``guidance`` (classifier-free, CasCast): with ``cond_dropout`` > 0 the flow also learns the
unconditional residual (``cond`` and ``m`` zeroed on a fraction of the batch); sampling with
``w = guidance`` uses ``v = v_uncond + w (v_cond - v_uncond)`` (2 evaluations per step). 1 = off.
``steps`` sets this model's default sampler steps (a guided model keeps 8 evaluations per member
with 2 midpoint steps).
"""

from __future__ import annotations

import torch

from qpe_core.models import samplers as S
from qpe_core.models.objectives import FlowMatching, _call, _f, _inference, _valid, masked_mse
from qpe_core.models.quantile_map import apply_maps, fit_map, line_map
from qpe_core.models.quantile_map import interp as _interp
from qpe_core.models.transform import RainTransform

WET_CUT = RainTransform().cut_value  # transformed value above which the product's rain is >= 0.1 mm/h


def _pool(bins: list[tuple], merge) -> list[list[float]]:
    """Bins ``(mean value, *stats)`` in increasing order; bins of equal mean value (e.g. many
    certain-dry pixels) are pooled with ``merge(stats_a, stats_b)``."""
    out = [list(bins[0])]
    for b in bins[1:]:
        if b[0] - out[-1][0] > 1e-6:
            out.append(list(b))
        else:
            out[-1][1:] = merge(tuple(out[-1][1:]), tuple(b[1:]))
    return out


TOP = 0.04  # the fraction of the mean's values split into the tail bins


def _quantile_parts(values: torch.Tensor, bins: int, tail_bins: int) -> list[torch.Tensor]:
    """Indices of ``values`` in quantile bins: ``bins`` of equal count below the top 4 %, which is
    split into ``tail_bins`` halving ones (2 %, 1 %, 0.5 %, ..., the last takes the rest): the
    residual of the heaviest rain differs from that of moderate rain (held-out RMS 0.37 above
    ~10 mm/h against 0.70 over the top 4 % as one bin, measured) and one coarse top bin let members
    draw cells several times the truth's maximum."""
    order, n = torch.argsort(values), values.numel()
    if tail_bins < 1:
        return list(torch.tensor_split(order, bins))
    levels = [(1 - TOP) * k / bins for k in range(bins + 1)]
    levels += [1 - TOP / 2 ** k for k in range(1, tail_bins)] + [1.0]
    cuts = sorted({min(n, round(q * n)) for q in levels})
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class CascadeFlow(FlowMatching):
    """Frozen regression mean + flow matching on the normalised residual (module docstring)."""

    kind, default_sampler, default_steps = "cascade-flow", "midpoint", 4
    samplers = ("euler", "heun", "midpoint")
    frozen = ("mean",)  # networks loaded from a trained U-Net and not optimised

    def __init__(self, sigma0: float = 1.0, residual_std: float = 1.0, cond_dropout: float = 0.0,
                 guidance: float = 1.0, scale_knots: list | None = None, scale_floor: float = 0.25,
                 scale_bins: int = 24, tail_bins: int = 5, clip_knots: list | None = None, clip: bool = True,
                 clip_quantile: float = 0.98, tail_clip_quantile: float | None = None,
                 dry_clip_quantile: float | None = 1.0, spread_knots: list | None = None,
                 calibrate_members: int = 4, time_rho: float = 1.0,
                 steps: int | None = None, calibrate_dry: bool = True, calibrate_shift: bool = True,
                 calibrate_quantiles: int = 0, quantile_knots: list | None = None):
        super().__init__(sigma0, sigma_data=1.0)
        if steps is not None:  # this model's default sampler steps (the class's 4 when None)
            if int(steps) < 1:
                raise ValueError(f"steps must be >= 1, got {steps}")
            self.default_steps = int(steps)
        if not residual_std > 0:
            raise ValueError(f"residual_std must be > 0, got {residual_std}")
        self.scale_knots = None if scale_knots is None else [[float(a), float(b)] for a, b in scale_knots]
        self.scale_floor, self.scale_bins, self.tail_bins = float(scale_floor), int(scale_bins), int(tail_bins)
        self.clip_knots = None if clip_knots is None else [[float(v) for v in k] for k in clip_knots]
        self.clip = bool(clip)
        if not 0.5 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0.5, 1], got {clip_quantile}")
        self.clip_quantile, self.calibrate_members = float(clip_quantile), int(calibrate_members)
        if tail_clip_quantile is not None and not 0.5 < tail_clip_quantile <= 1.0:
            raise ValueError(f"tail_clip_quantile must be in (0.5, 1] or None, got {tail_clip_quantile}")
        self.tail_clip_quantile = None if tail_clip_quantile is None else float(tail_clip_quantile)
        if dry_clip_quantile is not None and not 0.5 < dry_clip_quantile <= 1.0:
            raise ValueError(f"dry_clip_quantile must be in (0.5, 1] or None, got {dry_clip_quantile}")
        self.dry_clip_quantile = None if dry_clip_quantile is None else float(dry_clip_quantile)
        self.spread_knots = None if spread_knots is None else [[float(v) for v in k] for k in spread_knots]
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.residual_std, self.cond_dropout, self.guidance = float(residual_std), float(cond_dropout), float(guidance)
        if not time_rho >= 1.0:
            raise ValueError(f"time_rho must be >= 1, got {time_rho}")
        self.time_rho = float(time_rho)  # midpoint time grid (samplers.midpoint's rho; 1 = uniform)
        self.calibrate_dry = bool(calibrate_dry)
        self.calibrate_shift = bool(calibrate_shift)
        if int(calibrate_quantiles) == 1 or int(calibrate_quantiles) < 0:
            raise ValueError(f"calibrate_quantiles must be 0 (moments) or >= 2 levels, got {calibrate_quantiles}")
        self.calibrate_quantiles = int(calibrate_quantiles)  # 0: moments (a + g u); N: quantile maps, N levels
        self.quantile_knots = None if quantile_knots is None else [[float(k[0]), [float(v) for v in k[1]], [float(v) for v in k[2]]]
                                                                   for k in quantile_knots]

    def network_specs(self, in_channels):
        return {"mean": (in_channels, 1), "flow": (in_channels + 2, 1)}

    @torch.no_grad()
    def mean(self, nets, cond, chunk=None) -> torch.Tensor:
        """Mean field ``m`` (B, 1, H, W) of the frozen regression, transformed rain units."""
        return _call(nets["mean"], cond, 0.0, chunk)[:, :1].float()

    def fit_residual_std(self, nets, cond, target, mask=None) -> float:
        """Set ``residual_std`` (RMS of ``y - m``) and ``scale_knots`` (RMS per quantile bin of ``m``, at
        the bin's mean ``m``) from the valid pixels of held-out patches; returns ``residual_std``."""
        y, valid = _valid(target, mask)
        mean = self.mean(nets, cond).to(y)
        ok = valid.bool()
        mv, r2 = mean[ok].double(), ((y - mean)[ok].double()) ** 2
        self.residual_std = max(float(r2.mean().sqrt()), 1e-3) if r2.numel() else 1.0
        if self.scale_bins > 1 and r2.numel() >= 10 * self.scale_bins:
            parts = _quantile_parts(mv, self.scale_bins, self.tail_bins)
            self.scale_knots = [[m, max((s2 / n) ** 0.5, self.scale_floor)] for m, s2, n in _pool(
                [(float(mv[p].mean()), float(r2[p].sum()), len(p)) for p in parts], lambda a, b: (a[0] + b[0], a[1] + b[1]))]
            if self.clip:
                self.fit_clip(nets, cond, target, mask)
        return self.residual_std

    def fit_clip(self, nets, cond, target, mask=None) -> None:
        """``clip_knots``: the ``1 - clip_quantile`` and ``clip_quantile`` quantiles of the held-out
        normalised residual ``u = (y - m) / s(m)`` per quantile bin of ``m`` (the scale's bins).

        The tail bins are small (the top 0.25 % of 32 patches of 64 x 64 is 327 pixels, where the 99.9 %
        quantile is the bin's maximum): fit on enough patches that it is not (``TrainConfig.fit_patches``).
        ``tail_clip_quantile`` (None = ``clip_quantile``) is used instead in the tail bins (the top 4 %
        of ``m``), where a member's value is the largest of the scene. ``dry_clip_quantile`` (None =
        ``clip_quantile``) is used in the bins whose scale is the floor (the mean says certainly dry):
        there fewer than 2 % of held-out pixels are wet, so the 98 % quantile is the dry value itself
        and the clip removes every shower the mean misses (on the cpu study's held-out cases, 2.0 % of
        all pixels are wet where the U-Net is dry; the cascade drew 1.1 %)."""
        y, valid = _valid(target, mask)
        mean = self.mean(nets, cond).to(y)
        ok = valid.bool()
        mv, u = mean[ok].double(), ((y - mean) / self.scale(mean))[ok].double()
        parts = _quantile_parts(mv, self.scale_bins, self.tail_bins)
        first_rank = torch.tensor([0] + [len(p) for p in parts]).cumsum(0)[:-1]
        qt = self.clip_quantile if self.tail_clip_quantile is None else self.tail_clip_quantile
        qd = self.clip_quantile if self.dry_clip_quantile is None else self.dry_clip_quantile
        floored = [float(self.scale(mv[p].mean().view(1))) <= self.scale_floor + 1e-9 for p in parts]
        qs = [qt if self.tail_bins >= 1 and int(r) >= round((1 - TOP) * mv.numel()) else qd if dry else self.clip_quantile
              for r, dry in zip(first_rank, floored)]
        self.clip_knots = _pool([(float(mv[p].mean()), float(u[p].quantile(1 - q)), float(u[p].quantile(q)))
                                 for p, q in zip(parts, qs)], lambda a, b: (min(a[0], b[0]), max(a[1], b[1])))

    def scale(self, mean: torch.Tensor) -> torch.Tensor:
        """Residual scale ``s(m)`` (transformed units), same shape as ``mean``."""
        if not self.scale_knots:
            return torch.full_like(mean, self.residual_std)
        return _interp(mean, [k[0] for k in self.scale_knots], [k[1] for k in self.scale_knots])

    def calibrate(self, nets, cond, target, mask=None, generator=None) -> dict | None:
        """Match the sampled ``u`` to the held-out one, per quantile bin of ``m`` (``spread_knots``).

        On held-out patches (the same validation patches the scale was fitted on), ``calibrate_members``
        members are drawn with the default sampler; in each bin of the scale knots, ``u' = a + g u``
        takes the sampled ``u``'s mean and standard deviation to those of the true normalised
        residual (``g`` kept in [0.5, 2]) where the scale is above the floor (in floored, certain-dry
        bins the sd is that of a few misses). An under-trained flow draws too narrow a residual where
        rain is moderate (sd 0.73 for a held-out 0.95 at 2-5 mm/h, measured), which shortens q99
        and the spread. With a clip, ``a`` and ``g`` are iterated until the CLIPPED residual has the
        held-out mean and sd (``g`` in [0.5, 3]): fitted before the clip, the 2/98 % clip took back
        part of the spread (held-out spread/skill 0.75, q99 0.83, spectrum 0.79 of truth, measured).
        Floored bins get ``g = 1`` and, with ``calibrate_dry``, the shift that makes the drawn wet
        probability the held-out one (:meth:`_wet_shift`). ``calibrate_shift`` False keeps the drawn
        residual's own mean in the bins above the floor (``a = (1 - g) mean(u)``: only the spread is
        fitted on the held-out days, not their bias). 0 members = off. Returns the fitted knots'
        summary (bins, gain, shift)."""
        if self.calibrate_members < 1 or not self.scale_knots:
            return None
        y, valid = _valid(target, mask)
        self.spread_knots = self.quantile_knots = None
        u_s, mean = self._sample_u(nets, cond, self.calibrate_members, None, None, generator, None)
        mean1 = mean[:: self.calibrate_members]
        u_t = (y - mean1) / self.scale(mean1)
        ok, k = valid.bool(), self.calibrate_members
        kx = [c[0] for c in self.scale_knots]
        edges = torch.tensor([-1e9] + [(a + b) / 2 for a, b in zip(kx[:-1], kx[1:])] + [1e9], dtype=torch.float64)
        m_t = mean1[ok].double()
        us = u_s.reshape(-1, k, *u_s.shape[-2:]).permute(1, 0, 2, 3)[:, ok[:, 0]].double()
        ut = u_t[ok].double()
        knots, maps = [], []
        for i, (x, scale) in enumerate(self.scale_knots):
            sel = (m_t >= edges[i]) & (m_t < edges[i + 1])
            if scale <= self.scale_floor or int(sel.sum()) < 20:  # floored bins: rare misses, noisy sd
                dry = self.calibrate_dry and int(sel.sum()) >= 20
                knots.append([x, self._wet_shift(m_t[sel], ut[sel], us[:, sel]) if dry else 0.0, 1.0])
                maps.append(line_map(x, knots[-1][1], 1.0))
                continue
            a_t, a_s = ut[sel], us[:, sel]
            g = float((a_t.std() / a_s.std().clamp_min(1e-6)).clamp(0.5, 2.0))
            mean_s = float(a_s.mean())
            a = float(a_t.mean()) - g * mean_s if self.calibrate_shift else (1.0 - g) * mean_s
            if self.clip_knots:  # match the moments of what is drawn: the residual AFTER the clip
                lo, hi = self._clip_bounds(m_t[sel])
                for _ in range(6):
                    c = torch.minimum(torch.maximum(a + g * a_s, lo), hi)
                    g = float((g * a_t.std() / c.std().clamp_min(1e-6)).clamp(0.5, 3.0))
                    if self.calibrate_shift:
                        a += float(a_t.mean()) - float(torch.minimum(torch.maximum(a + g * a_s, lo), hi).mean())
                    else:
                        a = (1.0 - g) * mean_s
            knots.append([x, a, g])
            maps.append(self._bin_map(x, a, g, ut[sel], us[:, sel]))
        self.spread_knots = knots or None
        if self.calibrate_quantiles and maps:
            self.quantile_knots = maps
        return {"bins": len(knots), "gain": [round(k[2], 3) for k in knots], "shift": [round(k[1], 3) for k in knots]}

    def _bin_map(self, x: float, a: float, g: float, u_t: torch.Tensor, u_s: torch.Tensor) -> list:
        """The quantile map of a bin above the floor (``calibrate_quantiles`` levels between the clip's
        quantiles, the held-out extremes without a clip); the bin's moment line when it has fewer
        than 10 pixels per level."""
        n = self.calibrate_quantiles
        if n < 2 or u_t.numel() < 10 * n:
            return line_map(x, a, g)
        q = self.clip_quantile if self.clip else 1.0
        return fit_map(x, u_s.reshape(-1), u_t, torch.linspace(1.0 - q, q, n))

    def _wet_shift(self, m: torch.Tensor, u_t: torch.Tensor, u_s: torch.Tensor) -> float:
        """Shift ``a`` of a floored bin (``calibrate_dry``): the drawn ``clip(a + u)`` is wet (above the
        transform's wet cut, :data:`WET_CUT`) as often as the held-out ``u`` is. The wet probability is
        a step function of ``a``: of the shifts that give the held-out one (to a bisection's
        precision), the one nearest 0; 0 when none does (the clip's upper bound below the cut)."""
        u_cut = (WET_CUT - m) / self.scale(m)
        p_t = float((u_t > u_cut).double().mean())
        lo, hi = self._clip_bounds(m) if self.clip_knots else (torch.full_like(m, -1e9), torch.full_like(m, 1e9))

        def drawn(a: float) -> float:  # wet probability of clip(a + u)
            return float((torch.minimum(torch.maximum(a + u_s, lo), hi) > u_cut).double().mean())

        def edge(below) -> float:  # the a where below(drawn(a)) stops holding, in [-4, 4]
            a0, a1 = -4.0, 4.0
            for _ in range(30):
                a = (a0 + a1) / 2
                a0, a1 = (a, a1) if below(drawn(a)) else (a0, a)
            return (a0 + a1) / 2

        if drawn(4.0) < p_t:
            return 0.0
        first, last = edge(lambda p: p < p_t), edge(lambda p: p <= p_t)  # [first, last]: drawn == p_t
        return min(max(0.0, first), max(first, last))

    def calibrate_residual(self, u: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``a(m) + g(m) u``, or the quantile maps (``quantile_knots``) when fitted (identity without
        either)."""
        if self.quantile_knots:
            return apply_maps(u, mean, self.quantile_knots)
        if not self.spread_knots:
            return u
        kx = [k[0] for k in self.spread_knots]
        return _interp(mean, kx, [k[1] for k in self.spread_knots]) + _interp(mean, kx, [k[2] for k in self.spread_knots]) * u

    def _clip_bounds(self, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kx = [k[0] for k in self.clip_knots]
        return _interp(mean, kx, [k[1] for k in self.clip_knots]), _interp(mean, kx, [k[2] for k in self.clip_knots])

    def clip_residual(self, u: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``u`` kept inside the range the held-out normalised residual had at the same mean value."""
        if not self.clip_knots:
            return u
        lo, hi = self._clip_bounds(mean)
        return torch.minimum(torch.maximum(u, lo), hi)

    def loss(self, nets, cond, target, mask=None, generator=None):
        y, m = _valid(target, mask)
        mean = self.mean(nets, cond).to(y)
        inputs = torch.cat([cond, mean], 1)
        if self.cond_dropout > 0:
            dev = generator.device if generator is not None else y.device
            keep = torch.rand(y.shape[0], generator=generator, device=dev).to(y.device) >= self.cond_dropout
            inputs = inputs * keep.view(-1, 1, 1, 1).to(inputs)
        u = (y - mean) / self.scale(mean)
        l_flow = self._fm_loss(nets["flow"], inputs, u, m, generator)
        with torch.no_grad():
            l_mean = masked_mse(mean, y, m)
        return l_flow, {"loss": _f(l_flow), "fm_mse": _f(l_flow), "mean_mse": _f(l_mean)}

    def sample(self, nets, cond, members=1, steps=None, sampler=None, generator=None, chunk=None):
        """Ensemble ``(B, members, H, W)`` in transformed space (mean once per input, flow per member)."""
        u, mean = self._sample_u(nets, cond, members, steps, sampler, generator, chunk)
        u = self.clip_residual(self.calibrate_residual(u, mean), mean)
        y = mean + self.scale(mean) * u
        return y.reshape(cond.shape[0], members, *cond.shape[-2:])

    def _sample_u(self, nets, cond, members, steps, sampler, generator, chunk):
        """Raw sampled residual ``u`` and the mean ``m``, both ``(B * members, 1, H, W)``."""
        steps, sampler = self._check(steps, sampler)
        with _inference(nets):
            mean = self.mean(nets, cond, chunk).to(cond.dtype).repeat_interleave(members, 0)
            inputs = torch.cat([cond.repeat_interleave(members, 0), mean], 1)
            x = self.sigma0 * self._noise(mean, generator)
            w = self.guidance

            def velocity(x, t):
                v = _call(nets["flow"], torch.cat([inputs, x], 1), t, chunk)
                if w == 1.0:
                    return v
                v0 = _call(nets["flow"], torch.cat([torch.zeros_like(inputs), x], 1), t, chunk)
                return v0 + w * (v - v0)

            if sampler == "midpoint":
                return S.midpoint(velocity, x, 0.0, 1.0, steps, rho=self.time_rho), mean
            return {"euler": S.euler, "heun": S.heun}[sampler](velocity, x, 0.0, 1.0, steps), mean

    def evals_per_member(self, steps=None, sampler=None):
        steps, sampler = self._check(steps, sampler)
        per_step = {"euler": steps, "heun": 2 * steps - 1, "midpoint": 2 * steps}[sampler]
        return per_step * (1 if self.guidance == 1.0 else 2)

    def shared_evals(self):
        return 1

    def config(self):
        return {"kind": self.kind, "sigma0": self.sigma0, "residual_std": self.residual_std,
                "cond_dropout": self.cond_dropout, "guidance": self.guidance, "scale_knots": self.scale_knots,
                "scale_floor": self.scale_floor, "scale_bins": self.scale_bins, "tail_bins": self.tail_bins, "clip_knots": self.clip_knots,
                "clip": self.clip, "clip_quantile": self.clip_quantile, "tail_clip_quantile": self.tail_clip_quantile,
                "dry_clip_quantile": self.dry_clip_quantile,
                "spread_knots": self.spread_knots,
                "calibrate_members": self.calibrate_members, "time_rho": self.time_rho, "steps": self.default_steps,
                "calibrate_dry": self.calibrate_dry, "calibrate_shift": self.calibrate_shift,
                "calibrate_quantiles": self.calibrate_quantiles, "quantile_knots": self.quantile_knots}
