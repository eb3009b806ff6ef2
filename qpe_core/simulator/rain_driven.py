"""Radar-driven synthesis: the simulator's SEVIRI IR for a *given* rain field (``qpe simulate --rain-from``).

Units: rain rates in mm/h, latents in standard deviations (std units), brightness temperatures in
K, times UTC, leads in minutes.

The simulator (:mod:`.fields`) derives rain from latent fields.  Here the direction is inverted:
the convective (updraft) and stratiform latents are set from the radar rain so that the
simulator's own rain mapping would give that rain back, and everything else runs unchanged from
the seed: random low cloud, cirrus, humidity and winds, anvils detrained by the (radar-set)
updrafts and advected by the upper wind, cloud-top height and temperature from the updraft, the
diurnal and latitudinal surface, parallax, the two-layer radiative model and sensor noise
(:func:`.radiance.cloud_layers`, :class:`.radiance.RadianceModel`).

* Partition: the stratiform part of a rate R is ``min(R, 5 mm/h)``, the convective part
  ``R - 5 mm/h`` (5 mm/h ~ 36 dBZ, the usual convective/stratiform boundary, between the
  simulator's stratiform median 1.2 and convective median 6 mm/h).
* Convective latent of one frame: the exact inverse of the simulator's convective mapping
  (:func:`.spectral.lognormal_excess`, threshold ``conv_rain_thr``, with the simulator's own random
  per-pixel precipitation efficiency, invisible to IR); a radar pixel without convective rain
  counts as at the threshold.
* Lead: the simulator's rain follows its updraft by ``rain_lead_min`` = 20 min (at 15-minute
  slots 2/3 from the updraft 15 min earlier, 1/3 from 30 min earlier).  Mirrored: the "lead
  latent" at t is the same weighted mean of the convective latents at t+15 and t+30, and the
  updraft at t is the larger of the lead latent and the convective latent at t.  So a tower rises
  15-30 min before its rain (the simulator's lag) and stands while it rains (the simulator's
  updraft keeps 0.93 of its pattern over 15 min); once the rain stops, its anvil decays as in the
  simulator.  The later frames are first traced back along the domain-mean rain motion (the shift
  maximising the masked cross-correlation of log rain between t and t+15, :mod:`qpe_core.motion`,
  at most 150 km/h; the last estimate is kept where a pair is missing), so a tower stands where
  its cell is at t.  Missing frames (the end of the period, a gap) or NaN pixels drop out of the
  mean; the last slot uses its own rain only.
* Where none of these frames has convective rain, the updraft is the simulator's own capped just
  below the tower threshold: no convective tower (and no anvil source) without radar rain.
* Stratiform latent, from the rain at t only (the simulator's stratiform rain has no lag): the
  inverse of the lognormal of stratiform rates above the simulator's current rain threshold; rain
  below ``min_rain_mmh`` (0.1 mm/h) is dry.  Within ~10 km of rain a dry pixel is raised to a
  non-raining deck just below the threshold (the simulator's decks reach 0.7 sd below it).
  Elsewhere the simulator's own latent is kept, its decks squeezed into the lower half of that band
  (:data:`DRY_DECK`: tops below ~3.6 km, optical depth below 15): its own rain areas would
  otherwise become rain-free decks as high and thick as raining ones.
* NaN rain (no radar): holes of at most :data:`HOLE_PX` pixels (quality control) take the nearest
  radar value for the synthesis (the rain written stays NaN); larger areas are rain-free
  simulator cloud.
* Spin-up (:data:`SPINUP_SLOTS` slots before the first): the source's own earlier frames where it
  has them, else the first frame held still, so that anvils and histories are developed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, special

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.grids import get_spec, lonlats
from qpe_core.motion import masked_xcorr, xcorr_peak
from qpe_core.simulator import Simulator
from qpe_core.simulator.fields import LOW, Dynamics, FieldParams, FieldState
from qpe_core.simulator.radiance import cloud_layers, convective_forcing, thermal_state
from qpe_core.timeutil import to_utc

STRAT_MAX_MM_H = 5.0                  # stratiform part of a rate at most this (mm/h); the rest is convective
HOLE_PX = 2                           # NaN holes up to this distance (pixels) are filled for the synthesis
DRY_DECK = 0.5                        # the simulator's own rain-free decks: lower half of its deck band
DECK_SIGMA_KM = 15.0                  # smoothing of the wet area that raises decks next to rain (km)
MAX_SPEED_KM_H = 150.0                # largest rain motion searched (km/h)
SPINUP_SLOTS = 8                      # dynamics slots run before the first (2 h at 15 min: anvils develop)
_BELOW = 0.01                         # "just below a threshold", std units

Frame = np.ndarray | None             # rain (H, W) mm/h, NaN = no radar; None = no frame at that slot


def latent_from_rain(rain, z0: float, mu, sigma: float) -> np.ndarray:
    """Inverse of :func:`.spectral.lognormal_excess`: the latent (std units, > ``z0``) that the simulator
    maps to ``rain`` (mm/h, > 0) with threshold ``z0``, log-median ``mu`` (scalar or array like
    ``rain``) and log-sd ``sigma``; ``rain -> 0`` gives ``z0``."""
    r = np.asarray(rain, dtype=np.float64)
    p = special.ndtr((mu - np.log(r)) / sigma) * special.ndtr(-z0)
    return (-special.ndtri(np.clip(p, 1e-300, 1.0))).astype(np.float32)


def fill_holes(rain: np.ndarray, max_px: float = HOLE_PX) -> np.ndarray:
    """``rain`` (mm/h) with each NaN pixel within ``max_px`` pixels of a finite one set to the nearest
    finite value (holes left by radar quality control); farther NaN pixels stay NaN."""
    rain = np.asarray(rain, dtype=np.float32)
    nan = ~np.isfinite(rain)
    if not nan.any() or nan.all():
        return rain
    dist, (ii, jj) = ndimage.distance_transform_edt(nan, return_indices=True)
    out = rain[ii, jj]
    out[dist > max_px] = np.nan
    return out


def shifted(field: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``field`` sampled at (row + dy, column + dx), nearest pixel; NaN where that is off the grid."""
    iy, ix = int(round(dy)), int(round(dx))
    h, w = field.shape
    out = np.full(field.shape, np.nan, np.float32)
    if abs(iy) < h and abs(ix) < w:
        out[max(0, -iy):h - max(0, iy), max(0, -ix):w - max(0, ix)] = \
            field[max(0, iy):h + min(0, iy), max(0, ix):w + min(0, ix)]
    return out


