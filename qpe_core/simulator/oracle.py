"""The simulator's rain redrawn where the IR cannot see: an oracle ensemble (mm/h).

The convective rain rate carries a random precipitation efficiency (a latent field, log-sd
``FieldParams.efficiency_ln``, ~150 km scales, :mod:`.fields`) that no brightness temperature
depends on. Keeping every other latent of a slot as it was and redrawing only the efficiency from
its stationary distribution gives draws of the rain given everything the satellite sees, and more
(the updrafts, the stratiform field and the wetness are known exactly): an ensemble exchangeable
with the truth, which no model fed with IR can beat. ``scripts/maxima_oracle.py`` scores it like a
model (README "The maximum check and a perfect ensemble").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qpe_core.simulator.fields import (EFFICIENCY, LATENTS, fast_normal, lognormal_excess, lognormal_ranked,
                                       power_law_amplitude, wavenumbers)


def efficiency_draw(dyn, rng: np.random.Generator) -> np.ndarray:
    """One efficiency field (std units) from its stationary distribution: the latent's spectrum
    times fresh complex noise, as ``Dynamics.__init__`` starts it."""
    h, w = dyn.shape
    spec = LATENTS[EFFICIENCY]
    _, _, k, weight = wavenumbers(dyn.shape, dyn.pixel_km)
    amp = power_law_amplitude(k, weight, dyn.shape, spec.beta, spec.outer_km, spec.smooth_km)
    colfix = np.where(weight == 1.0, math.sqrt(2.0), 1.0) * math.sqrt(h * w / 2.0)
    noise = fast_normal(rng, (1, h, w // 2 + 1, 2)).view(np.complex64)[0, ..., 0]
    return np.fft.irfft2(amp * colfix * noise, s=dyn.shape).astype(np.float32)


def rain_with(dyn, strat: np.ndarray, rain_latent: np.ndarray, efficiency: np.ndarray) -> np.ndarray:
    """The simulator's rain (mm/h) of one slot with ``efficiency`` in place of its own field
    (``Dynamics._rain`` and ``Dynamics.step``'s cap and dry threshold)."""
    p = dyn.p
    mu_s = math.log(p.strat_median_mmh) + p.strat_wetness_ln * dyn.wetness
    r_s = lognormal_ranked(strat, dyn.strat_thr, mu_s, p.strat_sigma_ln)
    mu_c = math.log(p.conv_median_mmh) + p.efficiency_ln * efficiency
    rain = np.minimum(r_s + lognormal_excess(rain_latent, p.conv_rain_thr, mu_c, p.conv_sigma_ln), p.max_rain_mmh)
    rain[rain < p.min_rain_mmh] = 0.0
    return rain.astype(np.float32)


def record_rain_inputs(dyn) -> dict:
    """Make ``dyn`` (a :class:`.fields.Dynamics`) keep the inputs of each slot's rain (its stratiform
    latent ``strat`` and lagged updraft ``latent``) in the returned dict; its rain is unchanged."""
    seen: dict = {}
    own_rain = dyn._rain

    def recording(strat, rain_latent):
        seen.update(strat=strat.copy(), latent=rain_latent.copy())
        return own_rain(strat, rain_latent)

    dyn._rain = recording
    return seen


def oracle_ensembles(sim, slots, times, members: int, draws: int, ys: slice, xs: slice,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Step the fresh simulator ``sim`` through ``slots`` (naive UTC, up to the last of ``times``);
    returns ``(draws, case, member, y, x)`` oracle rain and ``(case, y, x)`` the simulator's own rain
    (mm/h, rows ``ys``, columns ``xs``) at ``times``. Raises if a case is not among the slots, or if
    the simulator's own efficiency does not give its own rain back."""
    dyn = sim.dynamics
    seen = record_rain_inputs(dyn)
    naive = pd.DatetimeIndex(times)
    naive = naive.tz_convert(None) if naive.tz is not None else naive
    wanted = {t: i for i, t in enumerate(naive)}
    shape = (ys.stop - ys.start, xs.stop - xs.start)
    out = np.zeros((draws, len(times), members, *shape), np.float32)
    own = np.zeros((len(times), *shape), np.float32)
    done = set()
    for t in slots:
        if t > naive.max():
            break
        _, rain, _ = sim.step(t)
        if t not in wanted:
            continue
        i = wanted[t]
        own[i] = rain[ys, xs]
        if not np.array_equal(rain_with(dyn, seen["strat"], seen["latent"], dyn.efficiency), rain):
            raise RuntimeError(f"{t}: the simulator's rain is not reproduced from its own efficiency")
        for d in range(draws):
            for m in range(members):
                out[d, i, m] = rain_with(dyn, seen["strat"], seen["latent"], efficiency_draw(dyn, rng))[ys, xs]
        done.add(t)
    if done != set(naive):
        raise RuntimeError(f"cases {sorted(set(naive) - done)} are not among the simulated slots")
    return out, own
