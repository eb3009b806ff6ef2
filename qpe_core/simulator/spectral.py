"""Building blocks of the simulator's fields: spectra, advection, value transforms, noise.

Units: lengths in km, wavenumbers in cycles/km, times in minutes, rain in mm/h. Used by
:mod:`.fields` (the dynamics), :mod:`.radiance` and :mod:`.oracle`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

if TYPE_CHECKING:
    from qpe_core.simulator.fields import LatentSpec


# ----------------------------------------------------------------------------- spectra

def wavenumbers(shape: tuple[int, int], pixel_km: float):
    """``(kx, ky, k, weight)`` on the rfft2 layout, cycles/km; ``weight`` counts each
    half-plane entry in full-plane sums (1 for the kx=0 and Nyquist columns, else 2)."""
    h, w = shape
    ky = np.fft.fftfreq(h, d=pixel_km)[:, None]
    kx = np.fft.rfftfreq(w, d=pixel_km)[None, :]
    k = np.hypot(kx, ky)
    weight = np.full((1, kx.shape[1]), 2.0)
    weight[0, 0] = 1.0
    if w % 2 == 0:
        weight[0, -1] = 1.0
    return kx, ky, k, weight


def spectral_variance(power: np.ndarray, weight: np.ndarray, shape) -> float:
    """Variance of ``irfft2(a * xi)`` when ``|a|**2 = power`` and ``E|xi|**2 = H*W``."""
    return float(np.sum(power * weight) / (shape[0] * shape[1]))


def power_law_amplitude(k, weight, shape, beta: float, outer_km: float, smooth_km: float = 0.0) -> np.ndarray:
    """Amplitude filter of a zero-mean unit-variance field with PSD ``(k^2+k0^2)^(-beta/2)``
    (times a Gaussian taper of ``smooth_km`` km when > 0)."""
    amp = (k ** 2 + (1.0 / outer_km) ** 2) ** (-beta / 4.0) * gaussian_transfer(k, smooth_km)
    amp[0, 0] = 0.0
    return amp / math.sqrt(spectral_variance(amp ** 2, weight, shape))


def ar_coefficient(k, spec: LatentSpec, dt_min: float) -> np.ndarray:
    """Lag-one (one slot) autocorrelation per wavenumber: ``exp(-dt / tau(1/k))``."""
    scale = 1.0 / np.maximum(k, 1e-6)
    tau = spec.tau_ref_min * (np.minimum(scale, 4.0 * spec.outer_km) / spec.l_ref_km) ** spec.alpha
    return np.exp(-dt_min / np.clip(tau, 1.0, 4320.0))


def gaussian_transfer(k, sigma_km: float) -> np.ndarray:
    """Fourier transfer function of a Gaussian smoothing of standard deviation ``sigma_km``."""
    return np.exp(-2.0 * (math.pi * sigma_km * k) ** 2)


# ----------------------------------------------------------------------------- advection

class Advector:
    """Backward semi-Lagrangian bilinear interpolation on a periodic grid.

    ``prepare(drow, dcol)`` takes the displacement over one slot in pixels
    (arrays or scalars), ``__call__(stack)`` moves a ``(n, H, W)`` stack."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.rows = np.arange(shape[0], dtype=np.float32)[:, None]
        self.cols = np.arange(shape[1], dtype=np.float32)[None, :]
        self.idx: list[np.ndarray] = []
        self.wts: list[np.ndarray] = []

    def prepare(self, drow, dcol) -> None:
        h, w = self.shape
        r, c = np.broadcast_arrays(self.rows - drow, self.cols - dcol)
        r = r.ravel() + np.float32(8 * h)          # positive, so truncation is floor
        c = c.ravel() + np.float32(8 * w)          # (displacements < 8 domain sizes)
        i0, j0 = r.astype(np.int32), c.astype(np.int32)
        fr, fc = r - i0, c - j0
        i0, j0 = i0 % h, j0 % w
        i1, j1 = np.where(i0 == h - 1, 0, i0 + 1) * w, np.where(j0 == w - 1, 0, j0 + 1)
        i0 *= w
        self.idx = [i0 + j0, i0 + j1, i1 + j0, i1 + j1]
        gr, gc = 1.0 - fr, 1.0 - fc
        self.wts = [gr * gc, gr * fc, fr * gc, fr * fc]

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        flat = stack.reshape(stack.shape[0], -1)
        out = np.take(flat, self.idx[0], axis=1)
        out *= self.wts[0]
        for idx, wt in zip(self.idx[1:], self.wts[1:]):
            out += np.take(flat, idx, axis=1) * wt
        return out.reshape(stack.shape)


# ----------------------------------------------------------------------------- transforms

def lognormal_excess(z: np.ndarray, z0: float, mu, sigma: float) -> np.ndarray:
    """Rain rate (mm/h): 0 where ``z <= z0``; above, the exceedance quantile-mapped to a
    lognormal with log-mean ``mu`` (scalar or array like ``z``) and log-sd ``sigma``
    (exactly lognormal when ``z`` is standard normal).  Continuous: -> 0 at the edge."""
    out = np.zeros(z.shape, dtype=np.float32)
    wet = z > z0
    if not wet.any():
        return out
    p = special.ndtr(-z[wet].astype(np.float64)) / special.ndtr(-z0)
    mu_w = mu[wet] if isinstance(mu, np.ndarray) else mu
    out[wet] = np.exp(mu_w - sigma * special.ndtri(np.clip(p, 1e-15, 1.0)))
    return out


def lognormal_ranked(z: np.ndarray, z0: float, mu: float, sigma: float) -> np.ndarray:
    """Rain rate (mm/h): 0 where ``z <= z0``; above, exactly lognormal(mu, sigma) over the
    exceedance set by rank (monotone in ``z``, so the spatial structure is kept and the
    weakest rain lies at the edges), whatever the sample statistics of ``z``."""
    out = np.zeros(z.shape, dtype=np.float32)
    wet = z > z0
    n = int(np.count_nonzero(wet))
    if n == 0:
        return out
    ranks = np.empty(n, np.float64)
    ranks[np.argsort(z[wet], kind="stable")] = np.arange(n)
    out[wet] = np.exp(mu + sigma * special.ndtri((ranks + 0.5) / n))
    return out


def fast_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Approximately standard-normal float32 noise (Irwin-Hall: sum of 4 uniform random bytes,
    excess kurtosis -0.3), ~3x cheaper than ``standard_normal``.  Used for sensor noise and
    spectral innovations (whose real-space sums are Gaussian by the central limit theorem)."""
    n = int(np.prod(shape))
    b = np.frombuffer(rng.bytes(4 * n), np.uint8).reshape(4, n)
    out = b[0].astype(np.float32)
    for row in b[1:]:
        out += row
    return ((out - 510.0) * (1.0 / math.sqrt(4 * (256 ** 2 - 1) / 12.0))).reshape(shape)


def ou_step(x: float, memory_min: float, dt_min: float, sd: float, rng) -> float:
    """One step of a stationary Ornstein-Uhlenbeck scalar with the given sd."""
    rho = math.exp(-dt_min / memory_min)
    return rho * x + math.sqrt(1.0 - rho * rho) * sd * float(rng.standard_normal())
