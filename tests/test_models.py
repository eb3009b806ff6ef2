"""Models: transforms, U-Net backbone, objectives and samplers (tiny nets, CPU, seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from qpe_core.models import (
    DDPM,
    BTNormalizer,
    DiffusionSchedule,
    FlowMatching,
    RainTransform,
    ResidualFlow,
    UNet,
    build_networks,
    ddim,
    ddpm_ancestral,
    euler,
    heun,
    make_objective,
)
from qpe_core.models.samplers import gaussian_std, scaled

TINY = dict(base_channels=8, channel_mults=(1, 2), emb_dim=32)
KINDS = ["unet", "ddpm", "flow", "residual-flow", "cascade-flow"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- transforms

def test_rain_transform_round_trip_and_dry_pixels():
    tr = RainTransform(scale_mm_h=1.0, dry_threshold_mm_h=0.1)
    R = torch.tensor([0.0, 0.05, 0.0999, 0.1, 0.11, 0.5, 1.0, 7.3, 55.0, 180.0])
    y = tr.forward(R)
    assert tr.dry_value == -1.5 and torch.all(y[R < 0.1] == -1.5)  # one dry value, 0.5 below 0 mm/h
    assert tr.threshold_value - tr.dry_value > 0.59 and tr.dry_value < tr.cut_value < tr.threshold_value
    back = tr.inverse(y)
    wet = R >= 0.1
    torch.testing.assert_close(back[wet], R[wet], rtol=1e-5, atol=0)
    assert torch.all(back[R < 0.1] == 0.0)  # exactly 0, not tiny
    # generative output, any value: never negative, never below the threshold unless exactly dry
    noisy = torch.randn(10000, generator=gen(0)) * 2 - 1
    out = tr.inverse(noisy)
    assert (out >= 0).all() and ((out == 0) | (out >= 0.1)).all()
    # noise of 0.1 (to 3 sigma) around the dry value stays dry (the reason for the gap)
    assert (tr.inverse(tr.dry_value + 0.1 * torch.randn(10000, generator=gen(1)).clamp(-3, 3)) == 0).all()
    assert torch.isnan(tr.forward(torch.tensor([float("nan")]))).all()
    assert tr.forward(torch.tensor([-3.0])).item() == -1.5  # negative rain clamped to dry
    assert RainTransform.from_dict(json.loads(json.dumps(tr.to_dict()))).to_dict() == tr.to_dict()


def test_rain_transform_without_gap_reads_old_cards():
    old = {"scale_mm_h": 1.0, "dry_threshold_mm_h": 0.1, "offset": 1.0, "spread": 1.0}  # card before dry_gap
    tr = RainTransform.from_dict(old)
    assert tr.dry_gap == 0.0 and tr.dry_value == -1.0 and tr.cut_value == tr.threshold_value
    y = torch.tensor([-1.0, -0.95, -0.9, 0.0, 2.0])
    R = tr.inverse(y)
    assert R[0] == 0 and R[1] == 0 and R[2] > 0.1
    torch.testing.assert_close(R[2:], torch.expm1(y[2:] + 1.0))


def test_bt_normalizer_fit_nan_mask_and_model_card():
    g = gen(1)
    bt = torch.stack([220 + 5 * torch.randn(4, 8, 8, generator=g), 280 + 12 * torch.randn(4, 8, 8, generator=g)], 1)
    bt[2, :, :3] = float("nan")  # a missing older slot, partly
    norm = BTNormalizer.fit(bt)
    assert abs(norm.mean[0] - 220) < 1 and abs(norm.std[1] - 12) < 1.5
    x, valid = norm(bt)
    assert x.shape == bt.shape and valid.shape == (4, 8, 8) and torch.isfinite(x).all()
    assert (x[2, :, :3] == 0).all() and (valid[2, :3] == 0).all() and valid[0].all()
    cond = norm.condition(bt[None], static=torch.ones(1, 3, 8, 8))
    assert cond.shape == (1, 4 * 2 + 4 + 3, 8, 8)
    card = json.loads(json.dumps(norm.to_dict()))
    assert BTNormalizer.from_dict(card).mean == norm.mean
    with pytest.raises(ValueError, match="channels"):
        norm(torch.zeros(3, 8, 8))


# ---------------------------------------------------------------- backbone

def test_unet_shapes_gradients_and_default_size():
    default = UNet(29, 1)
    n = default.count_params()
    print(f"default UNet(29, 1) parameters: {n:,}")
    assert 1_000_000 <= n <= 4_000_000
    torch.manual_seed(0)
    net = UNet(5, 2, attention_at_coarsest=True, **TINY)
    x = torch.randn(3, 5, 16, 24, requires_grad=True)
    out = net(x, torch.rand(3))
    assert out.shape == (3, 2, 16, 24)
    out.square().mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 5, 15, 16), torch.zeros(1))
    plain = UNet(5, 2, **TINY)  # no attention: FLOPs proportional to the pixel count
    f1, f2 = plain.flops_per_eval(16, 16), plain.flops_per_eval(32, 32)
    assert f1 > 0 and 3.5 < f2 / f1 < 4.5


def test_unet_uses_time():
    torch.manual_seed(0)
    net = UNet(2, 1, **TINY).eval()
    x = torch.randn(1, 2, 16, 16)
    assert not torch.allclose(net(x, torch.zeros(1)), net(x, torch.full((1,), 0.5)))


# ---------------------------------------------------------------- objectives: training

def _toy_batch(c: int = 3, hw: int = 16):
    g = gen(2)
    cond = torch.randn(2, c, hw, hw, generator=g)
    target = torch.tanh(cond[:, :1]) + 0.3 * cond[:, 1:2] * cond[:, 2:3]  # transformed-space rain
    target[0, 0, :2] = float("nan")  # no radar there
    mask = torch.ones(2, hw, hw)
    mask[1, -3:] = 0
    return cond, target, mask


@pytest.mark.parametrize("kind", KINDS)
def test_objective_overfits_one_batch(kind):
    torch.manual_seed(0)
    obj = make_objective(kind)
    cond, target, mask = _toy_batch()
    nets = build_networks(obj, cond.shape[1], **TINY)
    opt = torch.optim.Adam(nets.parameters(), lr=3e-3)
    g, losses = gen(3), []
    for _ in range(150):
        loss, logs = obj.loss(nets, cond, target, mask, generator=g)
        assert math.isfinite(loss.item()) and math.isfinite(logs["loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"{kind}: loss {first:.3f} -> {last:.3f}")
    assert last < first - 0.2 * abs(first)


def test_masked_loss_ignores_nan_and_masked_pixels():
    torch.manual_seed(0)
    obj = make_objective("unet")
    cond, target, mask = _toy_batch()
    nets = build_networks(obj, 3, **TINY)
    loss, _ = obj.loss(nets, cond, target, mask)
    garbage = target.clone()
    garbage[1, 0, -3:] = 1e6  # masked out: must not matter
    assert torch.isclose(obj.loss(nets, cond, garbage, mask)[0], loss)
    pred = nets["net"](cond, torch.zeros(2))
    ok = torch.isfinite(target) & (mask[:, None] > 0)
    assert torch.isclose(loss, ((pred - target)[ok] ** 2).mean())


# ---------------------------------------------------------------- ODE integrators

def test_euler_heun_order_on_linear_ode():
    a, x0 = 1.3, torch.tensor([0.7])
    exact = x0 * math.exp(a)

    def v(x, t):
        return a * x

    def err(fn, n, **kw):
        return (fn(v, x0, 0.0, 1.0, n, **kw) - exact).abs().item()

    e8, e16 = err(euler, 8), err(euler, 16)
    h8, h16 = err(heun, 8), err(heun, 16)
    f8, f16 = err(heun, 8, euler_last=False), err(heun, 16, euler_last=False)
    assert 1.8 < e8 / e16 < 2.2  # first order
    assert 3.5 < h8 / h16 < 4.5 and 3.5 < f8 / f16 < 4.5  # second order (also with Euler last step)
    assert h16 < e16 / 10 and f16 < h16


def test_scaled_frame_exact_for_gaussian_velocity():
    s0, q = 1.0, 0.3
    z = torch.randn(100, generator=gen(4))

    def v(x, t):  # exact marginal velocity for N(0, s0^2) -> N(0, q^2)
        return x * (t * q**2 - (1 - t) * s0**2) / gaussian_std(t, s0, q) ** 2

    out = scaled(euler, v, s0 * z, 0.0, 1.0, 1, sigma0=s0, sigma_data=q)
    torch.testing.assert_close(out, q * z, rtol=1e-5, atol=1e-6)
    assert (euler(v, s0 * z, 0.0, 1.0, 4) - q * z).abs().max() > 0.1  # plain Euler is not


# ---------------------------------------------------------------- DDPM / DDIM

MU, SD = 0.4, 0.5  # toy data N(MU, SD^2)


def oracle_eps(schedule):
    def eps(x, t):
        ab = schedule.alpha_bar(t)
        return math.sqrt(1 - ab) * (x - math.sqrt(ab) * MU) / (ab * SD**2 + 1 - ab)
    return eps


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_ddim_and_ancestral_recover_gaussian_with_oracle(name):
    sch = getattr(DiffusionSchedule, name)(1000)
    assert sch.alpha_bar(0) == 1.0 and sch.alpha_bar(1000) < 1e-3 and (sch.betas > 0).all()
    x_T = torch.randn(20000, generator=gen(5), dtype=torch.float64)
    a = ddim(oracle_eps(sch), sch, x_T, 1000, eta=0.0, generator=gen(6))
    assert torch.equal(a, ddim(oracle_eps(sch), sch, x_T, 1000, eta=0.0, generator=gen(7)))  # deterministic
    for x in (a, ddpm_ancestral(oracle_eps(sch), sch, x_T, gen(8))):
        assert abs(x.mean().item() - MU) < 0.02 and abs(x.std().item() / SD - 1) < 0.02
    # fewer DDIM steps: same mean, variance slightly under-dispersed, converging as steps grow
    stds = [ddim(oracle_eps(sch), sch, x_T, n).std().item() / SD for n in (10, 50, 200)]
    assert stds[0] < stds[1] < stds[2] < 1.01 and stds[1] > 0.9


def test_ddim_eta1_full_steps_equals_ancestral():
    sch = DiffusionSchedule.cosine(1000)
    x_T = torch.randn(64, generator=gen(9), dtype=torch.float64)
    anc = ddpm_ancestral(oracle_eps(sch), sch, x_T, gen(10))
    d1 = ddim(oracle_eps(sch), sch, x_T, 1000, eta=1.0, generator=gen(10))
    torch.testing.assert_close(d1, anc, rtol=1e-8, atol=1e-8)
    assert len(sch.timesteps(50)) == 50 and sch.timesteps(50)[0] == 1000 and sch.timesteps(50)[-1] == 1


class OracleStandardEps(nn.Module):
    """Exact eps for standardised data z ~ N(m, q^2) under a cosine schedule; x_t in the last channel."""

    def __init__(self, schedule, T, m, q):
        super().__init__()
        self.ab, self.T, self.m, self.q = schedule._alpha_bars, T, m, q

    def forward(self, x, t):
        ab = self.ab[(t * self.T).round().long()].view(-1, 1, 1, 1).float()
        return (1 - ab).sqrt() * (x[:, -1:] - ab.sqrt() * self.m) / (ab * self.q**2 + 1 - ab)


@pytest.mark.parametrize("sampler,steps", [("ddim", 100), ("ancestral", 1000)])
def test_ddpm_objective_standardises_and_starts_from_moment_matched_noise(sampler, steps):
    """Targets y ~ N(-0.5, 0.6^2) with data stats (-0.5, 0.6): z ~ N(0, 1) exactly, so the oracle
    sampler from t_start must give back N(-0.5, 0.6^2) in rain-transform units."""
    obj = DDPM(clip_x0=None, prediction="eps")
    obj.set_data_stats(-0.5, 0.6)
    net = OracleStandardEps(obj.schedule, obj.T, 0.0, 1.0)
    out = obj.sample({"net": net}, torch.zeros(2, 1, 32, 32), members=8, steps=steps, sampler=sampler,
                     generator=gen(3))
    assert abs(out.mean().item() + 0.5) < 0.02 and abs(out.std().item() / 0.6 - 1) < 0.03
    assert make_objective(**obj.config()).config()["data_mean"] == -0.5


class OracleStandardV(OracleStandardEps):
    """Exact v = sqrt(ab) eps - sqrt(1 - ab) z for z ~ N(0, q^2) (posterior means of eps and z)."""

    def forward(self, x, t):
        ab = self.ab[(t * self.T).round().long()].view(-1, 1, 1, 1).float()
        x_t, d = x[:, -1:], ab * self.q**2 + 1 - ab
        return ab.sqrt() * (1 - ab).sqrt() * x_t / d - (1 - ab).sqrt() * ab.sqrt() * self.q**2 * x_t / d


@pytest.mark.parametrize("sampler,steps", [("ddim", 100), ("ancestral", 1000)])
def test_v_prediction_ddpm_recovers_data_from_pure_noise(sampler, steps):
    """The v network's sampler (v -> eps inside, from t = T, alpha_bar ~ 2e-9) gives back N(-0.5, 0.6^2)."""
    obj = DDPM(clip_x0=None)
    assert obj.prediction == "v" and obj.t_start == obj.T
    obj.set_data_stats(-0.5, 0.6)
    out = obj.sample({"net": OracleStandardV(obj.schedule, obj.T, 0.0, 1.0)}, torch.zeros(2, 1, 32, 32), members=8,
                     steps=steps, sampler=sampler, generator=gen(3))
    assert abs(out.mean().item() + 0.5) < 0.02 and abs(out.std().item() / 0.6 - 1) < 0.03


