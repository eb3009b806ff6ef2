"""How sure is a mission check on a few held-out cases? Per-case sums, a block bootstrap, and the
members' agreement with one another (dFSS).

A study scores 16 to 48 cases of two to six days; one wet evening can move q99 by 0.1. Every figure
of :mod:`.mission` except the cost is a function of **sums over cases** (FSS sums, histogram
counts, spectrum ring powers, spread and error sums, CRPS sums, cases above the maximum limit).
:func:`case_sums` computes them once per case, as the verification suite does (same masks,
thresholds, histogram and rings); :func:`figures` rebuilds every figure for any weighting of the
cases (all ones: the report's figures; one day's cases: that day's; bootstrap counts: a resample).

:func:`bootstrap` draws circular blocks of ``block`` consecutive cases (Politis & Romano 1992; the
cases of one day are 3 h apart and not independent) and reports, per check, the 5-95 % interval
of its figure and the share of resamples in which it holds. It measures how much the verdict
depends on *which* cases of the same weather were drawn; it cannot show what other weather (another
season, another seed of the simulator) would give, so its intervals are a lower bound.

dFSS (Dey et al. 2014, QJRMS 140): the FSS of members against one another (all pairs, sums
pooled) beside eFSS, the FSS of members against the truth (all members, sums pooled). For an
ensemble whose members are as far from the truth as from one another at that scale, eFSS = dFSS;
eFSS < dFSS means the members agree with one another more than with the truth (too little
spread at that scale), and then more spread cannot raise eFSS. Rain in mm/h; FSS at 1 mm/h.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from qpe_core.report.mission import TARGETS
from qpe_core.report.summary import SPECTRUM_KM
from qpe_core.verification.ensemble import CRPSAccumulator, SpreadSkill
from qpe_core.verification.realism import RadialSpectrum, RainRateHistogram
from qpe_core.verification.spatial import FSSAccumulator

BLOCK_CASES = 2
RESAMPLES = 1000
THRESHOLD_MM_H = 1.0


def _fss_sums(forecast: np.ndarray, truth: np.ndarray, scale_px: int) -> np.ndarray:
    """``[sum_ff, sum_fo, sum_oo]`` of one (y, x) pair at 1 mm/h (zeros when the suite skips the slot)."""
    acc = FSSAccumulator(["f"], ["t"], [scale_px])
    acc.update({"f": forecast}, truth, {"t": THRESHOLD_MM_H})
    return np.array([acc.sum_ff["f"][0, 0], acc.sum_fo["f"][0, 0], acc.sum_oo[0, 0]])


def _fss(s: np.ndarray) -> float:
    ff, fo, oo = s[..., 0], s[..., 1], s[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (ff - 2.0 * fo + oo) / (ff + oo)


def _hist(values: np.ndarray) -> np.ndarray:
    h = RainRateHistogram()
    h.update(values)
    return np.concatenate([h.counts, [h.dry, h.n]]).astype("float64")


def case_sums(truth: np.ndarray, members: np.ndarray, unet: np.ndarray, scale_px: int,
              pixel_km: float) -> dict[str, np.ndarray]:
    """Per-case sums of every bootstrapped figure: ``truth (n, y, x)``, ``members (n, m, y, x)``,
    ``unet (n, y, x)`` in mm/h (NaN = no radar / no estimate). Each value is ``(n, k)``."""
    n, m = members.shape[:2]
    spec = RadialSpectrum(truth.shape[1:], ["f"], pixel_km)
    keys = ["mean", "unet", "pairs", "members", *[f"m{k}" for k in range(m)]]
    out: dict[str, list] = {k: [] for k in ["hist_truth", "hist_members", "max_truth", "max_members", "spec_truth", "spec_m0",
                                            "spread", "crps", "mae", "over", *[f"fss_{k}" for k in keys]]}
    for i in range(n):
        o, f, u = truth[i].astype("float64"), members[i].astype("float64"), unet[i].astype("float64")
        ok = np.isfinite(o) & np.isfinite(f).all(axis=0)
        o_ok = np.where(ok, o, np.nan)
        out["fss_mean"].append(_fss_sums(f.mean(axis=0), o_ok, scale_px))
        u_ok = np.isfinite(o) & np.isfinite(u)
        out["fss_unet"].append(_fss_sums(u, np.where(u_ok, o, np.nan), scale_px))
        each = [_fss_sums(f[k], o, scale_px) for k in range(m)]  # as mission.member_scores
        for k in range(m):
            out[f"fss_m{k}"].append(each[k])
        out["fss_members"].append(np.sum(each, axis=0))
        out["fss_pairs"].append(np.sum([_fss_sums(f[a], np.where(ok, f[b], np.nan), scale_px)
                                        for a, b in combinations(range(m), 2)], axis=0))
        out["hist_truth"].append(_hist(o[ok]))
        out["hist_members"].append(_hist(f[:, ok]))
        out["max_truth"].append([float(o[ok].max()) if ok.any() else 0.0])
        out["max_members"].append([float(np.nanmax(f[:, ok])) if ok.any() else 0.0])
        valid = np.isfinite(o)
        skip = 1.0 - ok.mean() > spec.max_missing  # as RadialSpectrum.update on the suite's masked truth
        out["spec_truth"].append(0.0 * spec.ring_count if skip else spec.ring_power(np.where(ok, o, 0.0)))
        out["spec_m0"].append(0.0 * spec.ring_count if skip else spec.ring_power(np.where(ok, f[0], 0.0)))
        ss = SpreadSkill()
        ss.update(f[:, ok], o[ok])
        out["spread"].append([ss.var_sum, ss.sq_err_sum, ss.n])
        crps = CRPSAccumulator([1])
        crps.update(np.where(ok, f, np.nan), o_ok)
        out["crps"].append([crps.fair_sum, crps.counts[1]])
        out["mae"].append([float(np.abs(u[u_ok] - o[u_ok]).sum()), int(u_ok.sum())])
        t_max = float(np.nanmax(o)) if valid.any() else float("nan")
        c_max = float(np.nanmax(f[:, valid])) if np.isfinite(f[:, valid]).any() else float("nan")
        out["over"].append([float(t_max > 0 and c_max / t_max > TARGETS["max_ratio"])])
    sums = {k: np.asarray(v, dtype="float64") for k, v in out.items()}
    sums["spec_band"] = _band_rings(spec, pixel_km)[None, :].repeat(n, axis=0)  # constant; kept for figures()
    sums["ring_count"] = spec.ring_count[None, :].astype("float64").repeat(n, axis=0)
    return sums


def _band_rings(spec: RadialSpectrum, pixel_km: float) -> np.ndarray:
    """1.0 for the rings whose wavelength lies in the spectrum check's band (as summary.spectrum_ratio)."""
    r = np.arange(spec.n_rings)
    wl = np.divide(spec.length * pixel_km, r, out=np.full(spec.n_rings, np.inf), where=r > 0)
    return ((wl >= SPECTRUM_KM[0]) & (wl <= SPECTRUM_KM[1])).astype("float64")


