"""The simulator's rain redrawn where the IR cannot see: an oracle ensemble (mm/h).

The convective rain rate carries a random precipitation efficiency (a latent field, log-sd
``FieldParams.efficiency_ln``, ~150 km scales, :mod:`.fields`) that no brightness temperature
depends on. Keeping every other latent of a slot as it was and redrawing only the efficiency from
its stationary distribution gives draws of the rain given everything the satellite sees, and more
(the updrafts, the stratiform field and the wetness are known exactly): an ensemble exchangeable
with the truth, which no model fed with IR can beat. ``scripts/maxima_oracle.py`` scores it like a
model (docs/studies/history.md, "a perfect ensemble fails the maximum check too").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qpe_core.errors import QpeError
from qpe_core.simulator.fields import EFFICIENCY, LATENTS
from qpe_core.simulator.spectral import (fast_normal, lognormal_excess, lognormal_ranked, power_law_amplitude,
                                         wavenumbers)
from qpe_core.timeutil import slot_range
from qpe_core.verification.ensemble import CRPSAccumulator
from qpe_core.verification.spatial import FSSAccumulator


def efficiency_amplitude(dyn) -> np.ndarray:
    """The efficiency latent's spectral amplitude on ``dyn``'s grid (the same for every draw)."""
    h, w = dyn.shape
    spec = LATENTS[EFFICIENCY]
    _, _, k, weight = wavenumbers(dyn.shape, dyn.pixel_km)
    amp = power_law_amplitude(k, weight, dyn.shape, spec.beta, spec.outer_km, spec.smooth_km)
    return amp * np.where(weight == 1.0, math.sqrt(2.0), 1.0) * math.sqrt(h * w / 2.0)


def efficiency_draw(amplitude: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One efficiency field (std units) from its stationary distribution: the latent's spectrum
    (:func:`efficiency_amplitude`) times fresh complex noise, as ``Dynamics.__init__`` starts it."""
    h, w = shape
    noise = fast_normal(rng, (1, h, w // 2 + 1, 2)).view(np.complex64)[0, ..., 0]
    return np.fft.irfft2(amplitude * noise, s=shape).astype(np.float32)


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


def oracle_draws(sim, slots, times, members: int, draws: int, ys: slice, xs: slice, rng: np.random.Generator):
    """Step the fresh simulator ``sim`` through ``slots`` (naive UTC, up to the last of ``times``);
    yield, for each case of ``times`` in order of the slots, ``(case index, the simulator's own rain
    (y, x), oracle rain (draws, member, y, x))`` in mm/h on rows ``ys`` and columns ``xs``. Raises
    :class:`QpeError` if a case is not among the slots, or if the simulator's own efficiency does not
    give its own rain back."""
    dyn = sim.dynamics
    seen, amplitude = record_rain_inputs(dyn), efficiency_amplitude(dyn)
    naive = pd.DatetimeIndex(times)
    naive = naive.tz_convert(None) if naive.tz is not None else naive
    wanted = {t: i for i, t in enumerate(naive)}
    done = set()
    for t in slots:
        if t > naive.max():
            break
        _, rain, _ = sim.step(t)
        if t not in wanted:
            continue
        if not np.array_equal(rain_with(dyn, seen["strat"], seen["latent"], dyn.efficiency), rain):
            raise QpeError(f"{t}: the simulator's rain is not reproduced from its own efficiency")
        def member():
            return rain_with(dyn, seen["strat"], seen["latent"], efficiency_draw(amplitude, dyn.shape, rng))[ys, xs]

        ens = np.stack([np.stack([member() for _ in range(members)]) for _ in range(draws)])
        done.add(t)
        yield wanted[t], rain[ys, xs], ens
    if done != set(naive):
        raise QpeError(f"cases {sorted(set(naive) - done)} are not among the simulated slots")


def oracle_ensembles(sim, slots, times, members: int, draws: int, ys: slice, xs: slice,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`oracle_draws` stacked: ``(draws, case, member, y, x)`` oracle rain and ``(case, y, x)``
    the simulator's own rain (mm/h)."""
    shape = (ys.stop - ys.start, xs.stop - xs.start)
    out = np.zeros((draws, len(times), members, *shape), np.float32)
    own = np.zeros((len(times), *shape), np.float32)
    for i, rain, ens in oracle_draws(sim, slots, times, members, draws, ys, xs, rng):
        own[i], out[:, i] = rain, ens
    return out, own


def oracle_maxima(area: str, segments, times, truth: np.ndarray, members: int, draws: int, window,
                  seed: int = 0, on_case=None) -> dict:
    """The maximum check of a perfect ensemble on a study's held-out cases: for each evaluation
    segment (``.start``, ``.periods``, ``.seed``) the simulator run as :func:`qpe_core.simulator.simulate`
    runs it for the archive, ``draws`` oracle ensembles of ``members``. ``truth (case, y, x)`` mm/h
    (NaN = no radar) must be that simulator's rain, else :class:`QpeError`. Returns per draw and case
    the largest member value over the truth's valid pixels (``case_max``, mm/h), the truth's maximum
    and each case's ratio (``max_ratio``, draw-major lists), each draw's fair CRPS (mm/h) and each
    draw's FSS at 1 mm/h on the grid scale nearest 24 km of member 0 and mean over its members
    (``fss_member0``, ``fss_member_mean``: what the mission's member check asks of a model).
    ``on_case(case index, oracle rain (draws, member, y, x))``, when given, sees every case's draws
    (e.g. to score every check on them, :func:`qpe_core.study_score.oracle_stage`)."""
    from qpe_core.evaluation import pixel_km_of, scale_px, window_slices
    from qpe_core.grids import get_spec, lonlats
    from qpe_core.simulator import Simulator

    spec, (lon, lat) = get_spec(area), lonlats(area)
    ys, xs = window_slices(window, (spec.height, spec.width))
    times = pd.DatetimeIndex(times)
    case_max = np.full((draws, len(times)), np.nan)
    crps = [CRPSAccumulator([1]) for _ in range(draws)]
    names = [f"m{j}" for j in range(members)]
    scale_24 = scale_px(24.0, pixel_km_of(area))
    fss = [FSSAccumulator(names, ["thr"], [scale_24]) for _ in range(draws)]
    for seg in segments:
        t0 = pd.Timestamp(seg.start)
        k = np.flatnonzero((times >= t0) & (times < t0 + pd.Timedelta(minutes=15 * seg.periods)))
        if not len(k):
            continue
        sim = Simulator((spec.height, spec.width), 0.5 * sum(spec.resolution_m) / 1000.0, seg.seed,
                        lon=lon, lat=lat, workers=1)
        rng = np.random.default_rng([seed, seg.seed])
        for i, rain, ens in oracle_draws(sim, slot_range(seg.start, seg.periods, 15), times[k], members, draws,
                                         ys, xs, rng):
            valid = np.isfinite(truth[k[i]])
            if not np.array_equal(rain[valid], truth[k[i]][valid]):
                raise QpeError(f"case {times[k[i]]}: the archive's truth is not the simulator's rain of segment "
                               f"{seg.start} (seed {seg.seed})")
            case_max[:, k[i]] = ens[:, :, valid].max(axis=(1, 2))
            o = np.where(valid, truth[k[i]], np.nan).astype("float64")
            if on_case is not None:
                on_case(int(k[i]), ens)
            for d in range(draws):
                crps[d].update(ens[d].astype("float64"), o)
                fss[d].update({n: ens[d, j].astype("float64") for j, n in enumerate(names)}, o, {"thr": 1.0})
    truth_max = np.array([np.nanmax(t) if np.isfinite(t).any() else np.nan for t in truth])
    return {"draws": draws, "members": members, "case_max": case_max.tolist(), "truth_max": truth_max.tolist(),
            "max_ratio": (case_max / truth_max).tolist(), "crps_fair": [c.compute()["fair_1x1"] for c in crps],
            "fss_member0": [float(f.fss(names[0])[0, 0]) for f in fss],
            "fss_member_mean": [float(np.mean([f.fss(n)[0, 0] for n in names])) for f in fss], "fss_scale_px": scale_24}
