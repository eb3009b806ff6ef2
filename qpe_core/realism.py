"""How the embedded simulator compares with the real samples of ``shared/data``: rain (mm/h)
and IR brightness-temperature (K) statistics on the ``france-3km`` grid.

Every statistic is over valid (finite) pixels only: the real samples cover part of the grid.

Rain (:func:`rain_statistics`): wet fraction (R >= 0.1 mm/h), wet-rate quantiles and a log-binned
density (per mm/h), the radially averaged power spectrum ((mm/h)^2, :class:`RadialSpectrum`) and
its slope against wavenumber for wavelengths 18-190 km, the 15-minute persistence (phi coefficient
of the R > 1 mm/h masks of two frames 15 min apart, contingency pooled over pairs) and the
advection speed (km/h): the shift maximising the masked normalised cross-correlation (Pearson over
pixels valid in both) of log1p(R) between frames 15 min apart, searched within :data:`MAX_SPEED_KM_H`,
parabolic sub-pixel peak; the headline is the median over pairs (a static component such as residual
clutter makes the pair-summed surface, ``pooled_*``, peak at zero).  Pairs of frames not 15 min
apart are skipped for persistence and advection.

Rain spectra use the whole grid with NaN set to 0 (as :class:`RadialSpectrum` does: no rain
outside coverage); IR_108 spectra use the largest square window valid in the first frame (NaN
inside set to 0), so that the 250 K step at a sample's coverage edge does not enter the spectrum;
``window_px`` says the size.  IR (:func:`ir_statistics`): per channel density on
fixed bins 180-320 K, mean, std, q01/q50/q99; IR_108 - IR_120 and WV_062 - IR_108 differences;
IR_108 spectrum slope (K^2); std of the 15-minute IR_108 change.  Quantiles of BT come from
0.05 K histograms (exact to 0.05 K).  Times are naive UTC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.motion import masked_xcorr as _xcorr
from qpe_core.motion import xcorr_peak as _peak
from qpe_core.verification.realism import WET_MM_H, RadialSpectrum, spectral_slope
from qpe_core.verification.suite import json_safe

AREA = "france-3km"
PERSIST_MM_H = 1.0                 # threshold of the persistence masks (mm/h)
MAX_SPEED_KM_H = 150.0             # largest advection speed searched (km/h)
SLOPE_KM = (18.0, 190.0)           # wavelength range of the spectral slopes (km)
RATE_EDGES = WET_MM_H * 10.0 ** (np.arange(41) / 10)           # 0.1-1000 mm/h, 10 bins per decade
BT_EDGES = np.arange(180.0, 321.0, 2.0)                          # K
DIFF_EDGES = {"IR_108-IR_120": np.arange(-6.0, 16.01, 0.5), "WV_062-IR_108": np.arange(-100.0, 20.1, 2.0)}
_FINE = 0.05                       # K, bin width of the quantile histograms
_FINE_RANGE = {"bt": (100.0, 400.0), "diff": (-200.0, 100.0)}
SIM_START = "2024-08-24T00:00"     # default first simulated slot (UTC)


def largest_valid_square(valid: np.ndarray) -> tuple[slice, slice] | None:
    """(rows, cols) slices of the largest all-True square of ``valid`` (first found), or None."""
    s = np.pad(np.cumsum(np.cumsum(valid.astype(np.int64), 0), 1), ((1, 0), (1, 0)))
    best, lo, hi = None, 1, min(valid.shape)
    while lo <= hi:
        n = (lo + hi) // 2
        full = (s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n]) == n * n
        if full.any():
            i, j = np.unravel_index(np.argmax(full), full.shape)
            best, lo = (slice(i, i + n), slice(j, j + n)), n + 1
        else:
            hi = n - 1
    return best


class _Spectrum:
    """Mean radially averaged PSD over frames: on the whole grid, or (``crop``) on the largest
    square valid in the first frame; NaN -> 0 either way."""

    def __init__(self, pixel_km: float, crop: bool, min_px: int = 16):
        self.pixel_km, self.crop, self.min_px, self.frames = float(pixel_km), crop, int(min_px), 0
        self.window = self.rs = self.sum = None

    def add(self, field: np.ndarray) -> None:
        if self.window is None:
            self.window = (largest_valid_square(np.isfinite(field)) if self.crop else np.s_[:, :]) or np.s_[0:0, 0:0]
            if min(shape := field[self.window].shape) >= self.min_px:
                self.rs, self.sum = RadialSpectrum(shape, [], self.pixel_km), 0.0
        if self.rs is None:
            return
        sub = field[self.window]
        self.sum = self.sum + self.rs.rapsd(np.where(np.isfinite(sub), sub, 0.0))
        self.frames += 1

    def result(self) -> dict:
        wl, psd = (self.rs.wavelengths_km(), self.sum[1:] / self.frames) if self.frames else (np.zeros(0),) * 2
        return {"window_px": self.rs.length if self.frames else 0, "frames": self.frames, "wavelength_km": wl.tolist(),
                "psd": psd.tolist(), "slope_range_km": list(SLOPE_KM),
                "slope": spectral_slope(wl, psd, *SLOPE_KM)}


def _pairs(frames: Iterable, slot_minutes: int):
    """Yield (previous, current, is_step) for successive frames; is_step: exactly slot_minutes apart."""
    prev = None
    for t, x in frames:
        cur = (pd.Timestamp(t), x)
        yield prev, cur, prev is not None and cur[0] - prev[0] == pd.Timedelta(minutes=slot_minutes)
        prev = cur


def _phi(n11: float, n10: float, n01: float, n00: float) -> float:
    den = np.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    return float((n11 * n00 - n10 * n01) / den) if den > 0 else float("nan")


def rain_statistics(frames: Iterable, pixel_km: float, slot_minutes: int = 15,
                    max_speed_km_h: float = MAX_SPEED_KM_H) -> dict:
    """Statistics of ``frames``: (time UTC, rain (y, x) mm/h, NaN = no data), successive in time
    on one grid of ``pixel_km`` km pixels (see the module docstring).  Speeds in km/h; ``u``
    eastward, ``v`` northward (rows run north to south); shifts are (dy, dx) in pixels."""
    step_h = slot_minutes / 60.0
    m = max(1, int(np.ceil(max_speed_km_h * step_h / pixel_km)))
    spec, wet, n_valid = _Spectrum(pixel_km, crop=False), [], 0
    table = np.zeros(4)            # n11, n10, n01, n00 of the persistence masks
    corr, shifts, skipped, npairs, times = 0.0, [], 0, 0, []
    for prev, (t, r), is_step in _pairs(frames, slot_minutes):
        r = np.asarray(r, dtype="float64")
        valid = np.isfinite(r)
        times.append(t)
        n_valid += int(valid.sum())
        wet.append(r[valid & (r >= WET_MM_H)].astype("float32"))
        spec.add(r)
        if not is_step:
            skipped += prev is not None
            continue
        r0 = np.asarray(prev[1], dtype="float64")
        both = valid & np.isfinite(r0)
        a, b = (r0 > PERSIST_MM_H)[both], (r > PERSIST_MM_H)[both]
        table += [np.sum(a & b), np.sum(a & ~b), np.sum(~a & b), np.sum(~a & ~b)]
        npairs += 1
        c = _xcorr(np.log1p(np.nan_to_num(r0)), np.log1p(np.nan_to_num(r)), np.isfinite(r0), valid, m)
        if np.isfinite(c).any():                              # else nothing to correlate (dry pair)
            shifts.append(_peak(c, m))
            corr = corr + np.nan_to_num(c, nan=-1.0)
    wet_all = np.concatenate(wet) if wet else np.zeros(0, "float32")
    density = np.histogram(np.clip(wet_all, RATE_EDGES[0], RATE_EDGES[-1] * 0.999), RATE_EDGES,
                           density=True)[0] if wet_all.size else np.zeros(len(RATE_EDGES) - 1)
    kmh, qs = pixel_km / step_h, np.quantile(wet_all, [0.5, 0.9, 0.99]) if wet_all.size else [np.nan] * 3
    adv = {"speed_km_h": None, "u_km_h": None, "v_km_h": None, "pooled_speed_km_h": None, "pooled_shift_px": None}
    if shifts:
        d = np.array(shifts)
        dy, dx = _peak(corr, m)
        adv = {"speed_km_h": float(np.median(np.hypot(d[:, 0], d[:, 1]))) * kmh,
               "u_km_h": float(np.median(d[:, 1])) * kmh, "v_km_h": -float(np.median(d[:, 0])) * kmh,
               "pooled_speed_km_h": float(np.hypot(dy, dx)) * kmh, "pooled_shift_px": [dy, dx]}
    return {"frames": len(times), "first": str(times[0]) if times else None, "last": str(times[-1]) if times else None,
            "valid_pixels": n_valid, "wet_threshold_mm_h": WET_MM_H,
            "wet_fraction": wet_all.size / n_valid if n_valid else float("nan"),
            "wet_median_mm_h": float(qs[0]), "wet_q90_mm_h": float(qs[1]), "wet_q99_mm_h": float(qs[2]),
            "wet_histogram": {"edges_mm_h": RATE_EDGES.tolist(), "density_per_mm_h": density.tolist()},
            "spectrum": spec.result(), "slope": spec.result()["slope"],
            "persistence": {"threshold_mm_h": PERSIST_MM_H, "lag_minutes": slot_minutes, "pairs": npairs,
                            "pairs_skipped": skipped, "phi": _phi(*table), "contingency": table.tolist()},
            "advection": {**adv, "max_speed_km_h": max_speed_km_h, "max_shift_px": m, "pairs": len(shifts),
                          "pair_shifts_px": [list(v) for v in shifts]}}


class _Hist:
    """Fine fixed-bin histogram with running mean/std: quantiles exact to the bin width."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.n_bins = lo, round((hi - lo) / _FINE)
        self.counts, self.n, self.s, self.s2 = np.zeros(self.n_bins, np.int64), 0, 0.0, 0.0

    def add(self, v: np.ndarray) -> None:
        v = v[np.isfinite(v)].astype("float64")
        idx = np.clip(((v - self.lo) / _FINE).astype(np.int64), 0, self.n_bins - 1)
        self.counts += np.bincount(idx, minlength=self.n_bins)
        self.n, self.s, self.s2 = self.n + v.size, self.s + v.sum(), self.s2 + (v * v).sum()

    def quantile(self, q: float) -> float:
        if not self.n:
            return float("nan")
        cum = np.cumsum(self.counts)
        j = int(np.searchsorted(cum, q * self.n))
        before = cum[j] - self.counts[j]
        return float(self.lo + _FINE * (j + (q * self.n - before) / max(self.counts[j], 1)))

    def density(self, edges: np.ndarray) -> list[float]:
        centres = self.lo + _FINE * (np.arange(self.n_bins) + 0.5)
        c = np.histogram(centres, edges, weights=self.counts)[0]
        return (c / max(c.sum(), 1) / np.diff(edges)).tolist()

    def result(self, edges: np.ndarray) -> dict:
        mean = self.s / self.n if self.n else float("nan")
        std = np.sqrt(max(self.s2 / self.n - mean**2, 0.0)) if self.n else float("nan")
        return {"pixels": self.n, "mean": mean, "std": float(std), "q01": self.quantile(0.01),
                "q50": self.quantile(0.5), "q99": self.quantile(0.99),
                "histogram": {"edges_k": edges.tolist(), "density_per_k": self.density(edges)}}