def _quantile(h: np.ndarray, q: float, maximum: float) -> float:
    """q-quantile (mm/h) of a stacked histogram row ``[counts..., dry, n]`` (as RainRateHistogram)."""
    r = RainRateHistogram()
    r.counts, r.dry, r.n, r.maximum = h[:-2], h[-2], h[-1], maximum
    return r.quantile(q)


def figures(sums: dict[str, np.ndarray], w: np.ndarray) -> dict[str, float]:
    """Every check's figure for case weights ``w (n,)`` (all ones: the report's own figures)."""
    w = np.asarray(w, dtype="float64")
    s = {k: w @ v for k, v in sums.items() if k not in ("spec_band", "ring_count", "max_truth", "max_members")}
    u24 = _fss(s["fss_unet"])
    m = sum(k.startswith("fss_m") and k[5:].isdigit() for k in s)
    member_fss = [_fss(s[f"fss_m{k}"]) for k in range(m)]
    used = w > 0
    max_m, max_t = (float(sums[k][used, 0].max()) if used.any() else float("nan") for k in ("max_members", "max_truth"))
    ht, hm = s["hist_truth"], s["hist_members"]
    band, rings = sums["spec_band"][0] > 0, sums["ring_count"][0]
    psd_f, psd_o = s["spec_m0"] / rings, s["spec_truth"] / rings
    var, err, npx = s["spread"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "fss_mean": _fss(s["fss_mean"]) - u24,
            "fss_member": min(member_fss[0], float(np.mean(member_fss))) - u24,
            "wet_ratio": (1 - hm[-2] / hm[-1]) / (1 - ht[-2] / ht[-1]),
            "q99_ratio": _quantile(hm, 0.99, max_m) / _quantile(ht, 0.99, max_t),
            "cases_over": float(s["over"][0]),
            "spectrum": float(psd_f[band].sum() / psd_o[band].sum()),
            "spread_skill": float(np.sqrt(var / npx) * np.sqrt(1 + 1 / m) / np.sqrt(err / npx)),
            "crps_vs_mae": float((s["crps"][0] / s["crps"][1]) / (s["mae"][0] / s["mae"][1])),
            "efss": _fss(s["fss_members"]), "dfss": _fss(s["fss_pairs"]), "fss_unet": u24}
    return {k: float(v) for k, v in out.items()}


