"""Rain and cloud field dynamics of the simulator.

Units: lengths and heights in km, times in minutes, winds in m/s, rain in mm/h,
optical depths dimensionless (visible, ~2x the thermal absorption optical depth).

Latent fields are unit-variance Gaussian random fields with power-law spectra,
``PSD(k) ~ (k**2 + k0**2) ** (-beta/2)``, evolving as AR(1) processes in Fourier
space with scale-dependent lifetimes ``tau(L) = tau_ref * (L / l_ref) ** alpha``
(STEPS, Seed 2003), moved by backward semi-Lagrangian advection with a smooth,
slowly varying two-level wind (large-scale fields: exact Fourier shift).  Rain:

* stratiform: the "strat" field above the threshold that gives a slowly varying
  synoptic wet fraction (median 7 %, 2-22 %), intensities lognormal by rank
  (median ~0.3 mm/h, mostly drizzle as in real radar; higher on wetter days);
* convective: the "conv" field, clustered by a slow instability envelope and the
  diurnal/seasonal forcing, mapped to a lognormal (median ~2.5 mm/h, times a
  precipitation efficiency invisible to IR).  Rain follows the updraft
  ``rain_lead_min`` (20 min) late, while cloud tops and anvil ice follow it at once,
  so tops cool before the rain peaks;
* anvils: ice optical depth detrained by mature updrafts, spread, advected by the
  upper-level wind and decaying into thin cirrus (cloud layers: :mod:`.radiance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import special

from qpe_core.simulator.spectral import (Advector, ar_coefficient, fast_normal, gaussian_transfer, lognormal_excess,
                                        lognormal_ranked, ou_step, power_law_amplitude, spectral_variance,
                                        wavenumbers)


@dataclass(frozen=True)
class LatentSpec:
    """One latent field: PSD slope ``beta``, outer scale (km), lifetime at ``l_ref_km`` (min)."""

    name: str
    beta: float
    outer_km: float
    tau_ref_min: float
    alpha: float = 0.8
    l_ref_km: float = 16.0
    smooth_km: float = 0.0      # Gaussian taper of the spectrum (removes scales below ~3x this)


#: strat, conv, low: steering-level advection; cirrus: upper level; the rest: spectral shift.
LATENTS = (
    LatentSpec("strat", 3.6, 600.0, 45.0, 0.8),
    LatentSpec("conv", 2.8, 150.0, 50.0, 0.7),      # 3.3 before tuning (qpe realism)
    LatentSpec("low", 3.3, 300.0, 120.0, 0.5),
    LatentSpec("cirrus", 3.2, 300.0, 90.0, 0.6),
    LatentSpec("envelope", 4.0, 400.0, 600.0, 0.0),
    LatentSpec("efficiency", 3.0, 150.0, 180.0, 0.0),
    LatentSpec("psi", 5.0, 600.0, 360.0, 0.0, smooth_km=60.0),
)
STRAT, CONV, LOW, CIRRUS, ENVELOPE, EFFICIENCY, PSI = range(7)


@dataclass(frozen=True)
class FieldParams:
    """Tunable constants (latent thresholds are in standard deviations)."""

    steer_speed_ms: float = 9.0        # mean steering-level wind speed (m/s)
    steer_pert_ms: float = 3.0         # rms of the non-divergent wind perturbation (m/s)
    shear_ms: float = 12.0             # upper minus steering wind (m/s), mostly westerly
    wind_memory_min: float = 720.0     # memory of the mean wind direction/speed (min)
    strat_mix: float = 0.35            # weight of the envelope in the stratiform field
    strat_fraction: float = 0.07       # median stratiform wet fraction of the domain (0.10 before tuning)
    strat_cloud_margin: float = 0.7    # the deck extends this far below the rain threshold
    strat_median_mmh: float = 0.3     # 1.2 before tuning: real radar is mostly drizzle
    strat_sigma_ln: float = 1.1       # 0.95 before tuning
    strat_wetness_ln: float = 0.2      # wetter days rain harder: log-median shift per wetness sd
    conv_mix: float = 0.55             # weight of the envelope in the convective field
    conv_diurnal: float = 0.35         # weight of the diurnal/seasonal forcing
    conv_rain_thr: float = 2.2        # 1.9 before tuning: fewer, deeper raining towers
    conv_median_mmh: float = 2.5      # 6.0 before tuning
    conv_sigma_ln: float = 0.8        # 0.7 before tuning
    efficiency_ln: float = 0.35        # sd of log precipitation efficiency
    rain_lead_min: float = 20.0        # cloud tops lead rain by this (min)
    anvil_thr: float = 2.0
    anvil_production: float = 25.0     # optical depth per latent unit per 15 min
    anvil_life_min: float = 75.0
    anvil_spread_km: float = 4.0       # Gaussian spreading per 15 min (km)
    anvil_source_km: float = 8.0       # width of the detrainment source (km)
    wetness_sd: float = 0.45           # sd of log stratiform wet fraction (synoptic wetness)
    wetness_memory_min: float = 1440.0
    min_rain_mmh: float = 0.1          # radar detection threshold: below is 0
    max_rain_mmh: float = 250.0


@dataclass
class FieldState:
    """Ground-frame fields at one slot, (H, W) float32 unless noted (cloud layers are
    built from them by :func:`qpe_core.simulator.radiance.cloud_layers`)."""

    rain: np.ndarray            # mm/h, 0 where dry
    rain_conv: np.ndarray       # mm/h, convective part
    rain_strat: np.ndarray      # mm/h, stratiform part
    strat: np.ndarray           # stratiform latent (std units, with the envelope)
    deck_thr: float             # strat above this: nimbostratus deck
    updraft: np.ndarray         # convective latent now (std units, with envelope and forcing)
    low: np.ndarray             # low-cloud latent (std units)
    cirrus: np.ndarray          # cirrus latent (std units, upper level)
    anvil: np.ndarray           # anvil ice visible optical depth
    uth: np.ndarray             # upper-tropospheric relative humidity (0-1)
    rh_mid: np.ndarray          # mid-tropospheric relative humidity (0-1)


# ----------------------------------------------------------------------------- dynamics

class Dynamics:
    """Evolves the latent fields, winds and anvils one slot at a time (ground frame).

    ``shape`` (H, W) pixels of ``pixel_km`` km, rows north to south; ``rng`` a numpy
    Generator (all randomness comes from it, so a seed fixes the sequence)."""

    def __init__(self, shape, pixel_km: float, rng: np.random.Generator, slot_minutes: float = 15,
                 params: FieldParams | None = None, workers: int = 2):
        self.shape, self.pixel_km, self.rng, self.dt = tuple(shape), float(pixel_km), rng, float(slot_minutes)
        self.p = params or FieldParams()
        self.workers = workers
        kx, ky, k, weight = wavenumbers(self.shape, pixel_km)
        self.kx, self.ky = kx.astype(np.float32), ky.astype(np.float32)
        amp = np.stack([power_law_amplitude(k, weight, self.shape, s.beta, s.outer_km, s.smooth_km)
                        for s in LATENTS])
        phi = np.stack([ar_coefficient(k, s, self.dt) for s in LATENTS])
        colfix = np.where(weight == 1.0, math.sqrt(2.0), 1.0) * math.sqrt(self.shape[0] * self.shape[1] / 2.0)
        self.phi = phi.astype(np.float32)
        self.q = (np.sqrt(1.0 - phi ** 2) * amp * colfix).astype(np.float32)     # innovation amplitude
        self.spec = (amp * colfix * self._noise(len(LATENTS))).astype(np.complex64)  # stationary start
        self._init_operators(kx, ky, k, weight, amp)
        self._init_lags(weight, amp, phi)
        self._init_state()

    def _init_operators(self, kx, ky, k, weight, amp) -> None:
        """Spectral operators: humidity mixtures, wind from the streamfunction, anvil filters."""
        p, lp = self.p, gaussian_transfer(k, 30.0)
        self.uth_mix = self._mixer(lp, amp, weight, {CIRRUS: 0.8, STRAT: 0.5, ENVELOPE: 0.4})
        self.rh_mix = self._mixer(lp, amp, weight, {LOW: 0.6, STRAT: 0.6, ENVELOPE: 0.3})
        du, dv = 2j * math.pi * ky + 0 * kx, 2j * math.pi * kx + 0 * ky    # d/drow, d/dcol per km
        norm = [math.sqrt(spectral_variance(np.abs(d * amp[PSI]) ** 2, weight, self.shape)) for d in (du, dv)]
        self.d_row, self.d_col = (du / norm[0]).astype(np.complex64), (dv / norm[1]).astype(np.complex64)
        spread = gaussian_transfer(k, p.anvil_spread_km * math.sqrt(self.dt / 15.0))
        self.anvil_keep = (math.exp(-self.dt / p.anvil_life_min) * spread).astype(np.float32)
        self.anvil_src = gaussian_transfer(k, p.anvil_source_km).astype(np.float32)

    def _init_lags(self, weight, amp, phi) -> None:
        """Rain lags the updraft by ``rain_lead_min``: two history slots with linear weights,
        normalised to unit variance with the mean lag correlation of the updraft field."""
        p = self.p
        lag = max(p.rain_lead_min / self.dt, 1.0)
        self.lags = (int(math.floor(lag)), int(math.ceil(lag)))
        w2 = lag - self.lags[0] if self.lags[1] > self.lags[0] else 0.0
        self.lag_w = (1.0 - w2, w2)
        rho_c = float(np.sum(weight * amp[CONV] ** 2 * phi[CONV]) / np.sum(weight * amp[CONV] ** 2))
        rho = (1 - p.conv_mix ** 2) * rho_c ** (self.lags[1] - self.lags[0]) + p.conv_mix ** 2
        self.lag_norm = 1.0 / math.sqrt(self.lag_w[0] ** 2 + w2 ** 2 + 2 * self.lag_w[0] * w2 * rho)

    def _init_state(self) -> None:
        """Real-space state: ``lower`` = [strat, conv, low, updraft(t-1), ..., updraft(t-nlag)]
        (steering level), ``upper`` = [cirrus, anvil] (upper level), plus scalar OU states."""
        h, w = self.shape
        out = self._inverse([self.spec[i] for i in range(6)] + self._wind_spec())
        self.lower = np.zeros((3 + self.lags[1], h, w), np.float32)
        self.lower[:3] = out[:3]
        self.upper = np.stack([out[CIRRUS], np.zeros((h, w), np.float32)])
        self.envelope, self.efficiency, self.wind = out[ENVELOPE], out[EFFICIENCY], out[6:8]
        self.angle = self.rng.normal(0.0, 0.6)    # motion direction, rad from east (westerlies)
        self.speed_ln = self.rng.normal(0.0, 0.3)
        self.shear_angle = self.rng.normal(0.0, 0.3)
        self.wetness = float(self.rng.standard_normal())
        self.strat_thr = 1.28
        self.started = False
        self.adv_lower, self.adv_upper = Advector(self.shape), Advector(self.shape)

    def _noise(self, n: int) -> np.ndarray:
        h, w = self.shape
        return fast_normal(self.rng, (n, h, w // 2 + 1, 2)).view(np.complex64)[..., 0]

    def _mixer(self, lp, amp, weight, coefs: dict) -> dict:
        var = sum(c * c * spectral_variance((lp * amp[i]) ** 2, weight, self.shape) for i, c in coefs.items())
        return {i: (lp * c / math.sqrt(var)).astype(np.float32) for i, c in coefs.items()}

    def _wind_spec(self) -> list:
        return [self.d_row * self.spec[PSI], self.d_col * self.spec[PSI]]

    def _inverse(self, specs: list) -> np.ndarray:
        return sfft.irfft2(np.stack(specs), s=self.shape, axes=(-2, -1), workers=self.workers)

    def _displacements(self):
        """Steering and upper-level displacements over one slot, pixels (row, col)."""
        p, dt = self.p, self.dt
        self.angle = ou_step(self.angle, p.wind_memory_min, dt, 0.6, self.rng)
        self.speed_ln = ou_step(self.speed_ln, p.wind_memory_min, dt, 0.3, self.rng)
        self.shear_angle = ou_step(self.shear_angle, p.wind_memory_min, dt, 0.3, self.rng)
        self.wetness = ou_step(self.wetness, p.wetness_memory_min, dt, 1.0, self.rng)
        px = dt * 60.0 / (self.pixel_km * 1000.0)          # (m/s) -> pixels per slot
        speed = p.steer_speed_ms * math.exp(self.speed_ln)
        mean_row = -speed * math.sin(self.angle) * px      # rows grow southward
        mean_col = speed * math.cos(self.angle) * px
        pert = self.wind * (p.steer_pert_ms * px)
        steer = (mean_row + pert[0], mean_col + pert[1])
        sh_row = -p.shear_ms * math.sin(self.shear_angle) * px
        sh_col = p.shear_ms * math.cos(self.shear_angle) * px
        upper = (steer[0] + 0.5 * pert[0] + sh_row, steer[1] + 0.5 * pert[1] + sh_col)
        return steer, upper, (mean_row, mean_col)

    def _advance(self) -> np.ndarray:
        """Advection + AR(1) update of all latent fields and anvils; returns the inverse batch."""
        steer, upper, mean = self._displacements()
        self.adv_lower.prepare(*steer)
        self.adv_upper.prepare(*upper)
        self.lower = self.adv_lower(self.lower)
        self.upper = self.adv_upper(self.upper)
        fwd = sfft.rfft2(np.concatenate([self.lower[:3], self.upper]), axes=(-2, -1), workers=self.workers)
        noise = self._noise(len(LATENTS))
        spec, phi, q = self.spec, self.phi, self.q
        spec[:3] = phi[:3] * fwd[:3] + q[:3] * noise[:3]
        spec[CIRRUS] = phi[CIRRUS] * fwd[3] + q[CIRRUS] * noise[CIRRUS]
        phase = (-2j * math.pi * self.pixel_km) * (self.ky * mean[0] + self.kx * mean[1])
        shift = np.exp(phase).astype(np.complex64)
        spec[4:] = phi[4:] * shift * spec[4:] + q[4:] * noise[4:]
        anvil = self.anvil_keep * fwd[4]
        uth = sum(c * spec[i] for i, c in self.uth_mix.items())
        rh = sum(c * spec[i] for i, c in self.rh_mix.items())
        return self._inverse([spec[i] for i in range(6)] + self._wind_spec() + [anvil, uth, rh])

    def step(self, forcing: np.ndarray) -> FieldState:
        """Advance one slot; ``forcing`` (H, W) is the convective forcing (~[-1.7, 1.7],
        diurnal + seasonal, see :func:`radiance.convective_forcing`)."""
        p = self.p
        uth, rh = self._evolve()
        updraft = self._updraft(forcing)
        if not self.started:
            self.lower[3:] = updraft
            self.started = True
        self._detrain(updraft)
        (l1, l2), (w1, w2) = self.lags, self.lag_w
        rain_latent = (w1 * self.lower[2 + l1] + w2 * self.lower[2 + l2]) * self.lag_norm
        self.lower[4:] = self.lower[3:-1]          # push the updraft history
        self.lower[3] = updraft
        strat = self._strat()
        r_s, r_c = self._rain(strat, rain_latent)
        rain = np.minimum(r_s + r_c, p.max_rain_mmh)
        rain[rain < p.min_rain_mmh] = 0.0
        return FieldState(rain, r_c, r_s, strat, self.strat_thr - p.strat_cloud_margin, updraft,
                          self.lower[LOW].copy(), self.upper[0].copy(), self.upper[1].copy(),
                          special.expit(1.5 * uth - 0.2).astype(np.float32),
                          special.expit(1.5 * rh).astype(np.float32))

    def _updraft(self, forcing: np.ndarray) -> np.ndarray:
        """Convective latent now (std units): the conv field, the instability envelope and ``forcing``."""
        return (math.sqrt(1 - self.p.conv_mix ** 2) * self.lower[CONV] + self.p.conv_mix * self.envelope
                + self.p.conv_diurnal * forcing).astype(np.float32)

    def _strat(self) -> np.ndarray:
        """Stratiform latent now (std units, with the envelope)."""
        return math.sqrt(1 - self.p.strat_mix ** 2) * self.lower[STRAT] + self.p.strat_mix * self.envelope

    def _strat_threshold(self, strat: np.ndarray) -> float:
        """Set ``strat_thr`` (rain above it) so the wet fraction follows the wetness (2-22 %)."""
        p = self.p
        frac = min(max(p.strat_fraction * math.exp(p.wetness_sd * self.wetness), 0.02), 0.22)
        k = int(frac * strat.size)
        self.strat_thr = float(np.partition(strat.ravel(), strat.size - k - 1)[strat.size - k - 1])
        return self.strat_thr

    def _evolve(self):
        """Move the latent state one slot (nothing on the first call); returns humidity latents."""
        if not self.started:
            mixes = (self.uth_mix, self.rh_mix)
            return self._inverse([sum(c * self.spec[i] for i, c in m.items()) for m in mixes])
        out = self._advance()
        self.lower[:3] = out[:3]
        self.upper[0], self.upper[1] = out[CIRRUS], out[8]
        self.envelope, self.efficiency, self.wind = out[ENVELOPE], out[EFFICIENCY], out[6:8]
        return out[9], out[10]

    def _detrain(self, updraft: np.ndarray) -> None:
        """Anvil ice detrained by mature updrafts now (before their rain), spread over the source width."""
        p = self.p
        source = np.maximum(updraft - p.anvil_thr, 0.0) * (p.anvil_production * self.dt / 15.0)
        source = sfft.irfft2(self.anvil_src * sfft.rfft2(source, workers=self.workers), s=self.shape,
                             workers=self.workers)
        self.upper[1] = np.maximum(self.upper[1] + source, 0.0)

    def _rain(self, strat: np.ndarray, rain_latent: np.ndarray):
        """Stratiform and convective rain rates (mm/h)."""
        p = self.p
        self._strat_threshold(strat)
        mu_s = math.log(p.strat_median_mmh) + p.strat_wetness_ln * self.wetness
        r_s = lognormal_ranked(strat, self.strat_thr, mu_s, p.strat_sigma_ln)
        mu_c = math.log(p.conv_median_mmh) + p.efficiency_ln * self.efficiency
        return r_s, lognormal_excess(rain_latent, p.conv_rain_thr, mu_c, p.conv_sigma_ln)