def rain_motion(before: np.ndarray, after: np.ndarray, max_px: int) -> tuple[float, float] | None:
    """Domain-mean displacement (rows, columns; pixels) of the rain from ``before`` to ``after``
    (mm/h, NaN = no radar), within ``max_px``; None where there is nothing to correlate (dry)."""
    if not (np.nan_to_num(before) >= 0.1).any() or not (np.nan_to_num(after) >= 0.1).any():
        return None
    c = masked_xcorr(np.log1p(np.nan_to_num(before)), np.log1p(np.nan_to_num(after)),
                     np.isfinite(before), np.isfinite(after), max_px)
    return xcorr_peak(c, max_px) if np.isfinite(c).any() else None


def convective_latent(rain: np.ndarray, mu_c, fp: FieldParams) -> tuple[np.ndarray, np.ndarray]:
    """``(z, wet)`` of one frame: the convective latent (std units; ``conv_rain_thr`` where the radar
    sees no convective rain, NaN where it sees nothing) and where the frame has convective rain."""
    rc = rain - np.float32(STRAT_MAX_MM_H)
    wet = np.nan_to_num(rc, nan=0.0) > 0
    z = np.where(np.isfinite(rain), np.float32(fp.conv_rain_thr), np.float32(np.nan)).astype(np.float32)
    if wet.any():
        mu = mu_c[wet] if isinstance(mu_c, np.ndarray) else mu_c
        z[wet] = latent_from_rain(rc[wet], fp.conv_rain_thr, mu, fp.conv_sigma_ln)
    return z, wet