def test_ddpm_v_target_and_min_snr_weights():
    """The loss of a network that outputs 0 is the weighted mean square of the target: for v with
    min-SNR-5, ``E[w (ab eps^2 + (1 - ab) z^2)]``; without weighting ``E[v^2]`` ~ 1 for z ~ N(0, 1)."""
    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x[:, -1:])
    y = torch.randn(4096, 1, 4, 4, generator=gen(1))
    for gamma, lo, hi in ((None, 0.95, 1.05), (5.0, 0.2, 0.6)):
        obj = DDPM(min_snr_gamma=gamma)
        loss, logs = obj.loss({"net": Zero()}, torch.zeros(4096, 0, 4, 4), y, generator=gen(2))
        assert lo < float(loss) < hi and 0.95 < logs["v_mse"] < 1.05


def test_old_ddpm_cards_load_as_eps_prediction():
    from qpe_core.models import objective_from_config
    old = {k: v for k, v in DDPM(prediction="eps").config().items() if k not in ("prediction", "min_snr_gamma")}
    obj = objective_from_config(old)
    assert obj.prediction == "eps" and obj.min_snr_gamma is None and obj.t_start == 908
    assert objective_from_config(DDPM().config()).prediction == "v"


# ---------------------------------------------------------------- sampling through objectives

