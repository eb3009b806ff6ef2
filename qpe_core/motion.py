"""Domain-mean displacement of a field between two frames: the masked normalised cross-correlation
(Pearson over the pixels valid in both) searched over integer shifts, with a parabolic sub-pixel peak.
Shifts are ``(dy, dx)`` in pixels (rows run north to south).  Used by the realism study
(:mod:`qpe_core.realism`) and the radar-driven simulator (:mod:`qpe_core.simulator.rain_driven`)."""

from __future__ import annotations

import numpy as np


def masked_xcorr(a: np.ndarray, b: np.ndarray, va: np.ndarray, vb: np.ndarray, m: int) -> np.ndarray:
    """Masked normalised cross-correlation (Pearson over the pixels valid in a(x) and b(x + d)),
    shifts d = (dy, dx) in [-m, m]^2; NaN where undefined (fewer than 16 pixels or no variance)."""
    shape = (a.shape[0] + m, a.shape[1] + m)                 # zero padding: no wrap-around within m
    idx = np.arange(-m, m + 1)                               # negative shifts wrap to the end

    def xc(p, q):
        return np.fft.irfft2(np.conj(np.fft.rfft2(p, shape)) * np.fft.rfft2(q, shape), shape)[np.ix_(idx, idx)]
    a, b, ma, mb = np.where(va, a, 0.0), np.where(vb, b, 0.0), va.astype(float), vb.astype(float)
    n, sa, sb = np.round(xc(ma, mb)), xc(a, mb), xc(ma, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (xc(a * a, mb) - sa**2 / n) * (xc(ma, b * b) - sb**2 / n)
        c = (xc(a, b) - sa * sb / n) / np.sqrt(var)
    return np.where((n >= 16) & (var > 1e-12 * np.maximum(n, 1) ** 2), c, np.nan)


def xcorr_peak(c: np.ndarray, m: int) -> tuple[float, float]:
    """(dy, dx) of the maximum of ``c`` (shifts -m..m) refined by a parabola along each axis."""
    i, j = np.unravel_index(np.nanargmax(c), c.shape)

    def refine(lo, mid, hi):
        den = lo - 2 * mid + hi
        return 0.0 if not np.isfinite(den) or den >= 0 else 0.5 * (lo - hi) / den
    dy = refine(c[i - 1, j], c[i, j], c[i + 1, j]) if 0 < i < c.shape[0] - 1 else 0.0
    dx = refine(c[i, j - 1], c[i, j], c[i, j + 1]) if 0 < j < c.shape[1] - 1 else 0.0
    return i - m + dy, j - m + dx