def driven_updraft(frames: Sequence[Frame], lead_weights: Sequence[float], u_sim: np.ndarray, mu_c,
                   fp: FieldParams, tower_thr: float) -> np.ndarray:
    """Updraft latent (std units) at t: the larger of the convective latent of ``frames[0]`` (rain at
    t) and the ``lead_weights`` mean of those of ``frames[1:]`` (rain at the simulator's lags after t,
    traced back to t); ``u_sim``, the simulator's own updraft capped below ``tower_thr``, where no
    frame has convective rain (see the module docstring)."""
    shape = u_sim.shape
    now = np.full(shape, np.nan, np.float32)
    num, den = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    conv = np.zeros(shape, bool)
    for k, rain in enumerate(frames):
        if rain is None:
            continue
        z, wet = convective_latent(rain, mu_c, fp)
        conv |= wet
        if k == 0:
            now = z
            continue
        known = np.isfinite(z)
        w = np.float32(lead_weights[k - 1])
        num += np.where(known, w * z, 0.0)
        den += np.where(known, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        lead = np.where(den > 0, num / den, np.nan)
    free = np.minimum(u_sim, np.float32(tower_thr - _BELOW))
    return np.where(conv, np.fmax(now, lead), free).astype(np.float32)


def driven_strat(rain: Frame, strat_sim: np.ndarray, thr: float, mu_s: float, fp: FieldParams,
                 pixel_km: float) -> np.ndarray:
    """Stratiform latent (std units) at t from the rain at t (see the module docstring); ``thr`` is
    the simulator's current rain threshold of the latent, ``strat_sim`` its own latent."""
    edge = thr - fp.strat_cloud_margin                     # decks above this (cloud_layers' deck_thr)
    band = DRY_DECK * fp.strat_cloud_margin
    own = np.where(strat_sim > edge, edge + band * np.tanh(np.maximum(strat_sim - edge, 0.0) / band), strat_sim)
    wet = np.zeros(strat_sim.shape, bool) if rain is None else np.nan_to_num(rain, nan=0.0) >= fp.min_rain_mmh
    if not wet.any():
        return own.astype(np.float32)
    near = ndimage.gaussian_filter(wet.astype(np.float32), DECK_SIGMA_KM / pixel_km, mode="nearest")
    # a full deck (up to just below the threshold) where at least ~1/4 of the surroundings rain
    floor = thr - _BELOW - 2.0 * fp.strat_cloud_margin * (1.0 - np.minimum(2.0 * near, 1.0))
    out = np.minimum(np.maximum(own, floor), np.float32(thr - _BELOW)).astype(np.float32)
    out[wet] = latent_from_rain(np.minimum(rain[wet], STRAT_MAX_MM_H), thr, mu_s, fp.strat_sigma_ln)
    return out


class DrivenDynamics(Dynamics):
    """The simulator's dynamics with the updraft and stratiform latents set from radar rain."""

    def lead_minutes(self) -> list[float]:
        """How long after the updraft the simulator's rain comes (min): its two lags (weights ``lag_w``)."""
        return [lag * self.dt for lag in self.lags]

    def step_rain(self, forcing: np.ndarray, frames: Sequence[Frame], tower_thr: float) -> FieldState:
        """Advance one slot like :meth:`Dynamics.step`, the latents set from ``frames`` (rain at t and
        at t + each of :meth:`lead_minutes`, mm/h, holes filled, traced back to t, or None); the random
        fields evolve exactly as in the simulator."""
        p = self.p
        uth, rh = self._evolve()
        u_sim, strat_sim = self._updraft(forcing), self._strat()
        thr = self._strat_threshold(strat_sim)
        mu_c = math.log(p.conv_median_mmh) + p.efficiency_ln * np.asarray(self.efficiency, np.float32)
        mu_s = math.log(p.strat_median_mmh) + p.strat_wetness_ln * self.wetness
        updraft = driven_updraft(frames, self.lag_w, u_sim, mu_c, p, tower_thr)
        strat = driven_strat(frames[0], strat_sim, thr, mu_s, p, self.pixel_km)
        if not self.started:
            self.lower[3:] = updraft
            self.started = True
        self._detrain(updraft)                   # anvils from the radar-set updrafts
        self.lower[4:] = self.lower[3:-1]        # keep the updraft history as the simulator does
        self.lower[3] = updraft
        now = np.zeros(self.shape, np.float32) if frames[0] is None else np.nan_to_num(frames[0], nan=0.0)
        r_c = np.maximum(now - np.float32(STRAT_MAX_MM_H), 0.0)
        return FieldState(now, r_c, now - r_c, strat, thr - p.strat_cloud_margin, updraft,
                          self.lower[LOW].copy(), self.upper[0].copy(), self.upper[1].copy(),
                          special.expit(1.5 * uth - 0.2).astype(np.float32),
                          special.expit(1.5 * rh).astype(np.float32))


class RainDrivenSimulator(Simulator):
    """:class:`~qpe_core.simulator.Simulator` whose convection and stratiform rain come from radar frames."""

    dynamics_class = DrivenDynamics

    def spin_up(self, time, frames: Sequence[Frame]) -> None:
        """Advance the dynamics one slot to ``time`` (UTC) without synthesising BTs."""
        self.dynamics.step_rain(convective_forcing(self.geo, to_utc(time)), frames, self.cloud_params.tower_thr)

    def step_rain(self, time, frames: Sequence[Frame]) -> tuple[np.ndarray, dict]:
        """Advance one slot to ``time`` (UTC) driven by ``frames`` (see :meth:`DrivenDynamics.step_rain`);
        returns ``bt`` (C, H, W) K float32 and the simulator's diagnostics plus
        ``cloud_type_ground`` and ``updraft`` (std units)."""
        time = to_utc(time)
        th = thermal_state(self.geo, time, self.surface)
        state = self.dynamics.step_rain(convective_forcing(self.geo, time), frames, self.cloud_params.tower_thr)
        clouds = cloud_layers(state, th.z_trop, self.dynamics.p, self.cloud_params)
        bt, diag = self.radiance(state, clouds, th, time)
        diag.update(cloud_type_ground=clouds.cloud_type, updraft=state.updraft, surface_k=th.t_skin)
        self.time = time
        return bt, diag


def simulate_from_rain(area: str, times: Sequence, frame_of: Callable[[pd.Timestamp], Frame], seed: int,
                       channels: Sequence[str] = DEFAULT_CHANNELS, slot_minutes: int = 15,
                       spinup_slots: int = SPINUP_SLOTS) -> Iterator[tuple[pd.Timestamp, np.ndarray, dict]]:
    """Yield ``(time, bt (C, H, W) K, diag)`` for consecutive slots ``times`` (UTC) on the named grid
    ``area``, driven by ``frame_of(t)``: the rain (H, W) mm/h at slot ``t`` (NaN = no radar), or None
    where there is none (it is asked for slots up to 30 min after the last and before the first).
    Deterministic for ``(seed, times, frames)``; one slot in memory at a time (plus its frames)."""
    times = [to_utc(t) for t in times]
    step = pd.Timedelta(minutes=slot_minutes)
    if not times or any(b - a != step for a, b in zip(times, times[1:])):
        raise ValueError(f"times must be consecutive {slot_minutes}-minute slots")
    spec = get_spec(area)
    lon, lat = lonlats(area)
    res_x, res_y = spec.resolution_m
    sim = RainDrivenSimulator((spec.height, spec.width), 0.5 * (res_x + res_y) / 1000.0, seed, lon=lon, lat=lat,
                              channels=channels, slot_minutes=slot_minutes, spinup_slots=0)
    leads = [pd.Timedelta(minutes=m) for m in sim.dynamics.lead_minutes()]
    max_px = max(1, int(math.ceil(MAX_SPEED_KM_H * slot_minutes / 60.0 / sim.pixel_km)))
    cache: dict[pd.Timestamp, Frame] = {}
    motion = [0.0, 0.0]                            # rain displacement per slot (rows, columns), pixels

    def frame(t: pd.Timestamp) -> Frame:
        if t not in cache:
            f = frame_of(t)
            cache[t] = None if f is None else fill_holes(f)
        return cache[t]

    held = next((f for f in map(frame, times) if f is not None), None)
    if held is None:
        raise ValueError(f"no rain frame between {times[0]} and {times[-1]}")
    cache.clear()

    def frames_at(t: pd.Timestamp) -> list[Frame]:
        now = frame(t) if t >= times[0] or frame(t) is not None else held
        nxt = frame(t + step)
        if now is not None and nxt is not None and (d := rain_motion(now, nxt, max_px)) is not None:
            motion[:] = d
        out = [now]
        for lead in leads:
            f = frame(t + lead)
            f = held if f is None and t + lead < times[0] else f
            k = lead / step                        # trace the later frame back to where its rain is at t
            out.append(None if f is None else shifted(f, k * motion[0], k * motion[1]))
        for old in [s for s in cache if s < t]:
            del cache[old]
        return out

    for i in range(spinup_slots, 0, -1):
        t = times[0] - i * step
        sim.spin_up(t, frames_at(t))
    for t in times:
        bt, diag = sim.step_rain(t, frames_at(t))
        yield t, bt, diag