class OracleGaussianFlow(nn.Module):
    """Exact velocity for x1 ~ N(mu, q^2) from x0 ~ N(0, sigma0^2); reads x_t from the last channel."""

    def __init__(self, mu, q, sigma0=1.0):
        super().__init__()
        self.mu, self.q, self.s0 = mu, q, sigma0

    def forward(self, x, t):
        x_t, t = x[:, -1:], t.view(-1, 1, 1, 1)
        st2 = ((1 - t) * self.s0) ** 2 + (t * self.q) ** 2
        return self.mu + (t * self.q**2 - (1 - t) * self.s0**2) / st2 * (x_t - t * self.mu)


def test_flow_sampler_with_oracle_reproduces_target():
    obj = FlowMatching()
    cond = torch.zeros(4, 1, 32, 32)
    out = obj.sample({"net": OracleGaussianFlow(0.8, 0.4)}, cond, members=8, steps=32, sampler="heun",
                     generator=gen(11))
    assert out.shape == (4, 8, 32, 32)
    assert abs(out.mean().item() - 0.8) < 0.01 and abs(out.std().item() / 0.4 - 1) < 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_sample_deterministic_members_differ(kind):
    torch.manual_seed(0)
    obj = make_objective(kind)
    cond = _toy_batch()[0]
    nets = build_networks(obj, 3, **TINY).train()
    kw = dict(members=3, steps=4 if kind != "ddpm" else 5)
    a = obj.sample(nets, cond, generator=gen(12), **kw)
    assert a.shape == (2, 3, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, obj.sample(nets, cond, generator=gen(12), **kw))  # same generator: same ensemble
    b = obj.sample(nets, cond, generator=gen(12), chunk=2, **kw)  # batch chunks: same up to float rounding
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert all(n.training for n in nets.values())  # sample() restores the training flag
    if kind == "unet":
        assert torch.equal(a[:, 0], a[:, 1])
    else:
        assert not torch.allclose(a[:, 0], a[:, 1])
        assert not torch.allclose(a, obj.sample(nets, cond, generator=gen(13), **kw))