def holds(fig: dict[str, float]) -> dict[str, bool]:
    """The verdict of each bootstrapped check for one set of figures (targets of :mod:`.mission`)."""
    T = TARGETS
    return {"fss_mean": bool(fig["fss_mean"] >= -T["fss_mean"]), "fss_member": bool(fig["fss_member"] >= -T["fss_member"]),
            "realism": bool(abs(fig["wet_ratio"] - 1) <= T["realism"] and abs(fig["q99_ratio"] - 1) <= T["realism"]),
            "maximum": fig["cases_over"] == 0, "spectrum": T["spectrum"][0] <= fig["spectrum"] <= T["spectrum"][1],
            "spread_skill": T["spread_skill"][0] <= fig["spread_skill"] <= T["spread_skill"][1],
            "crps": fig["crps_vs_mae"] <= T["crps_vs_mae"]}


def block_weights(n: int, block: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` case counts of a circular block bootstrap with blocks of ``block`` cases."""
    rng = np.random.default_rng(seed)
    block = max(1, min(int(block), n))
    n_blocks = -(-n // block)
    starts = rng.integers(0, n, size=(resamples, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(resamples, -1)[:, :n] % n
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype("float64")


def bootstrap(sums: dict[str, np.ndarray], times, block: int = BLOCK_CASES, resamples: int = RESAMPLES,
              seed: int = 0) -> dict:
    """Point figures, 5-95 % intervals and the share of resamples in which each check holds; the
    figures of each day's cases (UTC dates) alone. ``times``: the cases' valid times, in order."""
    n = len(times)
    point = figures(sums, np.ones(n))
    draws = [figures(sums, w) for w in block_weights(n, block, resamples, seed)]
    verdicts = [holds(d) for d in draws]
    interval = {k: [float(np.nanpercentile([d[k] for d in draws], 5)), float(np.nanpercentile([d[k] for d in draws], 95))]
                for k in point}
    held = {k: float(np.mean([v[k] for v in verdicts])) for k in verdicts[0]}
    days = pd.DatetimeIndex(times).strftime("%Y-%m-%d")
    by_day = {d: {"cases": int((days == d).sum()), **figures(sums, (days == d).astype("float64"))}
              for d in sorted(set(days))}
    return {"block_cases": block, "resamples": resamples, "seed": seed, "point": point, "point_holds": holds(point),
            "interval_5_95": interval, "held_share": held, "by_day": by_day}


ROWS = [("fss_mean", "FSS 24 km, ensemble mean - U-Net", "{:+.3f}", "fss_mean"),
        ("fss_member", "FSS 24 km, member (worse of member 0, mean over members) - U-Net", "{:+.3f}", "fss_member"),
        ("wet_ratio", "wet fraction / truth", "{:.2f}", "realism"),
        ("q99_ratio", "q99 / truth (the realism check needs both)", "{:.2f}", "realism"),
        ("cases_over", "cases whose largest member value is above 2 x the truth's maximum", "{:.0f}", "maximum"),
        ("spectrum", "spectrum member 0 / truth, 10-50 km", "{:.2f}", "spectrum"),
        ("spread_skill", "spread/skill", "{:.2f}", "spread_skill"),
        ("crps_vs_mae", "CRPS (fair) / U-Net MAE", "{:.2f}", "crps")]


def uncertainty_markdown(unc: dict, name: str) -> str:
    """The report section of :func:`bootstrap` for model ``name``."""
    p, iv, held = unc["point"], unc["interval_5_95"], unc["held_share"]
    n = sum(d["cases"] for d in unc["by_day"].values())
    lines = [f"### How sure: {name}'s checks on resampled cases", "",
             f"Circular block bootstrap of the {n} held-out cases in blocks of {unc['block_cases']} consecutive "
             f"cases ({unc['resamples']} resamples, seed {unc['seed']}): the same weather drawn again, so the "
             "intervals are a lower bound of the uncertainty (not another season or simulator seed).", "",
             "| figure | value | 5-95 % of resamples | check held in | oracle: median over draws | oracle: check held in |",
             "|---|---|---|---|---|---|"]
    oracle = unc.get("oracle") or {}
    for key, label, fmt, check in ROWS:
        lo, hi = iv[key]
        o = (f"{fmt.format(oracle['median'][key])} | {oracle['held'][check]} of {oracle['draws']} draws" if oracle
             else "- | -")
        lines.append(f"| {label} | {fmt.format(p[key])} | {fmt.format(lo)} to {fmt.format(hi)} | "
                     f"{100 * held[check]:.0f} % | {o} |")
    if oracle:
        lines += ["", "The oracle ensemble: the simulator's own rain with only its IR-invisible precipitation "
                  "efficiency redrawn (a perfect model of everything else), scored as the model against the same "
                  "U-Net."]
    e, d = p["efss"], p["dfss"]
    lines += ["", f"Members against the truth (eFSS, 24 km, 1 mm/h, all members pooled) {e:.3f} "
              f"({iv['efss'][0]:.3f}-{iv['efss'][1]:.3f}), against one another (dFSS, all pairs) {d:.3f} "
              f"({iv['dfss'][0]:.3f}-{iv['dfss'][1]:.3f}), U-Net {p['fss_unet']:.3f}: "
              + ("the members agree with one another more than with the truth (too little spread at 24 km; "
                 "more spread would not raise eFSS)." if e < d else
                 "the members are as far from the truth as from one another, or farther apart (spread at 24 km "
                 "at least as large as the error)."), "",
              "| day (UTC) | cases | FSS mean - U-Net | member - U-Net | wet / truth | q99 / truth | cases > 2x max "
              "| spectrum | spread/skill | CRPS / MAE | eFSS | dFSS |", "|---|" + "---|" * 11]
    rows = [(day, f["cases"], f) for day, f in unc["by_day"].items()]
    rows += [(f"{day}, oracle (median)", unc["by_day"][day]["cases"], f) for day, f in oracle.get("by_day", {}).items()]
    for day, n, f in rows:
        lines.append(f"| {day} | {n} | {f['fss_mean']:+.3f} | {f['fss_member']:+.3f} | {f['wet_ratio']:.2f} | "
                     f"{f['q99_ratio']:.2f} | {f['cases_over']:.1f} | {f['spectrum']:.2f} | {f['spread_skill']:.2f} | "
                     f"{f['crps_vs_mae']:.2f} | {f['efss']:.3f} | {f['dfss']:.3f} |")
    return "\n".join(lines) + "\n"
