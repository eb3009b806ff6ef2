"""The ddpm kind with EDM preconditioning: oracle denoiser through the sampler, loss weighting, cards."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qpe_core.models import DDPM, EDMDiffusion, make_objective, objective_from_config
from qpe_core.models.samplers import edm_sampler, edm_sigmas


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class OracleF(nn.Module):
    """The exact network output ``F`` for standardised data ``z ~ N(mu, q^2)``: the posterior mean
    ``D = mu + q^2 (x - mu) / (q^2 + sigma^2)`` written back through EDM's preconditioning."""

    def __init__(self, obj: EDMDiffusion, mu: float, q: float):
        super().__init__()
        self.obj, self.mu, self.q = obj, mu, q

    def forward(self, inp, t):
        lo, hi = math.log(self.obj.sigma_min), math.log(self.obj.sigma_max)
        s = torch.exp(lo + t * (hi - lo)).view(-1, 1, 1, 1).to(inp)
        sd = self.obj.sigma_data
        x = inp[:, -1:] * (s**2 + sd**2).sqrt()  # undo c_in
        d = self.mu + self.q**2 * (x - self.mu) / (self.q**2 + s**2)
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        return (d - c_skip * x) / c_out


@pytest.mark.parametrize("sampler,steps", [("heun", 32), ("stochastic", 64)])
def test_edm_sampler_recovers_gaussian_data_with_oracle(sampler, steps):
    """From sigma_max = 80 to 0 the oracle's samples have the data's mean and std, in rain units
    (data_mean + data_std z), with the deterministic and the stochastic (churn) sampler, without noise
    inflation (``s_noise = 1``); the default inflation (1.12, chosen for an under-trained network)
    widens an oracle's stochastic samples, and only those, by a bounded amount."""
    def draw(**kw):
        obj = EDMDiffusion(**kw)
        obj.set_data_stats(-0.4, 0.7)
        return obj.sample({"net": OracleF(obj, mu=0.5, q=0.6)}, torch.zeros(2, 1, 32, 32), members=8,
                          steps=steps, sampler=sampler, generator=gen(1))

    out = draw(s_noise=1.0)
    assert out.shape == (2, 8, 32, 32)
    mean, std = out.mean().item(), out.std().item()
    assert abs(mean - (-0.4 + 0.7 * 0.5)) < 0.03, mean
    assert abs(std / (0.7 * 0.6) - 1) < 0.04, std
    widened = draw().std().item() / std
    assert (1.05 < widened < 1.25) if sampler == "stochastic" else widened == pytest.approx(1.0), widened


def test_edm_sigmas_and_churn_off_is_deterministic():
    s = edm_sigmas(18)
    assert len(s) == 19 and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0.0
    assert all(a > b for a, b in zip(s, s[1:]))
    x = torch.randn(1, 1, 4, 4, generator=gen(0))
    a = edm_sampler(lambda x, sig: 0.5 * x, x * 80, s, churn=0.0, generator=gen(1))
    b = edm_sampler(lambda x, sig: 0.5 * x, x * 80, s, churn=0.0, generator=gen(2))
    c = edm_sampler(lambda x, sig: 0.5 * x, x * 80, s, churn=40.0, s_tmin=0.05, s_tmax=50, generator=gen(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_edm_loss_weighting_is_unit_in_network_units():
    """For z ~ N(0, sigma_data^2) the optimal F is 0 and its loss E[(c_skip x - z)^2 / c_out^2] is 1 at
    every noise level (lambda = 1 / c_out^2); for narrower data z ~ N(0, 0.5^2) the exact oracle beats
    the zero network."""
    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x[:, -1:])
    obj, none = EDMDiffusion(), torch.zeros(4096, 0, 4, 4)
    y = torch.randn(4096, 1, 4, 4, generator=gen(3))
    loss0, logs = obj.loss({"net": Zero()}, none, y, generator=gen(4))
    assert 0.95 < float(loss0) < 1.05 and "x0_mse" in logs
    zero, _ = obj.loss({"net": Zero()}, none, 0.5 * y, generator=gen(4))
    oracle, _ = obj.loss({"net": OracleF(obj, 0.0, 0.5)}, none, 0.5 * y, generator=gen(4))
    assert float(oracle) < 0.9 * float(zero)


def test_ddpm_kind_is_edm_by_default_and_old_cards_stay_vp():
    obj = make_objective("ddpm")
    assert isinstance(obj, EDMDiffusion) and obj.default_sampler == "stochastic"
    assert objective_from_config(obj.config()).config() == obj.config()
    vp = make_objective("ddpm", param="vp")
    assert isinstance(vp, DDPM) and objective_from_config(vp.config()).prediction == "v"
    old = {k: v for k, v in vp.config().items() if k != "param"}  # a card written before EDM
    assert isinstance(objective_from_config(old), DDPM)
    with pytest.raises(ValueError, match="edm"):
        make_objective("ddpm", param="ve")