# ---------------------------------------------------------------- residual flow warm start

W_MIX, MU_MIX, Q_MIX = (0.7, 0.3), (-0.6, 1.4), (0.4, 0.6)  # skewed, zero mean, unit-ish variance


class OracleMean(nn.Module):
    """Mean = cond channel 0, log residual std = cond channel 1."""

    def forward(self, x, t):
        return x[:, :2]


class OracleMixtureFlow(nn.Module):
    """Exact velocity E[u - x0 | x_t] for u ~ sum_k w_k N(mu_k, q_k^2), x0 ~ N(0, 1)."""

    def __init__(self, w, mu, q):
        super().__init__()
        self.w, self.mu, self.q = (torch.tensor(v, dtype=torch.float32) for v in (w, mu, q))

    def forward(self, x, t):
        x_t, t = x[:, -1:, ..., None], t.view(-1, 1, 1, 1, 1)
        s2 = (1 - t) ** 2 + t**2 * self.q**2
        logp = torch.log(self.w) - 0.5 * (x_t - t * self.mu) ** 2 / s2 - 0.5 * torch.log(s2)
        e_k = self.mu + (t * self.q**2 - (1 - t)) / s2 * (x_t - t * self.mu)
        return (torch.softmax(logp, -1) * e_k).sum(-1)


