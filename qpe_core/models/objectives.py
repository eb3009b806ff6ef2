"""Training objectives sharing the :class:`~qpe_core.models.backbone.UNet` backbone.

Network / objective / sampler are separate (NVlabs/edm, torchcfm): an objective says which networks
it needs (:meth:`network_specs`), how to train them (:meth:`loss`) and how to draw an ensemble
(:meth:`sample`). Everything is in the TRANSFORMED rain space of
:class:`~qpe_core.models.transform.RainTransform`; tensors are ``cond (B, C, H, W)``,
``target (B, H, W)`` or ``(B, 1, H, W)`` (NaN = no radar), ``mask`` likewise (1 = valid radar).

Kinds: ``unet`` (:class:`Regression`), ``ddpm`` (:class:`DDPM`, Ho et al.'s discrete VP form;
:mod:`.edm` the default EDM form), ``flow`` (:class:`FlowMatching`); ``cascade-flow`` (the product
default) and ``residual-flow`` (the previous one) live in :mod:`.cascade` and :mod:`.residual_flow`.
Build one with :func:`make_objective`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from qpe_core.models import samplers as S
from qpe_core.models.backbone import UNet

CPU_CHUNK_PIXELS = 2**18  # pixels per network call on CPU when sample(chunk=None)


def _valid(target: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(target with invalid pixels set to 0, float mask) both (B, 1, H, W); NaN targets are invalid."""
    y = target if target.dim() == 4 else target.unsqueeze(1)
    m = torch.isfinite(y)
    if mask is not None:
        m = m & (mask if mask.dim() == 4 else mask.unsqueeze(1)).bool()
    return torch.where(m, y, torch.zeros_like(y)), m.to(y.dtype)


def _f(x: torch.Tensor) -> float:
    return float(x.detach())


