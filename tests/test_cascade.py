"""Cascade flow (the product default): frozen U-Net mean + flow on the held-out-scaled residual."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_models import TINY, CountingNet, OracleGaussianFlow, _toy_batch, gen

from qpe_core.archive import Archive
from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.errors import QpeError
from qpe_core.models import CascadeFlow, build_networks, make_objective, midpoint
from qpe_core.models.cascade import WET_CUT
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.training.checkpoint import load_checkpoint, load_tensors
from qpe_core.training.train import TrainConfig, train


class ConstantNet(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, t):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.value)


def test_cascade_samples_mean_plus_scaled_residual_with_oracle():
    obj = CascadeFlow(residual_std=0.4)
    nets = {"mean": ConstantNet(0.7), "flow": OracleGaussianFlow(0.0, 1.0)}  # u ~ N(0, 1)
    out = obj.sample(nets, torch.zeros(4, 2, 32, 32), members=8, steps=8, generator=gen(1))
    assert out.shape == (4, 8, 32, 32)
    assert abs(out.mean().item() - 0.7) < 0.01 and abs(out.std().item() / 0.4 - 1) < 0.02


def test_midpoint_is_second_order():
    # dx/dt = x: exact e; midpoint error shrinks ~4x per halving of h
    errs = [abs(midpoint(lambda x, t: x, torch.ones(1), 0.0, 1.0, n).item() - np.e) for n in (4, 8)]
    assert 3.5 < errs[0] / errs[1] < 4.5
    # a graded grid (rho 2) is still second order and lands on t1; time-dependent field dx/dt = t x: exact e^0.5
    errs = [abs(midpoint(lambda x, t: t * x, torch.ones(1), 0.0, 1.0, n, rho=2.0).item() - np.exp(0.5)) for n in (8, 16)]
    assert 3.0 < errs[0] / errs[1] < 5.0
    seen = []
    midpoint(lambda x, t: seen.append(t) or x, torch.ones(1), 0.0, 1.0, 4, rho=2.0)
    assert seen[::2] == pytest.approx([0.0, 0.4375, 0.75, 0.9375])  # 1 - (1 - i/4)^2: steps shorten toward data
    with pytest.raises(ValueError, match="time_rho"):
        CascadeFlow(time_rho=0.5)


def test_fit_residual_std_and_frozen_mean_gets_no_gradient():
    obj = CascadeFlow()
    cond, target, mask = _toy_batch()
    nets = build_networks(obj, cond.shape[1], **TINY)
    rms = obj.fit_residual_std(nets, cond, target, mask)
    with torch.no_grad():
        m = nets["mean"](cond, torch.zeros(2))
    ok = torch.isfinite(target) & mask.unsqueeze(1).bool()
    assert rms == pytest.approx(float(((target - m)[ok] ** 2).mean().sqrt()), rel=1e-5)
    loss, logs = obj.loss(nets, cond, target, mask, generator=gen(2))
    loss.backward()
    assert all(p.grad is None for p in nets["mean"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["flow"].parameters())
    assert np.isfinite(logs["mean_mse"])


def test_guidance_doubles_evaluations_and_config_round_trips():
    obj = make_objective("cascade-flow", guidance=2.0, cond_dropout=0.1)
    assert obj.evals_per_member(4, "heun") == 14
    nets = {name: CountingNet(cout) for name, (_, cout) in obj.network_specs(3).items()}
    assert obj.evals_per_member(4) == 16  # default midpoint: 2 per step, twice with guidance
    obj.sample(nets, torch.zeros(1, 3, 8, 8), members=1, steps=4, generator=gen(0))
    assert sum(n.calls for n in nets.values()) == 16 + 1
    assert make_objective(**obj.config()).config() == obj.config()
    with pytest.raises(ValueError, match="residual_std"):
        CascadeFlow(residual_std=0)


def test_a_guided_model_keeps_eight_evaluations_with_its_own_step_count():
    obj = make_objective("cascade-flow", guidance=2.0, cond_dropout=0.1, steps=2)
    assert obj.evals_per_member() == 8 and CascadeFlow().evals_per_member() == 8
    nets = {name: CountingNet(cout) for name, (_, cout) in obj.network_specs(3).items()}
    obj.sample(nets, torch.zeros(1, 3, 8, 8), members=1, generator=gen(0))
    assert sum(n.calls for n in nets.values()) == 8 + 1
    assert make_objective(**obj.config()).default_steps == 2
    old = obj.config()
    del old["steps"]  # a card written before the option: the kind's 4 steps
    assert make_objective(**old).default_steps == 4
    with pytest.raises(ValueError, match="steps"):
        CascadeFlow(steps=0)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("casc") / "sim.zarr")
    arc = Archive.create(url, "france-3km", list(DEFAULT_CHANNELS))
    simulate_to_archive(arc, "2024-06-01T00:00", 32, seed=4)
    return url


def _cfg(archive, out, kind, **kw):
    return TrainConfig(archive=archive, kind=kind, out=str(out), max_steps=3, patch=32, batch_size=2,
                       backbone=TINY, val_block="2h", val_fraction=0.5, val_patches=4, fit_patches=8, val_every=3, save_every=3, **kw)


def test_training_freezes_the_unet_and_fits_scale_on_validation(archive, tmp_path):
    train(_cfg(archive, tmp_path / "unet", "unet"))
    card = train(_cfg(archive, tmp_path / "cf", "cascade-flow", mean_checkpoint=str(tmp_path / "unet")))
    unet, cf = load_tensors(tmp_path / "unet" / "weights.safetensors"), load_tensors(tmp_path / "cf" / "weights.safetensors")
    for k, v in unet.items():  # the cascade's mean network is the U-Net, bit for bit
        assert torch.equal(cf["mean." + k[len("net."):]], v)
    assert card["mean_checkpoint"]["path"] == str(tmp_path / "unet")
    assert card["mean_checkpoint"]["residual_fit_on"] == "8 validation patches"
    assert card["objective"]["residual_std"] != 1.0 and card["objective"]["residual_std"] > 0
    # the final EMA weights are calibrated on the validation patches, and the saved card says so
    assert card["objective"]["spread_knots"] and load_checkpoint(tmp_path / "cf").objective.spread_knots
    last = json.loads((tmp_path / "cf" / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["calibration"]["bins"] == len(card["objective"]["scale_knots"])
    assert load_checkpoint(tmp_path / "cf").card["normalizer"] == load_checkpoint(tmp_path / "unet").card["normalizer"]
    # without a mean checkpoint a U-Net is trained first into OUT/mean, with the same budget
    card = train(_cfg(archive, tmp_path / "cf2", "cascade-flow"))
    assert json.loads((tmp_path / "cf2" / "mean" / "card.json").read_text())["steps"] == 3
    assert card["mean_checkpoint"]["path"] == str(tmp_path / "cf2" / "mean")
    with pytest.raises(QpeError, match="needs a unet checkpoint"):
        train(_cfg(archive, tmp_path / "cf3", "cascade-flow", mean_checkpoint=str(tmp_path / "cf")))


def test_preloaded_patches_equal_store_reads(archive):
    from qpe_core.models import BTNormalizer, RainTransform
    from qpe_core.training.dataset import PatchSampler, valid_times

    arc = Archive.open(archive)
    lags = [0, -15, -30, -45]
    times = valid_times(arc, lags)
    norm = BTNormalizer([250.0] * len(arc.channels), [20.0] * len(arc.channels))
    store = PatchSampler(arc, lags, arc.channels, norm, RainTransform(), 32)
    mem = PatchSampler(arc, lags, arc.channels, norm, RainTransform(), 32)
    assert mem.preload(times[2:-2]) > 0
    for t in (times[2], times[-3], times[0]):  # the last lies outside memory: read from the store
        for a, b in zip(store.read(t, 40, 100), mem.read(t, 40, 100)):
            assert torch.equal(a, b)
    # a batch encoded at once (training, on its device) equals the patches encoded one by one
    where = [(times[2], 40, 100), (times[-3], 0, 0), (times[0], 200, 17)]
    raw = [mem.read_raw(*w) for w in where]
    raw[1] = (raw[1][0], raw[1][1].copy())  # (a view of the preloaded slots otherwise)
    raw[1][1][:5] = np.nan  # missing radar rows: masked, target 0
    batch = mem.encode_batch(*(torch.from_numpy(np.stack([r[k] for r in raw])) for k in range(2)))
    for i, (bt, rain) in enumerate(raw):
        for a, b in zip(batch, mem.encode(bt, rain)):
            assert torch.equal(a[i], b)
    assert batch[2][1, 0, :5].sum() == 0 and batch[2][1, 0, 5:].sum() > 0
    # two slots far apart hold their own lags only (8 slots), not the time range between them
    ny, nx = arc.group["rain"].shape[-2:]
    far = pd.DatetimeIndex([times[0], times[-1]])
    assert (far[1] - far[0]) > pd.Timedelta(minutes=60)
    assert mem.preload(far) == 2 * len(lags) * (len(arc.channels) + 1) * ny * nx * 4
    for t in far:
        for a, b in zip(store.read(t, 40, 100), mem.read(t, 40, 100)):
            assert torch.equal(a, b)


def test_residual_scale_follows_the_mean_on_held_out_data():
    """Residual RMS 0.05 where the mean says dry (-1.5) and 1.0 where it says rain (+1): the knots find both."""
    g = gen(5)
    wet = torch.rand(4, 1, 32, 32, generator=g) > 0.5
    m = torch.where(wet, torch.tensor(1.0), torch.tensor(-1.5))
    y = m + torch.where(wet, torch.tensor(1.0), torch.tensor(0.05)) * torch.randn(4, 1, 32, 32, generator=g)
    obj = CascadeFlow(scale_bins=8, scale_floor=0.05)
    obj.fit_residual_std({"mean": ConstantField(m)}, torch.zeros(4, 2, 32, 32), y)
    assert obj.scale_knots[0][0] == pytest.approx(-1.5) and obj.scale_knots[-1][0] == pytest.approx(1.0)
    s = obj.scale(torch.tensor([-1.5, 1.0])).tolist()
    assert s[0] == pytest.approx(0.05, rel=0.15) and s[1] == pytest.approx(1.0, rel=0.1)
    assert make_objective(**obj.config()).config() == obj.config()
    fixed = CascadeFlow(scale_knots=[[-1.5, 0.1], [0.5, 0.9], [2.0, 1.2]])
    s = fixed.scale(torch.tensor([-3.0, -1.5, -0.5, 0.5, 1.25, 4.0])).tolist()
    assert s == pytest.approx([0.1, 0.1, 0.5, 0.9, 1.05, 1.2])  # linear between knots, flat beyond


class ConstantField(torch.nn.Module):
    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, x, t):
        return self.field[: x.shape[0]]


def test_sampled_residual_stays_in_the_held_out_range():
    g = gen(6)
    m = torch.where(torch.rand(8, 1, 64, 64, generator=g) > 0.5, torch.tensor(1.0), torch.tensor(-1.5))
    y = m + torch.where(m > 0, 0.8, 0.25) * torch.randn(8, 1, 64, 64, generator=g)  # u ~ N(0, 1) in both
    obj = CascadeFlow(scale_bins=4, scale_floor=0.05, clip_quantile=0.999)
    obj.fit_residual_std({"mean": ConstantField(m)}, torch.zeros(8, 2, 64, 64), y)
    assert [k[0] for k in obj.clip_knots] == [k[0] for k in obj.scale_knots]
    assert obj.clip_knots[0][0] == -1.5 and obj.clip_knots[-1][0] == 1.0
    for _, lo, hi in obj.clip_knots:  # min and max of ~16k standard normal draws
        assert -5.0 < lo < -3.0 and 3.0 < hi < 5.0
    wild = {"mean": ConstantField(m[:1]), "flow": OracleGaussianFlow(0.0, 30.0)}  # a flow gone astray
    out = obj.sample(wild, torch.zeros(1, 2, 64, 64), members=2, steps=4, generator=gen(7))
    u = (out - m[:1]) / obj.scale(m[:1])
    lo, hi = min(k[1] for k in obj.clip_knots), max(k[2] for k in obj.clip_knots)
    assert u.min() >= lo - 1e-4 and u.max() <= hi + 1e-4 and u.abs().max() > 3.0
    off = CascadeFlow(scale_bins=4, clip=False)
    off.fit_residual_std({"mean": ConstantField(m)}, torch.zeros(8, 2, 64, 64), y)
    assert off.clip_knots is None and make_objective(**obj.config()).config() == obj.config()


def test_tail_bins_split_the_top_four_percent():
    from qpe_core.models.cascade import _quantile_parts

    v = torch.randn(10000, generator=gen(8))
    parts = _quantile_parts(v, 24, 5)
    assert [len(p) for p in parts[-5:]] == [200, 100, 50, 25, 25]
    assert sum(len(p) for p in parts) == 10000 and len(torch.cat(parts).unique()) == 10000
    assert all(v[a].max() <= v[b].min() for a, b in zip(parts[:-1], parts[1:]))  # increasing bins
    assert [len(p) for p in _quantile_parts(v, 4, 0)] == [2500] * 4


def test_calibration_matches_the_held_out_residual_where_the_scale_is_not_floored():
    """Held-out u ~ N(0.29, 0.96^2) where wet; a flow that draws N(0, 0.5^2) is moved to those moments
    AFTER the default 2/98 % clip (fitted before it, the clipped draw's sd falls ~6 % short), the
    floored (certain-dry) bin is left as drawn."""
    g = gen(9)
    wet = torch.rand(8, 1, 64, 64, generator=g) > 0.5
    m = torch.where(wet, torch.tensor(1.0), torch.tensor(-1.5))
    y = m + torch.where(wet, 0.8 * (0.3 + torch.randn(8, 1, 64, 64, generator=g)), 0.05 * torch.randn(8, 1, 64, 64, generator=g))
    obj = CascadeFlow(scale_bins=4, calibrate_members=2)
    nets = {"mean": ConstantField(m), "flow": OracleGaussianFlow(0.0, 0.5)}
    obj.fit_residual_std(nets, torch.zeros(8, 2, 64, 64), y)
    summary = obj.calibrate(nets, torch.zeros(8, 2, 64, 64), y, generator=gen(10))
    assert summary["bins"] == len(obj.scale_knots) and obj.spread_knots[0][1:] == [0.0, 1.0]
    u_true = ((y - m) / obj.scale(m))[wet]
    out = obj.sample({"mean": ConstantField(m[:4]), "flow": nets["flow"]}, torch.zeros(4, 2, 64, 64), members=4,
                     steps=8, generator=gen(11))
    u = ((out - m[:4]) / obj.scale(m[:4]))[wet[:4].expand(-1, 4, -1, -1)]
    assert abs(u.mean() - u_true.mean()) < 0.03 and abs(u.std() / u_true.std() - 1) < 0.05
    assert 1.7 < obj.spread_knots[-1][2] < 2.2  # gain ~ 0.96 / 0.5
    assert make_objective(**obj.config()).config() == obj.config()
    assert CascadeFlow(calibrate_members=0).calibrate(nets, torch.zeros(8, 2, 64, 64), y) is None


def test_quantile_calibration_matches_the_held_out_wet_probability_that_moments_miss():
    """Where the mean says rain is likely, a held-out residual that is a dry spike (40 %) plus a wet
    continuum: a Gaussian draw with the same mean and sd (moments) is wet about as often as its own
    shape allows, the quantile maps (``calibrate_quantiles``) give the held-out wet probability and
    its upper quartile; both stay inside the clip, and the card round-trips."""
    g = gen(21)
    m = torch.full((8, 1, 64, 64), 0.5)
    dry = torch.rand(8, 1, 64, 64, generator=g) < 0.4
    y = torch.where(dry, torch.tensor(-1.5), m + 0.9 * torch.randn(8, 1, 64, 64, generator=g).abs())
    nets = {"mean": ConstantField(m), "flow": OracleGaussianFlow(0.0, 0.5)}
    cond, small = torch.zeros(8, 2, 64, 64), {"mean": ConstantField(m[:4]), "flow": nets["flow"]}
    wet_true = float((y > WET_CUT).float().mean())
    out = {}
    for n in (0, 49):
        obj = CascadeFlow(scale_bins=4, calibrate_members=2, calibrate_quantiles=n)
        obj.fit_residual_std(nets, cond, y)
        obj.calibrate(nets, cond, y, generator=gen(22))
        assert (obj.quantile_knots is not None) == bool(n)
        out[n] = obj.sample(small, torch.zeros(4, 2, 64, 64), members=4, steps=8, generator=gen(23))
        assert out[n].min() >= y.min() - 1e-4 and out[n].max() <= y.max() + 1e-4
        assert make_objective(**obj.config()).config() == obj.config()
    wet = {n: float((o > WET_CUT).float().mean()) for n, o in out.items()}
    assert abs(wet[49] - wet_true) < 0.02 and abs(wet[0] - wet_true) > 0.05
    q75 = {n: float(o.flatten().quantile(0.75)) for n, o in out.items()}
    assert abs(q75[49] - float(y.flatten().quantile(0.75))) < 0.03
    with pytest.raises(ValueError, match="calibrate_quantiles"):
        CascadeFlow(calibrate_quantiles=1)


def test_calibration_without_shift_fits_the_spread_and_keeps_the_drawn_mean():
    """``calibrate_shift`` False: the held-out sd (0.96 where wet) is matched as with the shift, but the
    drawn residual keeps its own mean (0.2 from the flow), not the held-out days' bias (0.29)."""
    g = gen(9)
    wet = torch.rand(8, 1, 64, 64, generator=g) > 0.5
    m = torch.where(wet, torch.tensor(1.0), torch.tensor(-1.5))
    y = m + torch.where(wet, 0.8 * (0.3 + torch.randn(8, 1, 64, 64, generator=g)), 0.05 * torch.randn(8, 1, 64, 64, generator=g))
    obj = CascadeFlow(scale_bins=4, calibrate_members=2, calibrate_shift=False, clip=False)
    nets = {"mean": ConstantField(m), "flow": OracleGaussianFlow(0.2, 0.5)}
    obj.fit_residual_std(nets, torch.zeros(8, 2, 64, 64), y)
    obj.calibrate(nets, torch.zeros(8, 2, 64, 64), y, generator=gen(10))
    u_true = ((y - m) / obj.scale(m))[wet]
    out = obj.sample({"mean": ConstantField(m[:4]), "flow": nets["flow"]}, torch.zeros(4, 2, 64, 64), members=4,
                     steps=8, generator=gen(11))
    u = ((out - m[:4]) / obj.scale(m[:4]))[wet[:4].expand(-1, 4, -1, -1)]
    assert abs(u.mean() - 0.2) < 0.03 and abs(u_true.mean() - u.mean()) > 0.05  # the flow's mean, not the days'
    assert abs(u.std() / u_true.std() - 1) < 0.05
    assert make_objective(**obj.config()).config() == obj.config() and obj.config()["calibrate_shift"] is False


def test_tail_clip_quantile_tightens_only_the_top_four_percent():
    g = gen(12)
    m = torch.rand(8, 1, 64, 64, generator=g) * 3.0 - 1.0  # a continuum of mean values
    y = m + 0.5 * torch.randn(8, 1, 64, 64, generator=g)
    nets, cond = {"mean": ConstantField(m)}, torch.zeros(8, 2, 64, 64)
    base, tight = CascadeFlow(scale_bins=8, scale_floor=0.05), CascadeFlow(scale_bins=8, scale_floor=0.05, tail_clip_quantile=0.9)
    base.fit_residual_std(nets, cond, y)
    tight.fit_residual_std(nets, cond, y)
    assert base.scale_knots == tight.scale_knots and len(base.clip_knots) == 8 + 5
    assert base.clip_knots[:8] == tight.clip_knots[:8]  # the bulk's bins: same 2/98 % bounds
    for b, t in zip(base.clip_knots[8:], tight.clip_knots[8:]):  # the tail: 10/90 % bounds, narrower
        assert t[2] < b[2] - 0.3 and t[1] > b[1] + 0.3
    assert make_objective(**tight.config()).config() == tight.config()
    with pytest.raises(ValueError, match="tail_clip_quantile"):
        CascadeFlow(tail_clip_quantile=0.3)


def test_dry_clip_quantile_lets_the_flow_draw_showers_the_mean_misses():
    # half the pixels: mean ~ dry (-1.5), truth dry but for 1 % showers at 1.7 mm/h (y = 0); half wet
    g = gen(13)
    dry = torch.zeros(8, 1, 64, 64, dtype=torch.bool)
    dry[..., :32] = True
    m = torch.where(dry, -1.5 + 0.01 * torch.rand(8, 1, 64, 64, generator=g),
                    torch.rand(8, 1, 64, 64, generator=g) * 2.0 - 0.5)
    shower = dry & (torch.rand(8, 1, 64, 64, generator=g) < 0.01)
    y = torch.where(dry, torch.where(shower, 0.0, -1.5), m + 0.5 * torch.randn(8, 1, 64, 64, generator=g))
    nets, cond = {"mean": ConstantField(m)}, torch.zeros(8, 2, 64, 64)
    base = CascadeFlow(scale_bins=8, tail_bins=0, dry_clip_quantile=None)  # the bulk's 98 % everywhere
    open_ = CascadeFlow(scale_bins=8, tail_bins=0)  # the default: 100 % in the floored bins
    base.fit_residual_std(nets, cond, y)
    open_.fit_residual_std(nets, cond, y)
    floored = [i for i, k in enumerate(base.scale_knots) if k[1] <= base.scale_floor]
    assert floored and len(floored) < len(base.scale_knots)  # the dry bins, and wet ones
    for i in floored:  # 98 %: the dry value itself, no shower; 100 %: the showers' u (1.5 / 0.25 = 6)
        assert base.clip_knots[i][2] < 0.1 and open_.clip_knots[i][2] > 5.5
    wet = [i for i in range(len(base.clip_knots)) if i not in floored]
    assert [base.clip_knots[i] for i in wet] == [open_.clip_knots[i] for i in wet]
    flow = {"mean": ConstantField(m[:2]), "flow": OracleGaussianFlow(3.0, 1.0)}  # u ~ N(3, 1): showers
    for obj, expect in ((base, 0.0), (open_, 0.5)):
        out = obj.sample(flow, cond[:2], members=2, steps=4, generator=gen(14))
        drawn_wet = (out > -1.155)[dry[:2].expand(-1, 2, -1, -1)].float().mean()
        assert (drawn_wet > expect) if expect else drawn_wet == 0
    assert make_objective(**open_.config()).config() == open_.config()
    with pytest.raises(ValueError, match="dry_clip_quantile"):
        CascadeFlow(dry_clip_quantile=0.2)


def test_calibrate_dry_draws_showers_where_the_mean_is_dry_as_often_as_held_out():
    # mean ~ dry everywhere, 1 % of held-out pixels wet (1.7 mm/h); the flow draws u ~ N(0, 1), which
    # crosses the wet cut ((-1.155 + 1.5) / 0.25 = 1.4 sigma) on ~8 % of pixels
    g = gen(15)
    m = -1.5 + 0.01 * torch.rand(16, 1, 64, 64, generator=g)
    y = torch.where(torch.rand(16, 1, 64, 64, generator=g) < 0.01, 0.0, -1.5)
    cond = torch.zeros(16, 2, 64, 64)
    nets = {"mean": ConstantField(m), "flow": OracleGaussianFlow(0.0, 1.0)}
    wet = {}
    for flag in (False, True):
        obj = CascadeFlow(scale_bins=4, tail_bins=0, dry_clip_quantile=1.0, calibrate_dry=flag)
        obj.fit_residual_std({"mean": nets["mean"]}, cond, y)
        assert all(k[1] <= obj.scale_floor for k in obj.scale_knots)  # every bin floored
        obj.calibrate(nets, cond, y, generator=gen(16))
        out = obj.sample({"mean": ConstantField(m[:4]), "flow": nets["flow"]}, cond[:4], members=4, generator=gen(17))
        wet[flag] = float((out > -1.155).float().mean())
    assert 0.06 < wet[False] < 0.11 and 0.006 < wet[True] < 0.014
    assert make_objective(**obj.config()).config() == obj.config()