def _residual_toy(flow: nn.Module, members: int = 16):
    torch.manual_seed(14)
    cond = torch.cat([torch.randn(2, 1, 32, 32), torch.log(0.05 + 0.6 * torch.rand(2, 1, 32, 32))], 1)
    obj = ResidualFlow(t0=0.3, scale_floor=0.0)
    nets = {"mean": OracleMean(), "flow": flow}
    ref = obj.sample(nets, cond, members, steps=64, sampler="heun", generator=gen(15), t0=0.0)
    fast = obj.sample(nets, cond, members, generator=gen(15))  # defaults: t0 = 0.3, scaled-euler, 4 steps
    cold4 = obj.sample(nets, cond, members, steps=4, sampler="euler", generator=gen(15), t0=0.0)
    scale = torch.exp(cond[:, 1:2])  # residual std per pixel
    return [(x - cond[:, :1]) / scale for x in (ref, fast, cold4)]  # normalised residuals


def test_residual_flow_warm_start_exact_for_gaussian_residual():
    ref, fast, cold4 = _residual_toy(OracleGaussianFlow(0.0, 1.0))
    assert abs(ref.std().item() - 1) < 0.02 and abs(ref.mean().item()) < 0.02
    err, err_cold = (fast - ref).abs().max().item(), (cold4 - ref).abs().mean().item()
    print(f"gaussian residual: warm 4-step max err {err:.2e}, cold 4-step Euler mean err {err_cold:.3f}")
    assert err < 1e-3 < err_cold