def _device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def masked_mse(pred: torch.Tensor, target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of ``(pred - target)^2`` over pixels with ``m = 1`` (0 if none)."""
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp(min=1.0)


def _channels_last(net: nn.Module) -> bool:
    """True if the network's first conv weight is in channels_last memory format."""
    w = next((p for p in net.parameters() if p.dim() == 4), None)
    return w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


def _call(net: nn.Module, x: torch.Tensor, t: float | torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``net(x, t)`` with scalar or per-sample ``t``, in batch chunks of ``chunk`` samples.

    ``chunk=None``: the whole batch on accelerators, ``CPU_CHUNK_PIXELS // (H W)`` samples on CPU
    (1 at 384 x 384: per-sample time grows with the batch once activations leave the cache).
    Inputs follow the network's memory format (``net.to(memory_format=torch.channels_last)`` is
    20-35 % faster on CPU).
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
    if chunk is None and x.device.type == "cpu":
        chunk = max(1, CPU_CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
    if _channels_last(net):
        x = x.contiguous(memory_format=torch.channels_last)
    if not chunk or x.shape[0] <= chunk:
        return net(x, t)
    return torch.cat([net(xc, tc) for xc, tc in zip(x.split(chunk), t.split(chunk))])


@contextlib.contextmanager
def _inference(nets: dict[str, nn.Module]):
    """Eval mode (no dropout) and no autograd while sampling; training flags restored afterwards."""
    modes = {k: n.training for k, n in nets.items()}
    try:
        for n in nets.values():
            n.eval()
        with torch.inference_mode():
            yield
    finally:
        for k, n in nets.items():
            n.train(modes[k])


class Objective:
    """Common interface; subclasses set ``kind``, ``samplers``, ``default_sampler``, ``default_steps``."""

    kind = ""
    samplers: tuple[str, ...] = ()
    default_sampler = ""
    default_steps = 1

    def network_specs(self, in_channels: int) -> dict[str, tuple[int, int]]:
        """``{name: (in_channels, out_channels)}`` of the backbones this objective trains."""
        raise NotImplementedError

    def loss(self, nets, cond, target, mask=None, generator=None) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def sample(self, nets, cond, members: int = 1, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, chunk: int | None = None) -> torch.Tensor:
        """Ensemble ``(B, members, H, W)`` in transformed space; deterministic for a given generator.

        Members are batched as ``B * members`` (the members of one input contiguous); ``chunk`` caps
        the batch of one network call (default: automatic, see :func:`_call`) without changing the
        result beyond float rounding.
        """
        steps, sampler = self._check(steps, sampler)
        with _inference(nets):
            out = self._sample(nets, cond.repeat_interleave(members, 0), steps, sampler, generator, chunk)
        return out.reshape(cond.shape[0], members, *cond.shape[-2:])

    def evals_per_member(self, steps: int | None = None, sampler: str | None = None) -> int:
        """Network evaluations per member (on the ``B * members`` batch)."""
        steps, sampler = self._check(steps, sampler)
        return 2 * steps - 1 if sampler.endswith("heun") else steps

    def shared_evals(self) -> int:
        """Network evaluations per input shared by all members (e.g. the mean network)."""
        return 0

    def evals(self, members: int, steps: int | None = None, sampler: str | None = None) -> int:
        """Total network evaluations (single-sample equivalents) for one input and ``members``."""
        return members * self.evals_per_member(steps, sampler) + self.shared_evals()

    def config(self) -> dict:
        """Keyword arguments of :func:`make_objective` that rebuild this objective (for the model card)."""
        return {"kind": self.kind}

    def set_data_stats(self, mean: float, std: float) -> None:
        """Mean and std of the transformed training targets; used by objectives that standardise."""

    def _check(self, steps, sampler) -> tuple[int, str]:
        sampler = sampler or self.default_sampler
        if sampler not in self.samplers:
            raise ValueError(f"{self.kind}: unknown sampler {sampler!r}; choose from {list(self.samplers)}")
        steps = self.default_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return steps, sampler

    def _sample(self, nets, cond, steps, sampler, generator, chunk) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shape = (like.shape[0], 1, *like.shape[-2:])
        dev = _device(generator, like)
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


class Regression(Objective):
    """U-Net regression: ``net(cond, t=0)`` predicts the transformed rain; masked MSE loss.

    MSE (not Huber) so that the optimum is the conditional mean ``E[y | cond]`` in transformed space,
    which makes the residual of :class:`ResidualFlow` zero-mean. ``sample`` repeats the single
    deterministic prediction for every member (1 shared evaluation); ``steps`` and ``sampler`` are
    accepted for interface compatibility and ignored.
    """

    kind, samplers, default_sampler = "unet", ("deterministic",), "deterministic"

    def network_specs(self, in_channels):
        return {"net": (in_channels, 1)}

    def loss(self, nets, cond, target, mask=None, generator=None):
        y, m = _valid(target, mask)
        loss = masked_mse(nets["net"](cond, torch.zeros(cond.shape[0], device=cond.device)), y, m)
        return loss, {"loss": _f(loss), "mse": _f(loss)}

    def sample(self, nets, cond, members=1, steps=None, sampler=None, generator=None, chunk=None):
        """The prediction ``(B, 1, H, W)`` expanded to ``(B, members, H, W)`` (one evaluation)."""
        with _inference(nets):
            y = _call(nets["net"], cond, 0.0, chunk)
        return y.expand(-1, members, -1, -1).clone()

    def evals_per_member(self, steps=None, sampler=None):
        return 0

    def shared_evals(self):
        return 1


class DDPM(Objective):
    """Denoising diffusion (Ho et al. 2020), epsilon or v prediction.

    Works on standardised targets ``z = (y - data_mean) / data_std`` (statistics of the training
    set, set by :meth:`set_data_stats`): ``x_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps``, t ~ U{1..T};
    ``net(cat(cond, x_t), t / T)`` predicts ``eps`` (``prediction="eps"``, "L_simple", Eq. 14) or
    ``v = sqrt(ab_t) eps - sqrt(1 - ab_t) z`` (``"v"``, Salimans & Ho 2022); masked MSE, weighted
    per sample by min-SNR-gamma (Hang et al. 2023: ``min(SNR, gamma) / SNR`` for eps,
    ``min(SNR, gamma) / (SNR + 1)`` for v; ``min_snr_gamma=None``: unweighted).

    The study's baseline is ``prediction="v", min_snr_gamma=5`` sampled from t = T: v stays a
    well-posed target at zero SNR (there ``v = -z``: the network predicts the data), whereas an eps
    network must give ``x0`` through ``1/sqrt(ab_t)``; min-SNR stops the many low-noise steps, which
    teach texture only, from dominating the gradient. At the cpu study's budget the eps DDPM below
    collapsed toward the data mean (wet fraction 0.34 and q99 0.12 of truth). Schedule ``cosine`` (Nichol &
    Dhariwal 2021, default) or ``linear`` (Ho et al.). Samplers: ``ddim`` (Song et al. 2021,
    eta = 0) and ``ancestral`` (Ho et al. Alg. 2 when ``steps`` covers every step, otherwise DDIM
    with eta = 1, the respaced ancestral sampler).

    Sampling starts at the last t with ``alpha_bar(t) >= start_alpha_bar`` (0.02: t = 904 of the
    cosine schedule) from N(0, 1), which is exactly the mean and variance of ``x_t`` for
    standardised data. Near t = T the cosine schedule reaches zero SNR (``1/sqrt(ab_T) ~ 2e4``),
    where an eps-network cannot give ``x0`` (Lin et al. 2024): measured on a trained model, the
    first DDIM step's ``x0_hat`` errors were ~1e3, and clipping them to the asymmetric data range
    biased every member to the upper bound (wet fraction 1). ``clip_x0`` bounds ``x0_hat`` to the
    data range in rain-transform units (None disables).
    """

    kind, samplers, default_sampler, default_steps = "ddpm", ("ddim", "ancestral"), "ddim", 50

    def __init__(self, T: int = 1000, schedule: str = "cosine",
                 clip_x0: tuple[float, float] | None = (-1.5, 5.0), data_mean: float = 0.0,
                 data_std: float = 1.0, start_alpha_bar: float | None = None, prediction: str = "v",
                 min_snr_gamma: float | None = 5.0):
        if schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {schedule!r}")
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 or None, got {min_snr_gamma}")
        self.prediction, self.min_snr_gamma = prediction, None if min_snr_gamma is None else float(min_snr_gamma)
        if start_alpha_bar is None:  # eps: start where x0 is still recoverable; v: from pure noise
            start_alpha_bar = 0.02 if prediction == "eps" else 0.0
        self.T, self.schedule_name = int(T), schedule
        self.clip_x0 = None if clip_x0 is None else (float(clip_x0[0]), float(clip_x0[1]))
        self.schedule = getattr(S.DiffusionSchedule, schedule)(self.T)
        self._ab = self.schedule._alpha_bars.float()
        self.start_alpha_bar = float(start_alpha_bar)
        self.t_start = max(t for t in range(1, self.T + 1) if self.schedule.alpha_bar(t) >= self.start_alpha_bar)
        self.set_data_stats(data_mean, data_std)

    def set_data_stats(self, mean: float, std: float) -> None:
        """Mean and std of the transformed training targets (the standardisation of ``z``)."""
        if not std > 0:
            raise ValueError(f"data_std must be > 0, got {std}")
        self.data_mean, self.data_std = float(mean), float(std)

    def _z_clip(self):
        if self.clip_x0 is None:
            return None
        return tuple((c - self.data_mean) / self.data_std for c in self.clip_x0)

    def network_specs(self, in_channels):
        return {"net": (in_channels + 1, 1)}

    def loss(self, nets, cond, target, mask=None, generator=None):
        y, m = _valid(target, mask)
        z = (y - self.data_mean) / self.data_std
        dev = _device(generator, y)
        t = torch.randint(1, self.T + 1, (y.shape[0],), generator=generator, device=dev).to(y.device)
        ab = self._ab.to(y.device)[t].view(-1, 1, 1, 1)
        eps = self._noise(y, generator)
        x_t = ab.sqrt() * z + (1 - ab).sqrt() * eps
        target = eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * z
        pred = nets["net"](torch.cat([cond, x_t], 1), t.to(y.dtype) / self.T)
        w = torch.ones_like(ab)
        if self.min_snr_gamma is not None:
            snr = ab / (1 - ab).clamp_min(1e-12)
            w = snr.clamp(max=self.min_snr_gamma) / (snr + (1.0 if self.prediction == "v" else 0.0)).clamp_min(1e-12)
        loss = masked_mse(pred * w.sqrt(), target * w.sqrt(), m)
        return loss, {"loss": _f(loss), f"{self.prediction}_mse": _f(masked_mse(pred, target, m))}

    def _sample(self, nets, cond, steps, sampler, generator, chunk):
        def eps_fn(x, t):
            out = _call(nets["net"], torch.cat([cond, x], 1), t / self.T, chunk)
            if self.prediction == "eps":
                return out
            ab = self.schedule.alpha_bar(int(t))  # v -> eps, exact: eps = sqrt(1 - ab) x_t + sqrt(ab) v
            return (1 - ab) ** 0.5 * x + ab ** 0.5 * out

        x = self._noise(cond, generator)
        if sampler == "ancestral" and steps >= self.t_start:
            z = S.ddpm_ancestral(eps_fn, self.schedule, x, generator, self._z_clip(), t_start=self.t_start)
        else:
            eta = 1.0 if sampler == "ancestral" else 0.0
            z = S.ddim(eps_fn, self.schedule, x, steps, eta, generator, self._z_clip(), t_start=self.t_start)
        return self.data_mean + self.data_std * z

    def evals_per_member(self, steps=None, sampler=None):
        steps, sampler = self._check(steps, sampler)
        return len(self.schedule.timesteps(steps, self.t_start))

    def config(self):
        return {"kind": self.kind, "param": "vp", "T": self.T, "schedule": self.schedule_name, "clip_x0": self.clip_x0,
                "data_mean": self.data_mean, "data_std": self.data_std, "start_alpha_bar": self.start_alpha_bar,
                "prediction": self.prediction, "min_snr_gamma": self.min_snr_gamma}


class FlowMatching(Objective):
    """Conditional flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023).

    ``x0 ~ N(0, sigma0^2 I)``, ``x1 = y``, ``x_t = (1 - t) x0 + t x1`` with t ~ U(0, 1); the network
    ``net(cat(cond, x_t), t)`` regresses the velocity ``x1 - x0`` (masked MSE). Sampling integrates
    ``dx/dt = v`` from t = 0 to 1: ``euler``, ``heun`` (EDM Heun, last step Euler) or their
    ``scaled-`` variants (:func:`~qpe_core.models.samplers.scaled`, Gaussian part exact, reference
    data std ``sigma_data``).
    """

    kind, default_sampler, default_steps = "flow", "heun", 16
    samplers = ("euler", "heun", "scaled-euler", "scaled-heun")

    def __init__(self, sigma0: float = 1.0, sigma_data: float = 1.0):
        self.sigma0, self.sigma_data = float(sigma0), float(sigma_data)

    def network_specs(self, in_channels):
        return {"net": (in_channels + 1, 1)}

    def _fm_loss(self, net, inputs, x1, m, generator):
        """Masked flow-matching loss for data ``x1``; ``inputs`` is concatenated before ``x_t``."""
        t = torch.rand(x1.shape[0], generator=generator, device=_device(generator, x1)).to(x1)
        x0 = self.sigma0 * self._noise(x1, generator)
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * x1
        return masked_mse(net(torch.cat([inputs, x_t], 1), t), x1 - x0, m)

    def loss(self, nets, cond, target, mask=None, generator=None):
        y, m = _valid(target, mask)
        loss = self._fm_loss(nets["net"], cond, y, m, generator)
        return loss, {"loss": _f(loss), "fm_mse": _f(loss)}

    def _integrate(self, net, inputs, x, t0, steps, sampler, chunk):
        """Integrate ``dx/dt = net(cat(inputs, x), t)`` from ``t0`` to 1."""
        def velocity(x, t):
            return _call(net, torch.cat([inputs, x], 1), t, chunk)

        base = S.heun if sampler.endswith("heun") else S.euler
        if sampler.startswith("scaled-"):
            return S.scaled(base, velocity, x, t0, 1.0, steps, self.sigma0, self.sigma_data)
        return base(velocity, x, t0, 1.0, steps)

    def _sample(self, nets, cond, steps, sampler, generator, chunk):
        x = self.sigma0 * self._noise(cond, generator)
        return self._integrate(nets["net"], cond, x, 0.0, steps, sampler, chunk)

    def config(self):
        return {"kind": self.kind, "sigma0": self.sigma0, "sigma_data": self.sigma_data}


# cascade-flow, residual-flow and the EDM ddpm register themselves in qpe_core.models (they build on this module)
OBJECTIVES = {cls.kind: cls for cls in (Regression, DDPM, FlowMatching)}


def make_objective(kind: str, **kw) -> Objective:
    """Objective for ``kind`` in ``unet``, ``ddpm``, ``flow``, ``residual-flow`` (``kw`` to its constructor)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown objective kind {kind!r}; choose from {list(OBJECTIVES)}")
    return OBJECTIVES[kind](**kw)


def objective_from_config(config: dict) -> Objective:
    """The objective a model card's ``objective`` entry describes (``config()`` output). Cards that
    predate v-prediction have a DDPM entry without ``prediction``: those networks predict eps; cards
    that predate EDM (no ``param``) are the discrete VP DDPM."""
    config = dict(config)
    if config.get("kind") == "ddpm" and "param" not in config:  # before EDM: the discrete VP DDPM
        config["param"] = "vp"
    if config.get("kind") == "ddpm" and config["param"] == "vp" and "prediction" not in config:
        config.update(prediction="eps", min_snr_gamma=None)
    return make_objective(**config)


def build_networks(objective: Objective, in_channels: int, **unet_kw) -> nn.ModuleDict:
    """One :class:`UNet` per entry of ``objective.network_specs(in_channels)`` (``unet_kw`` shared)."""
    return nn.ModuleDict({name: UNet(cin, cout, **unet_kw)
                          for name, (cin, cout) in objective.network_specs(in_channels).items()})