def ir_statistics(frames: Iterable, pixel_km: float, slot_minutes: int = 15) -> dict:
    """Statistics of ``frames``: (time UTC, {channel: bt (y, x) K, NaN = no data}), successive in time
    (see the module docstring).  Histogram densities are per K."""
    hists: dict[str, _Hist] = {}
    diffs = {k: _Hist(*_FINE_RANGE["diff"]) for k in DIFF_EDGES}
    spec, dsum, pairs, times = _Spectrum(pixel_km, crop=True), _Hist(*_FINE_RANGE["diff"]), 0, []
    for prev, (t, bts), is_step in _pairs(frames, slot_minutes):
        times.append(t)
        for ch, bt in bts.items():
            hists.setdefault(ch, _Hist(*_FINE_RANGE["bt"])).add(np.asarray(bt))
        for key in DIFF_EDGES:
            a, b = key.split("-")
            if a in bts and b in bts:
                diffs[key].add(np.asarray(bts[a], "float64") - np.asarray(bts[b], "float64"))
        if "IR_108" in bts:
            spec.add(np.asarray(bts["IR_108"], "float64"))
            if is_step and "IR_108" in prev[1]:
                dsum.add(np.asarray(bts["IR_108"], "float64") - np.asarray(prev[1]["IR_108"], "float64"))
                pairs += 1
    change = dsum.result(DIFF_EDGES["IR_108-IR_120"])
    return {"frames": len(times), "first": str(times[0]) if times else None, "last": str(times[-1]) if times else None,
            "channels": {ch: h.result(BT_EDGES) for ch, h in hists.items()},
            "differences": {k: h.result(DIFF_EDGES[k]) for k, h in diffs.items() if h.n},
            "spectrum_ir108": spec.result(), "slope_ir108": spec.result()["slope"],
            "change_15min_ir108": {"pairs": pairs, "std_k": change["std"] if pairs else None,
                                   "mean_k": change["mean"] if pairs else None}}