def test_residual_flow_warm_start_close_on_bimodal_residual():
    ref, fast, cold4 = _residual_toy(OracleMixtureFlow(W_MIX, MU_MIX, Q_MIX))
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    q_ref = ref.flatten().quantile(qs)
    assert abs(q_ref[2].item() - (-0.375)) < 0.03  # the 64-step reference matches the mixture median
    q_err = (fast.flatten().quantile(qs) - q_ref).abs().max().item()
    err, err_cold = (fast - ref).abs().mean().item(), (cold4 - ref).abs().mean().item()
    print(f"bimodal residual: warm 4-step quantile err {q_err:.3f}, mean err {err:.3f}; cold 4-step {err_cold:.3f}")
    assert q_err < 0.06 and err < 0.03 and err_cold > 3 * err


# ---------------------------------------------------------------- bookkeeping

class CountingNet(nn.Module):
    def __init__(self, out_channels: int = 1):
        super().__init__()
        self.calls, self.out = 0, out_channels

    def forward(self, x, t):
        self.calls += 1
        return torch.zeros(x.shape[0], self.out, *x.shape[-2:])


@pytest.mark.parametrize("kind,steps,sampler,expected", [
    ("flow", 4, "euler", 4), ("flow", 4, "heun", 7), ("flow", 3, "scaled-heun", 5), ("flow", 1, "heun", 1),
    ("ddpm", 20, "stochastic", 39), ("ddpm", 4, "heun", 7), ("ddpm", 1, "heun", 1), ("residual-flow", 4, "scaled-euler", 4),
    ("unet", 4, None, 0), ("cascade-flow", 4, "heun", 7), ("cascade-flow", 4, "midpoint", 8),
    ("cascade-flow", 3, "euler", 3),
])
def test_evals_per_member_matches_network_calls(kind, steps, sampler, expected):
    obj = make_objective(kind)
    nets = {name: CountingNet(cout) for name, (_, cout) in obj.network_specs(3).items()}
    assert obj.evals_per_member(steps, sampler) == expected
    obj.sample(nets, torch.zeros(1, 3, 8, 8), members=1, steps=steps, sampler=sampler, generator=gen(0))
    assert sum(n.calls for n in nets.values()) == expected + obj.shared_evals()


@pytest.mark.parametrize("steps,sampler,expected", [(20, "ddim", 20), (20, "ancestral", 20), (1000, "ancestral", 1000)])
def test_vp_ddpm_evals_match_network_calls(steps, sampler, expected):
    obj = make_objective("ddpm", param="vp")
    net = CountingNet(1)
    assert obj.evals_per_member(steps, sampler) == expected
    obj.sample({"net": net}, torch.zeros(1, 3, 8, 8), steps=steps, sampler=sampler, generator=gen(0))
    assert net.calls == expected


