"""Realism of rain-rate fields (mm/h): radially averaged power spectra and rain-rate distributions,
accumulated slot by slot with fixed memory.

Power spectrum (:class:`RadialSpectrum`): ``|FFT2(R)|^2 / N`` in (mm/h)^2 (raw rain rates, no window,
as ``pysteps.utils.spectral.rapsd``), averaged over rings of integer radius ``round(|k| L)`` with
``|k|`` in cycles per pixel and ``L = max(ny, nx)``; for square fields this is exactly pysteps'
``rapsd(field, fft_method=numpy.fft)`` (rings 0 .. L/2 - 1), for non-square fields ``|k|`` is the
physical wavenumber (pysteps uses the index radius, which mixes wavenumbers).  Own code because the
ring index is computed once per grid and reused (one ``bincount`` per field instead of a Python
loop over rings) and the ring sums are accumulated over slots.  The wavelength of ring r is
``L * pixel_km / r`` km.  Bands are octaves of wavelength starting at the Nyquist wavelength
(2-4, 4-8, ... pixels); band power is the summed PSD of all coefficients in the band and the band
ratio is forecast / truth.  Missing radar: NaN truth pixels are set to 0 in truth and forecasts
(slots with more than ``max_missing`` NaN are skipped), as for the FSS.

Rain-rate distribution (:class:`RainRateHistogram`): fixed logarithmic bins from 0.1 to 1000 mm/h
with 100 bins per decade (bin width 2.3 %), plus a dry count (< 0.1 mm/h) and an overflow count
(>= 1000 mm/h); the exact maximum is kept.  Quantiles are over all valid pixels (dry ones
included), interpolated geometrically inside a bin, so they are exact to within one bin (2.3 %
relative); a quantile that falls among dry pixels is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

WET_MM_H = 0.1


class RadialSpectrum:
    """Radially averaged power spectra of named fields on one grid shape, summed over slots."""

    def __init__(self, shape: tuple[int, int], names: Sequence[str], pixel_km: float = 1.0,
                 max_missing: float = 0.5):
        self.shape = (int(shape[0]), int(shape[1]))
        self.names, self.pixel_km, self.max_missing = list(names), float(pixel_km), float(max_missing)
        ny, nx = self.shape
        self.length = max(ny, nx)
        self.n_rings = self.length // 2 + (self.length % 2)
        ky, kx = np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]
        ring = np.round(np.sqrt(kx**2 + ky**2) * self.length).astype(np.int64).ravel()
        self.ring = np.where(ring < self.n_rings, ring, self.n_rings)   # corners -> dropped bin
        self.ring_count = np.bincount(self.ring, minlength=self.n_rings + 1)[: self.n_rings]
        self.sums = {name: np.zeros(self.n_rings) for name in ["truth", *self.names]}
        self.slots = self.slots_skipped = 0

    def ring_power(self, field: np.ndarray) -> np.ndarray:
        """Summed PSD ((mm/h)^2) per ring of one finite (y, x) field."""
        psd = np.abs(np.fft.fft2(field)) ** 2 / field.size
        return np.bincount(self.ring, weights=psd.ravel(), minlength=self.n_rings + 1)[: self.n_rings]

    def rapsd(self, field: np.ndarray) -> np.ndarray:
        """Radially averaged PSD of one field (rings 0 .. n_rings - 1), as pysteps' ``rapsd``."""
        return self.ring_power(field) / self.ring_count

    def update(self, forecasts: Mapping[str, np.ndarray], truth: np.ndarray) -> bool:
        """Add one slot of (y, x) fields in mm/h (truth NaN = no radar); False if skipped."""
        if truth.shape != self.shape:
            raise ValueError(f"spectrum grid is {self.shape}, got a field of shape {truth.shape}")
        valid = np.isfinite(truth)
        if 1.0 - valid.mean() > self.max_missing:
            self.slots_skipped += 1
            return False
        self.sums["truth"] += self.ring_power(np.where(valid, truth, 0.0))
        for name in self.names:
            f = forecasts[name]
            self.sums[name] += self.ring_power(np.where(valid & np.isfinite(f), f, 0.0))
        self.slots += 1
        return True

    def wavelengths_km(self) -> np.ndarray:
        """Wavelength (km) of rings 1 .. n_rings - 1."""
        return self.length * self.pixel_km / np.arange(1, self.n_rings)

    def bands(self) -> list[tuple[int, int]]:
        """Octave wavelength bands in pixels: (2, 4), (4, 8), ... up to the grid length."""
        out, lo = [], 2
        while lo < self.length:
            out.append((lo, 2 * lo))
            lo *= 2
        return out

    def compute(self) -> dict:
        """Mean PSD per ring (ring 0, the mean, left out), octave band powers and ratios, slopes."""
        nan = float("nan")
        psd = {n: (s / (self.ring_count * self.slots) if self.slots else np.full(self.n_rings, nan))
               for n, s in self.sums.items()}
        r = np.arange(self.n_rings)
        lam_px = np.divide(self.length, r, out=np.full(self.n_rings, np.inf), where=r > 0)
        bands = self.bands()
        power = {n: [float(s[(lam_px >= lo) & (lam_px < hi)].sum() / max(self.slots, 1)) for lo, hi in bands]
                 for n, s in self.sums.items()}
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = {n: [float(a / b) for a, b in zip(power[n], power["truth"])] for n in self.names}
        wl = self.wavelengths_km()
        lo_km, hi_km = 4 * self.pixel_km, self.length * self.pixel_km / 2
        return {"slots": self.slots, "slots_skipped": self.slots_skipped, "units": "(mm/h)^2",
                "wavelength_km": [float(v) for v in wl],
                "psd": {n: [float(v) for v in p[1:]] for n, p in psd.items()},
                "bands_km": [[lo * self.pixel_km, hi * self.pixel_km] for lo, hi in bands],
                "band_power": power, "band_ratio": ratio,
                "slope_range_km": [lo_km, hi_km],
                "slope": {n: spectral_slope(wl, p[1:], lo_km, hi_km) for n, p in psd.items()}}