# --------------------------------------------------------------------------- loaders (frames on AREA)

def _rain_frames(slots) -> list:
    return [(pd.Timestamp(s.time.values), s.rain.values) for s in slots]


def load_opera(folder: Path, cache_dir=None) -> list:
    """OPERA ODYSSEY composites (ODIM HDF5, 15-min) as rain frames (mm/h) on :data:`AREA`."""
    from qpe_core.readers.odim import read_odim
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".hdf", ".h5"))
    return _rain_frames(read_odim(p, AREA, cache_dir=cache_dir) for p in files)


def load_meteonet(path: Path, cache_dir=None) -> list:
    """MeteoNet rainfall npz as rain frames (mm/h) on :data:`AREA`: the 15-minute steps only."""
    from qpe_core.readers.meteonet import read_meteonet
    slots = read_meteonet(path, AREA, cache_dir=cache_dir)
    return sorted(_rain_frames(s for s in slots if int(s.attrs.get("on_15min_grid", 0)) == 1), key=lambda f: f[0])


def load_satip(folder: Path, channels=DEFAULT_CHANNELS, cache_dir=None) -> list:
    """Satip Rapid Scan zarr.zip files as IR frames (K) on :data:`AREA`: slots whose nominal start
    (file label - 5 min, see :mod:`qpe_core.readers.satip`) is on the 15-minute grid."""
    from qpe_core.readers.satip import RSS_MINUTES, read_satip
    frames = []
    for p in sorted(Path(folder).glob("*.zarr.zip")):
        start = pd.Timestamp(p.name[:12]) - pd.Timedelta(minutes=RSS_MINUTES)   # label = scan end
        if start != start.floor("15min"):
            continue
        ds = read_satip(p, AREA, channels=channels, cache_dir=cache_dir)
        frames.append((pd.Timestamp(ds.time.values), {c: ds.bt.sel(channel=c).values for c in channels}))
    return frames


