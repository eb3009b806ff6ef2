"""The oracle ensemble (``qpe_core.simulator.oracle``): its premise (the precipitation efficiency is
invisible to the IR), its exactness (the simulator's own efficiency gives its own rain back) and its
draws (the efficiency's stationary distribution; only convective rain changes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qpe_core.errors import QpeError
from qpe_core.simulator import Simulator
from qpe_core.simulator.fields import Dynamics
from qpe_core.simulator.oracle import (efficiency_amplitude, efficiency_draw, oracle_ensembles, rain_with,
                                       record_rain_inputs)

SHAPE, KM, SEED = (96, 96), 3.0, 5
SLOTS = pd.date_range("2024-06-20T12:00", periods=4, freq="15min")  # naive UTC, as slot_range gives


def test_efficiency_is_invisible_to_the_ir_and_changes_the_rain():
    """The same seed with the efficiency field replaced before every slot's rain: identical BT in
    every channel, different rain."""
    a, b = Simulator(SHAPE, KM, SEED), Simulator(SHAPE, KM, SEED)
    rng, own, amp = np.random.default_rng(0), b.dynamics._rain, efficiency_amplitude(b.dynamics)

    def other_efficiency(strat, latent):
        b.dynamics.efficiency = efficiency_draw(amp, SHAPE, rng)
        return own(strat, latent)

    b.dynamics._rain = other_efficiency
    rain_differs = False
    for t in SLOTS:
        (bt_a, rain_a, _), (bt_b, rain_b, _) = a.step(t), b.step(t)
        np.testing.assert_array_equal(bt_a, bt_b)
        rain_differs |= not np.array_equal(rain_a, rain_b)
    assert rain_differs


def test_rain_with_the_own_efficiency_is_the_simulators_rain():
    """Exact with the simulator's own efficiency; another efficiency changes convective pixels only."""
    sim = Simulator(SHAPE, KM, SEED)
    seen = record_rain_inputs(sim.dynamics)
    for t in SLOTS:
        _, rain, diag = sim.step(t)
        dyn = sim.dynamics
        np.testing.assert_array_equal(rain_with(dyn, seen["strat"], seen["latent"], dyn.efficiency), rain)
        changed = rain_with(dyn, seen["strat"], seen["latent"], dyn.efficiency + 1.0) != rain
        convective = diag["rain_convective"] > 0
        assert convective.any() and not (changed & ~convective).any()
        assert changed[convective].mean() > 0.9


def test_efficiency_draws_have_the_simulators_stationary_variance():
    """Fresh draws against the efficiency fields the simulator starts from (16 seeds each): the same
    mean field variance within sampling noise (a wrong amplitude is off by a large factor)."""
    dyns = [Dynamics((128, 128), KM, np.random.default_rng(s)) for s in range(16)]
    rng = np.random.default_rng(1)
    amp = efficiency_amplitude(dyns[0])
    ours = np.mean([efficiency_draw(amp, (128, 128), rng).var() for _ in range(16)])
    theirs = np.mean([d.efficiency.var() for d in dyns])
    assert 0.7 < ours / theirs < 1.4


def test_oracle_ensembles_keep_the_truth_and_redraw_only_convective_rain():
    times = pd.DatetimeIndex([SLOTS[1], SLOTS[3]]).tz_localize("UTC")
    ys, xs = slice(8, 88), slice(0, 96)
    ens, own = oracle_ensembles(Simulator(SHAPE, KM, SEED), SLOTS, times, 3, 2, ys, xs, np.random.default_rng(2))
    assert ens.shape == (2, 2, 3, 80, 96) and own.shape == (2, 80, 96)
    ref = Simulator(SHAPE, KM, SEED)
    steps = {t: ref.step(t) for t in SLOTS}
    for i, t in enumerate((SLOTS[1], SLOTS[3])):
        _, rain, diag = steps[t]
        np.testing.assert_array_equal(own[i], rain[ys, xs])
        convective = diag["rain_convective"][ys, xs] > 0
        same = ens[:, i] == own[i]  # (draw, member, y, x)
        assert same[:, :, ~convective].all()  # stratiform and dry pixels keep their rain in every member
        assert not same[:, :, convective].all(axis=(0, 1)).any()  # every convective pixel changes somewhere
    assert not np.array_equal(ens[0, 0, 0], ens[0, 0, 1])
    with pytest.raises(QpeError, match="not among the simulated slots"):
        oracle_ensembles(Simulator(SHAPE, KM, SEED), SLOTS[:2], pd.DatetimeIndex([SLOTS[3]]), 1, 1, ys, xs,
                         np.random.default_rng(0))
