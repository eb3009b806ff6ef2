"""Residual flow: a regression mean and a flow on its scale-normalised residual, trained jointly.

The product default until the cascade flow (:mod:`.cascade`) replaced it: trained in one loss, the
mean's training residuals are smaller than its errors on new data, which starved the spread and the
tail (docs/studies/history.md, "What was tried for the default"). Kept as an option and in the ``cpu-ablation`` study.
"""

from __future__ import annotations

import math

import torch

from qpe_core.models import samplers as S
from qpe_core.models.objectives import FlowMatching, _call, _f, _inference, _valid, masked_mse

LOG_SIGMA_RANGE = (-7.0, 2.0)  # clamp of the predicted log residual std (transformed units)


class ResidualFlow(FlowMatching):
    """Regression mean + flow matching on the scale-normalised residual (the previous default).

    Networks: ``mean`` = ``UNet(C, 2)``: channel 0 the mean ``m`` (masked MSE, as :class:`Regression`),
    channel 1 ``log s``, the residual std (Gaussian NLL of the detached residual under the floored
    scale ``s_hat``, so ``s_hat^2 -> E[r^2 | cond]`` where that exceeds the floor); ``flow`` = ``UNet(C + 2, 1)`` on ``cat(cond, m, x_t)``. The flow
    learns ``u = r / s_hat`` with ``r = y - m`` and ``s_hat = sqrt(s^2 + scale_floor^2)``
    (m, s detached), so ``u`` has about unit variance at every pixel, dry or convective; the
    ensemble is ``y = m + s_hat u``. With a fixed ``sigma_r`` the mean network has one channel and
    ``s = sigma_r``.

    Training is JOINT, one ``loss()`` call: ``L = L_mean + L_scale + flow_weight * L_flow``; the flow
    branch never pushes the mean or the scale.

    Warm start: for Gaussian ``u ~ N(0, 1)`` the marginal at t is ``N(0, g_t^2)``,
    ``g_t^2 = (1 - t)^2 sigma0^2 + t^2`` and the exact trajectory from ``x_0 = sigma0 z`` is
    ``x_t = g_t z``; sampling starts at ``t0`` from ``x_t0 = g_t0 z`` and integrates [t0, 1].
    Without normalisation a small residual (``s << sigma0``) makes the path bend sharply near
    t = 1 and 4 Euler steps miss the 64-step result by 20-70 %; normalising plus the ``scaled-euler``
    integrator (Gaussian part exact) with ``t0 = 0.3`` gets within a few % on a skewed bimodal toy
    (tests/test_models.py). ``t0`` trades the Gaussian-start approximation (grows with t0) against
    integration error (shrinks with t0).
    """

    kind, default_sampler, default_steps = "residual-flow", "scaled-euler", 4

    def __init__(self, sigma0: float = 1.0, t0: float = 0.3, sigma_r: float | None = None,
                 scale_floor: float = 0.05, flow_weight: float = 1.0):
        super().__init__(sigma0, sigma_data=1.0)
        if not 0.0 <= t0 < 1.0:
            raise ValueError(f"t0 must be in [0, 1), got {t0}")
        self.t0, self.sigma_r = float(t0), sigma_r
        self.scale_floor, self.flow_weight = float(scale_floor), float(flow_weight)

    def network_specs(self, in_channels):
        return {"mean": (in_channels, 1 if self.sigma_r is not None else 2), "flow": (in_channels + 2, 1)}

    def _mean(self, net, cond, chunk=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log residual std), both (B, 1, H, W), from the mean network at t = 0."""
        out = _call(net, cond, 0.0, chunk)
        if self.sigma_r is not None:
            return out[:, :1], torch.full_like(out[:, :1], math.log(self.sigma_r))
        return out[:, :1], out[:, 1:2].clamp(*LOG_SIGMA_RANGE)

    def residual_scale(self, log_s: torch.Tensor) -> torch.Tensor:
        """``s_hat = sqrt(s^2 + scale_floor^2)`` (transformed units), the residual normaliser."""
        return torch.sqrt(torch.exp(2 * log_s) + self.scale_floor**2)

    def loss(self, nets, cond, target, mask=None, generator=None):
        y, m = _valid(target, mask)
        mean, log_s = self._mean(nets["mean"], cond)
        l_mean = masked_mse(mean, y, m)
        r = ((y - mean) * m).detach()
        l_scale = torch.zeros_like(l_mean)
        if self.sigma_r is None:  # Gaussian NLL of the floored scale, the one that normalises u: where
            # s << scale_floor (certain dry pixels) its gradient vanishes instead of pushing log s
            # to its clamp with unit force on 80 % of pixels (that push dominated the mean network's
            # gradient norm, ~6 vs ~2 for a lone U-Net, and clipping starved the mean's MSE term)
            s_hat = self.residual_scale(log_s)
            l_scale = ((torch.log(s_hat) + 0.5 * (r / s_hat) ** 2) * m).sum() / m.sum().clamp(min=1.0)
        u = r / self.residual_scale(log_s.detach())
        l_flow = self._fm_loss(nets["flow"], torch.cat([cond, mean.detach()], 1), u, m, generator)
        loss = l_mean + l_scale + self.flow_weight * l_flow
        return loss, {"loss": _f(loss), "mean_mse": _f(l_mean), "scale_nll": _f(l_scale), "fm_mse": _f(l_flow)}

    def sample(self, nets, cond, members=1, steps=None, sampler=None, generator=None, chunk=None,
               t0: float | None = None):
        """As :meth:`Objective.sample`; ``t0`` overrides the configured warm-start time."""
        steps, sampler = self._check(steps, sampler)
        t0 = self.t0 if t0 is None else float(t0)
        with _inference(nets):
            mean, log_s = self._mean(nets["mean"], cond, chunk)
            mean, log_s = mean.repeat_interleave(members, 0), log_s.repeat_interleave(members, 0)
            x = S.gaussian_std(t0, self.sigma0, 1.0) * self._noise(mean, generator)
            inputs = torch.cat([cond.repeat_interleave(members, 0), mean], 1)
            u = self._integrate(nets["flow"], inputs, x, t0, steps, sampler, chunk)
            y = mean + self.residual_scale(log_s) * u
        return y.reshape(cond.shape[0], members, *cond.shape[-2:])

    def shared_evals(self):
        return 1

    def config(self):
        return {"kind": self.kind, "sigma0": self.sigma0, "t0": self.t0, "sigma_r": self.sigma_r,
                "scale_floor": self.scale_floor, "flow_weight": self.flow_weight}