def load_hrit(folder: Path, channels=("IR_108", "IR_134"), cache_dir=None) -> list:
    """The HRIT slot (all files of ``folder``) as one IR frame (K) on :data:`AREA`."""
    from qpe_core.readers.seviri import read_seviri
    ds = read_seviri(sorted(p for p in Path(folder).iterdir() if p.is_file()), AREA, channels=list(channels),
                     cache_dir=cache_dir)
    return [(pd.Timestamp(ds.time.values), {c: ds.bt.sel(channel=c).values for c in channels})]


#: name -> (kind, path under shared/data, loader) of the real samples.
SOURCES = {"opera": ("rain", "radar/opera-odyssey-20180824", load_opera),
           "meteonet_nw": ("rain", "meteonet/radar/rainfall_NW_2016_08.3.npz", load_meteonet),
           "meteonet_se": ("rain", "meteonet/radar/rainfall_SE_2016_08.3.npz", load_meteonet),
           "satip": ("ir", "seviri/satip-rss-20231220", load_satip), "hrit": ("ir", "seviri/hrit-20100119", load_hrit)}


def simulated(periods: int = 96, seed: int = 5, start=SIM_START, area: str = AREA):
    """Yield (time, rain mm/h, {channel: bt K}) of ``periods`` simulated 15-minute slots."""
    from qpe_core.simulator import simulate
    for sev, radar in simulate(area, start, periods, seed):
        t = pd.Timestamp(sev.time.values)
        yield t, radar.rain.values, {str(c): sev.bt.values[i] for i, c in enumerate(sev.channel.values)}