def test_eval_counts_factory_and_errors():
    assert DDPM(start_alpha_bar=0.0, prediction="eps").evals_per_member(1000, "ancestral") == 1000
    assert DDPM().t_start == 1000  # v-prediction samples from pure noise (zero SNR)
    d = DDPM(prediction="eps")  # sampling starts at the last t with alpha_bar >= 0.02 (t = 908 of the cosine schedule)
    assert d.t_start == 908 and d.schedule.alpha_bar(908) >= 0.02 > d.schedule.alpha_bar(909)
    assert make_objective("residual-flow").evals(16) == 16 * 4 + 1  # members x steps + shared mean
    assert make_objective("unet").evals(16) == 1
    for kind in KINDS:
        obj = make_objective(kind)
        assert make_objective(**obj.config()).config() == obj.config()
    assert make_objective("residual-flow").network_specs(29) == {"mean": (29, 2), "flow": (31, 1)}
    fixed = make_objective("residual-flow", sigma_r=0.3)  # constant residual scale: 1-channel mean net
    assert fixed.network_specs(29)["mean"] == (29, 1)
    cond, target, mask = _toy_batch()
    loss, logs = fixed.loss(build_networks(fixed, 3, **TINY), cond, target, mask)
    assert math.isfinite(loss.item()) and logs["scale_nll"] == 0.0
    with pytest.raises(ValueError, match="residual-flow"):
        make_objective("gan")
    with pytest.raises(ValueError, match="euler"):
        make_objective("flow").sample({}, torch.zeros(1, 1, 8, 8), sampler="rk4")


def test_tendency_encoding_is_the_newest_slot_and_successive_changes():
    net = UNet(4 * 3 + 4, 1, base_channels=8, channel_mults=(1, 2), tendency=(4, 3), tendency_gain=2.0)
    x = torch.randn(2, 16, 8, 8, generator=gen(1))
    enc = net.encode_lags(x)
    bt = x[:, :12].unflatten(1, (4, 3))
    torch.testing.assert_close(enc[:, :3], bt[:, 0])
    torch.testing.assert_close(enc[:, 3:6], 2.0 * (bt[:, 0] - bt[:, 1]))
    torch.testing.assert_close(enc[:, 9:12], 2.0 * (bt[:, 2] - bt[:, 3]))
    torch.testing.assert_close(enc[:, 12:], x[:, 12:])  # validity channels untouched
    again = UNet(**net.config)
    assert again.config == net.config and again.tendency == (4, 3)
    assert "tendency" not in UNet(16, 1, base_channels=8).config  # older cards unchanged
    with pytest.raises(ValueError, match="does not fit"):
        UNet(8, 1, tendency=(4, 3))


def test_slot_encoder_maps_every_slot_with_the_same_weights():
    """Each slot's features depend on that slot only and through one shared encoder: swapping two
    slots of the input swaps their features; the channels after the slots pass through untouched."""
    net = UNet(4 * 3 + 4, 1, base_channels=8, channel_mults=(1, 2), slot_encoder=(4, 3, 5)).eval()
    x = torch.randn(2, 16, 8, 8, generator=gen(2))
    with torch.no_grad():
        enc = net.encode_lags(x)
        swapped = x.clone()
        swapped[:, 0:3], swapped[:, 6:9] = x[:, 6:9], x[:, 0:3]
        enc_s = net.encode_lags(swapped)
        assert enc.shape == (2, 4 * 5 + 4, 8, 8) and net(x, torch.zeros(2)).shape == (2, 1, 8, 8)
    torch.testing.assert_close(enc_s[:, 0:5], enc[:, 10:15])
    torch.testing.assert_close(enc_s[:, 10:15], enc[:, 0:5])
    torch.testing.assert_close(enc_s[:, 5:10], enc[:, 5:10])
    torch.testing.assert_close(enc[:, 20:], x[:, 12:])
    again = UNet(**net.config)
    assert again.config["slot_encoder"] == (4, 3, 5) and "slot_encoder" not in UNet(16, 1, base_channels=8).config
    with pytest.raises(ValueError, match="does not fit"):
        UNet(16, 1, tendency=(4, 3), slot_encoder=(4, 3, 5))