def spectral_slope(wavelength_km: np.ndarray, psd: np.ndarray, min_km: float, max_km: float) -> float:
    """Least-squares slope of log10(PSD) against log10(wavenumber) for wavelengths in [min_km, max_km]."""
    wavelength_km, psd = np.asarray(wavelength_km), np.asarray(psd)
    sel = (wavelength_km >= min_km) & (wavelength_km <= max_km) & (psd > 0) & np.isfinite(psd)
    if sel.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log10(1.0 / wavelength_km[sel]), np.log10(psd[sel]), 1)[0])


class RainRateHistogram:
    """Log-binned histogram of rain rates (mm/h) with dry and overflow counts and the exact maximum."""

    def __init__(self, r_min: float = WET_MM_H, r_max: float = 1000.0, bins_per_decade: int = 100):
        self.r_min, self.r_max, self.bpd = float(r_min), float(r_max), int(bins_per_decade)
        self.n_bins = round(np.log10(self.r_max / self.r_min) * self.bpd)
        self.edges = self.r_min * 10.0 ** (np.arange(self.n_bins + 1) / self.bpd)
        self.counts = np.zeros(self.n_bins + 1, dtype=np.int64)   # last: overflow (>= r_max)
        self.dry = self.n = 0
        self.maximum = -np.inf

    def update(self, values: np.ndarray) -> None:
        """Add valid (finite) rain rates in mm/h, any shape."""
        values = np.asarray(values, dtype="float64").ravel()
        if not values.size:
            return
        wet = values[values >= self.r_min]
        idx = np.floor(np.log10(wet / self.r_min) * self.bpd).astype(np.int64)
        self.counts += np.bincount(np.clip(idx, 0, self.n_bins), minlength=self.n_bins + 1)
        self.dry += values.size - wet.size
        self.n += values.size
        self.maximum = max(self.maximum, float(values.max()))

    def quantile(self, q: float) -> float:
        """Quantile (mm/h) of all valid pixels; 0 inside the dry part, within one bin (2.3 %) otherwise."""
        if not self.n:
            return float("nan")
        target = q * self.n
        if target <= self.dry:
            return 0.0
        cum = self.dry + np.cumsum(self.counts)
        j = int(np.searchsorted(cum, target))
        if j >= self.n_bins:
            return self.maximum
        before = cum[j] - self.counts[j]
        frac = (target - before) / self.counts[j]
        return float(min(self.edges[j] * (self.edges[j + 1] / self.edges[j]) ** frac, self.maximum))

    def statistics(self) -> dict:
        """Wet fraction (>= 0.1 mm/h), q99, q99.9 and maximum (mm/h) of all valid pixels."""
        nan = float("nan")
        return {"pixels": self.n, "wet_fraction": 1.0 - self.dry / self.n if self.n else nan,
                "q99": self.quantile(0.99), "q99.9": self.quantile(0.999),
                "max": self.maximum if self.n else nan}

    def distribution(self, bins_per_decade: int = 10) -> dict:
        """Coarser distribution (fraction of valid pixels per log bin), dry and overflow fractions."""
        step = max(self.bpd // bins_per_decade, 1)
        coarse = np.add.reduceat(self.counts[: self.n_bins], np.arange(0, self.n_bins, step))
        n = max(self.n, 1)
        return {"edges_mm_h": [float(v) for v in self.edges[::step]],
                "fraction": [float(c / n) for c in coarse],
                "dry_fraction": self.dry / n, "overflow_fraction": float(self.counts[-1] / n)}


def realism_statistics(histograms: Mapping[str, RainRateHistogram]) -> dict:
    """Statistics of each histogram and, for the non-truth ones, ratios to ``histograms["truth"]``."""
    truth = histograms["truth"].statistics()
    out = {"truth": truth}
    for name, hist in histograms.items():
        if name == "truth":
            continue
        stats = hist.statistics()
        with np.errstate(divide="ignore", invalid="ignore"):
            stats["ratio_to_truth"] = {k: float(np.divide(stats[k], truth[k]))
                                       for k in ("wet_fraction", "q99", "q99.9", "max")}
        out[name] = stats
    return out