def realism_report(shared_dir, out_dir, periods: int = 96, seed: int = 5, start=SIM_START) -> dict:
    """Compare ``periods`` simulated slots (``seed``, from ``start`` UTC) with the samples of
    ``shared_dir``; write ``out_dir/realism.json`` and PNG figures; return the (JSON-safe) dict.
    Absent samples are reported as ``{"skipped": reason}``."""
    from qpe_core.grids import get_spec

    shared, out = Path(shared_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    px = float(np.mean(get_spec(AREA).resolution_m)) / 1000.0      # km, as simulate() does
    sim = list(simulated(periods, seed, start))                     # ~4 MB per slot
    stats = {"rain": {"simulator": rain_statistics(((t, r) for t, r, _ in sim), px)},
             "ir": {"simulator": ir_statistics(((t, b) for t, _, b in sim), px)}}
    del sim
    for name, (kind, rel, load) in SOURCES.items():
        path = shared / rel
        if not path.exists():
            stats[kind][name] = {"skipped": f"not found: {path}"}
            continue
        frames = load(path, cache_dir=out / "lut-cache")
        stats[kind][name] = {**(rain_statistics if kind == "rain" else ir_statistics)(frames, px), "path": str(path)}
    report = json_safe({"area": AREA, "pixel_km": px, "simulator": {"periods": periods, "seed": seed,
                        "start": str(pd.Timestamp(start))}, **stats})
    report["figures"] = write_figures(report, out)
    (out / "realism.json").write_text(json.dumps(report, indent=1))
    return report


# --------------------------------------------------------------------------- figures (report/figures.py style)

def _plot(ax, sources: Mapping, get, title: str, xlabel: str, ylabel: str, log=(True, True)) -> None:
    """One line per source with data, ``get(stats) -> (x, y, label)`` or None; the simulator in black."""
    from qpe_core.report.figures import _arr, _colours, _note  # the evaluation report's helpers
    col, drawn = _colours([n for n in sources if n != "simulator"]), 0
    for name, st in sources.items():
        got = None if "skipped" in st else get(st)
        if got is None or not len(got[0]):
            continue
        y = _arr(got[1])
        ax.plot(_arr(got[0]), np.where(y > 0, y, np.nan) if log[1] else y, lw=2 if name == "simulator" else 1.3,
                color="black" if name == "simulator" else col[name], label=f"{name}{got[2]}")
        drawn += 1
    if not drawn:
        return _note(ax, f"{title}: no data")
    ax.set_xscale("log" if log[0] else "linear")
    ax.set_yscale("log" if log[1] else "linear")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _centres(edges, geometric=False) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    return np.sqrt(e[1:] * e[:-1]) if geometric else 0.5 * (e[1:] + e[:-1])


def write_figures(report: Mapping, out: Path) -> list[str]:
    """Write the PNG figures of a realism report into ``out``; returns their file names."""
    from qpe_core.report.figures import _new, _save
    rain, ir, names = report["rain"], report["ir"], []

    def save(fig, name):
        fig.tight_layout()
        _save(fig, out / name)
        names.append(name)
    fig = _new(6.5, 4.5)
    _plot(fig.subplots(), rain, lambda s: (_centres(s["wet_histogram"]["edges_mm_h"], True),
          s["wet_histogram"]["density_per_mm_h"], f" (wet {s['wet_fraction']:.2%})"),
          "wet rain-rate distribution (R >= 0.1 mm/h)", "rain rate (mm/h)", "density (per mm/h)")
    save(fig, "rain_distributions.png")
    fig = _new(6.5, 4.5)
    ax = fig.subplots()
    ax.axvspan(*SLOPE_KM, color="0.93")
    _plot(ax, rain, lambda s: (s["spectrum"]["wavelength_km"], s["spectrum"]["psd"],
          f" (slope {s['slope']:.2f})" if s["slope"] is not None else ""),
          f"rain power spectra (slope over {SLOPE_KM[0]:g}-{SLOPE_KM[1]:g} km)", "wavelength (km)", "PSD ((mm/h)^2)")
    ax.invert_xaxis()
    save(fig, "rain_spectra.png")
    channels = list(dict.fromkeys(c for s in ir.values() for c in s.get("channels", {})))
    fig = _new(3.2 * 4, 3.0 * max(1, -(-len(channels) // 4)))
    axes = np.atleast_1d(fig.subplots(max(1, -(-len(channels) // 4)), 4)).ravel()
    for ax, ch in zip(axes, channels):
        _plot(ax, ir, lambda s, ch=ch: None if ch not in s["channels"] else (
              _centres(BT_EDGES), s["channels"][ch]["histogram"]["density_per_k"], ""),
              ch, "brightness temperature (K)", "density (per K)", (False, False))
    for ax in axes[len(channels):]:
        ax.set_axis_off()
    save(fig, "ir_histograms.png")
    fig = _new(10, 4)
    for ax, key in zip(fig.subplots(1, 2), DIFF_EDGES):
        _plot(ax, ir, lambda s, key=key: None if key not in s["differences"] else (
              _centres(DIFF_EDGES[key]), s["differences"][key]["histogram"]["density_per_k"],
              f" (median {s['differences'][key]['q50']:.1f} K)"), key, "difference (K)", "density (per K)",
              (False, False))
    save(fig, "ir_differences.png")
    return names
