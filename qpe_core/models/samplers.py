"""Samplers: ODE integrators for flow matching and reverse processes for DDPM.

Each sampler is a short loop over a network callback, written to be checked line by line against
its paper:

* :func:`euler`, :func:`heun`, :func:`midpoint` integrate ``dx/dt = v(x, t)`` (flow matching / rectified flow,
  Lipman et al. 2023, Liu et al. 2023); Heun is the 2nd-order scheme of Karras et al. 2022 (EDM),
  Algorithm 1, with the correction skipped on the last step by default as in EDM.
* :func:`scaled` runs either of them in the frame ``w = x / s(t)``, ``s(t)`` the std of the flow's
  marginal for N(0, sigma_data^2) data, so the Gaussian (linear) part of the velocity is integrated
  exactly: an exponential integrator (cf. DPM-Solver, Lu et al. 2022 Prop. 3.1; DDIM is Euler in the
  analogous frame, Song et al. 2021 Sec. 4.3); only the non-Gaussian remainder is discretised.
* :func:`ddpm_ancestral` is Algorithm 2 of Ho et al. 2020; :func:`ddim` is Eq. 12 of Song et al.
  2021 with ``sigma_t(eta)`` of their Eq. 16 on an evenly spaced sub-sequence of steps.

Time conventions: flow time ``t`` in [0, 1] (0 = noise, 1 = data); DDPM paper time ``t`` in
1..T (T = most noisy), with ``alpha_bar(0) = 1``. All values are in the objective's units.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def euler(velocity_fn: VelocityFn, x: torch.Tensor, t0: float, t1: float, steps: int) -> torch.Tensor:
    """Explicit Euler on a uniform grid: ``x_{i+1} = x_i + h v(x_i, t_i)``, ``h = (t1 - t0) / steps``.

    Global error O(h); ``steps`` network evaluations.
    """
    h = (t1 - t0) / steps
    for i in range(steps):
        x = x + h * velocity_fn(x, t0 + i * h)
    return x


def heun(velocity_fn: VelocityFn, x: torch.Tensor, t0: float, t1: float, steps: int,
         euler_last: bool = True) -> torch.Tensor:
    """Heun's method (explicit trapezoid), Karras et al. 2022 Algorithm 1 lines 5-8.

    ``d = v(x_i, t_i)``; ``x' = x_i + h d``; ``x_{i+1} = x_i + h/2 (d + v(x', t_{i+1}))``.
    With ``euler_last`` the last step keeps ``x'`` (EDM line 8 condition), so it costs
    ``2 steps - 1`` evaluations instead of ``2 steps``; the global error stays O(h^2).
    """
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        d = velocity_fn(x, t)
        x_pred = x + h * d
        if euler_last and i == steps - 1:
            x = x_pred
        else:
            x = x + 0.5 * h * (d + velocity_fn(x_pred, t + h))
    return x


def midpoint(velocity_fn: VelocityFn, x: torch.Tensor, t0: float, t1: float, steps: int,
             rho: float = 1.0) -> torch.Tensor:
    """Explicit midpoint (RK2): ``x_{i+1} = x_i + h_i v(x_i + h_i/2 v(x_i, t_i), t_i + h_i/2)``.

    Global error O(h^2); ``2 steps`` network evaluations. ``rho`` > 1 shortens the steps toward
    ``t1``: ``t_i = t0 + (t1 - t0) (1 - (1 - i/steps)^rho)`` (1 = uniform; cf. EDM's rho, which
    concentrates steps at low noise for the same reason: the fine scales are decided last).
    """
    if rho == 1.0:  # uniform, as it always was (bitwise)
        h = (t1 - t0) / steps
        ts, hs = [t0 + i * h for i in range(steps)], [h] * steps
    else:
        grid = [t0 + (t1 - t0) * (1.0 - (1.0 - i / steps) ** rho) for i in range(steps + 1)]
        ts, hs = grid[:-1], [b - a for a, b in zip(grid[:-1], grid[1:])]
    for t, h in zip(ts, hs):
        x = x + h * velocity_fn(x + 0.5 * h * velocity_fn(x, t), t + 0.5 * h)
    return x


def gaussian_std(t: float, sigma0: float = 1.0, sigma_data: float = 1.0) -> float:
    """Std of ``x_t = (1 - t) x0 + t x1`` for ``x0 ~ N(0, sigma0^2)``, ``x1 ~ N(0, sigma_data^2)``."""
    return math.sqrt(((1 - t) * sigma0) ** 2 + (t * sigma_data) ** 2)


def scaled(integrator, velocity_fn: VelocityFn, x: torch.Tensor, t0: float, t1: float, steps: int,
           sigma0: float = 1.0, sigma_data: float = 1.0) -> torch.Tensor:
    """Run ``integrator`` (:func:`euler` / :func:`heun`) on ``w = x / s(t)``, ``s = gaussian_std``.

    ``dw/dt = (v(x, t) - a(t) x) / s(t)`` with ``a = s'/s = (t sigma_data^2 - (1 - t) sigma0^2) / s^2``,
    the exact velocity for Gaussian data (then ``w`` is constant and any step count is exact).
    Euler in this frame: ``x_{i+1} = s_{i+1}/s_i (x_i + h (v_i - a_i x_i))``. Same evaluations as
    ``integrator``.
    """
    def s(t):
        return gaussian_std(t, sigma0, sigma_data)

    def w_velocity(w, t):
        x_t = s(t) * w
        a = (t * sigma_data**2 - (1 - t) * sigma0**2) / s(t) ** 2
        return (velocity_fn(x_t, t) - a * x_t) / s(t)

    return s(t1) * integrator(w_velocity, x / s(t0), t0, t1, steps)


class DiffusionSchedule:
    """Discrete DDPM noise schedule: ``betas[t-1]`` for paper time t = 1..T (float64 internally).

    ``alpha_bar(t) = prod_{s<=t} (1 - beta_s)`` (Ho et al. 2020 Eq. 4 notation), ``alpha_bar(0) = 1``.
    """

    def __init__(self, betas: torch.Tensor, name: str = "custom"):
        self.betas = torch.as_tensor(betas, dtype=torch.float64)
        self.name = name
        self.T = len(self.betas)
        self.alphas = 1.0 - self.betas
        self._alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(self.alphas, 0)])

    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> DiffusionSchedule:
        """Linear betas from 1e-4 to 0.02 at T = 1000 (Ho et al. 2020 Sec. 4), rescaled by 1000 / T."""
        return cls(torch.linspace(beta_1 * 1000 / T, beta_T * 1000 / T, T, dtype=torch.float64), "linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiffusionSchedule:
        """Cosine schedule, Nichol & Dhariwal 2021 Eq. 17: ``alpha_bar(t) = f(t)/f(0)``,
        ``f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)``, betas clipped at 0.999."""
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta), "cosine")

    def alpha_bar(self, t: int) -> float:
        return float(self._alpha_bars[t])

    def beta(self, t: int) -> float:
        return float(self.betas[t - 1])

    def posterior_variance(self, t: int) -> float:
        """``beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t`` (Ho et al. Eq. 7)."""
        return (1 - self.alpha_bar(t - 1)) / (1 - self.alpha_bar(t)) * self.beta(t)

    def timesteps(self, steps: int, t_max: int | None = None) -> list[int]:
        """Evenly spaced paper times from ``t_max`` (default T) down to 1, ``min(steps, t_max)`` of them."""
        t_max = self.T if t_max is None else int(t_max)
        if not 1 <= t_max <= self.T or steps < 1:
            raise ValueError(f"need steps >= 1 and t_max in 1..{self.T}, got steps={steps}, t_max={t_max}")
        ts = torch.linspace(1, t_max, min(steps, t_max), dtype=torch.float64).round().long().tolist()
        return sorted(set(ts), reverse=True)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _x0_hat(x, eps, ab, clip_x0):
    """``x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab)`` (Ho et al. Eq. 15), optionally clamped to
    ``clip_x0`` with ``eps`` recomputed to match (guided-diffusion ``clip_denoised``)."""
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    if clip_x0 is None:
        return x0, eps
    x0 = x0.clamp(*clip_x0)
    return x0, (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)


def ddpm_ancestral(eps_fn: EpsFn, schedule: DiffusionSchedule, x_T: torch.Tensor,
                   generator: torch.Generator | None = None, clip_x0: tuple[float, float] | None = None,
                   t_start: int | None = None) -> torch.Tensor:
    """Ancestral sampling, Ho et al. 2020 Algorithm 2, every step from ``t_start`` (default T) to 1:

    ``x_{t-1} = mu_tilde(x_t, x0_hat) + sigma_t z``, ``z = 0`` at ``t = 1``, with the posterior mean
    ``mu_tilde = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0_hat + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t``
    and ``sigma_t^2 = beta_tilde_t`` (Eq. 7), ``x0_hat`` from Eq. 15; without clipping this is exactly
    Eq. 11, ``(x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t)``.
    """
    x = x_T
    for t in range(schedule.T if t_start is None else t_start, 0, -1):
        ab, ab_prev, beta = schedule.alpha_bar(t), schedule.alpha_bar(t - 1), schedule.beta(t)
        x0, _ = _x0_hat(x, eps_fn(x, t), ab, clip_x0)
        mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x
        x = mean + math.sqrt(schedule.posterior_variance(t)) * _randn_like(x, generator) if t > 1 else mean
    return x


def ddim(eps_fn: EpsFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int, eta: float = 0.0,
         generator: torch.Generator | None = None, clip_x0: tuple[float, float] | None = None,
         t_start: int | None = None) -> torch.Tensor:
    """DDIM, Song et al. 2021 Eq. 12 on the sub-sequence ``schedule.timesteps(steps, t_start)``:

    ``x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``,
    ``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma z``, with
    ``sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)`` (Eq. 16).
    ``eta = 0``: deterministic; ``eta = 1`` and ``steps = T``: identical to :func:`ddpm_ancestral`.
    ``clip_x0`` bounds ``x0_hat`` (near t = T, ``1/sqrt(ab_T)`` amplifies any eps error).
    ``steps`` network evaluations.
    """
    ts = schedule.timesteps(steps, t_start)
    x = x_T
    for t, t_prev in zip(ts, ts[1:] + [0]):
        ab, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        x0_hat, eps = _x0_hat(x, eps_fn(x, t), ab, clip_x0)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
    return x


DenoiseFn = Callable[[torch.Tensor, float], torch.Tensor]


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """Noise levels of Karras et al. 2022 Eq. 5, ``sigma_max`` down to ``sigma_min`` in ``steps``
    levels (``rho`` = 7 spends most steps at low noise), then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [sigma_max, 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (steps - 1) * (b - a)) ** rho for i in range(steps)] + [0.0]


def edm_sampler(denoise: DenoiseFn, x: torch.Tensor, sigmas: list[float], churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Karras et al. 2022 Algorithm 2 (Heun, 2nd order, with optional stochastic churn).

    ``x`` starts as ``sigmas[0] * N(0, 1)``; ``denoise(x, sigma)`` is the denoiser ``D(x; sigma)``.
    At each level in ``[s_tmin, s_tmax]`` noise is first raised from ``sigma`` to
    ``sigma_hat = sigma (1 + gamma)``, ``gamma = min(churn / N, sqrt(2) - 1)``, by adding
    ``sqrt(sigma_hat^2 - sigma^2) s_noise z`` (``churn = 0``: the deterministic Algorithm 1); then one
    Euler step of ``dx/dsigma = (x - D) / sigma`` to the next level, corrected by the trapezoid rule
    except on the last step to 0. ``2 N - 1`` denoiser evaluations for ``N = len(sigmas) - 1``.
    """
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * _randn_like(x, generator)
        d = (x - denoise(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d2)
        x = x_next
    return x
