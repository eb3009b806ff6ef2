"""The mission's checks of the product model against the U-Net and the radar truth (``qpe study``).

What the product exists for, as numbers: placed as well as a U-Net, as realistic as the truth,
calibrated, cheap. :func:`member_scores` computes what the verification suite does not keep (FSS of
every member, each case's largest value, CRPS from arrays); :func:`mission_checks` turns the study's
summaries into held / not held lines. Conventions: rain in mm/h, FSS at 1 mm/h on the grid scale
nearest 24 km, "all members pooled" for wet fraction and q99 (as :mod:`.summary`). The CRPS of the
checks is the fair estimator (:func:`qpe_core.verification.ensemble.crps_pixels`, WeatherBench 2's):
the CRPS of the model's distribution, not of its 8-member sample (the m^2 estimator adds
``E|X - X'| / 16``); the m^2 value is printed beside it and kept in the comparison table.

| check | target |
|---|---|
| FSS(1 mm/h, 24 km) of the ensemble mean | >= U-Net - 0.02 |
| FSS of member 0 and the mean FSS over members | >= U-Net - 0.05 |
| wet fraction and q99 over all members | each within 15 % of truth |
| largest member value of each case | <= 2 x the truth's maximum of that case |
| spectrum (member 0 / truth) at 10-50 km | 0.8-1.2 |
| spread/skill | 0.8-1.2 (rank histogram reported) |
| CRPS (fair estimator) | <= 0.85 x the U-Net's MAE |
| cost | <= 8 evaluations per member and CRPS within 3 % of its 64-step value |
"""

from __future__ import annotations

import math

import numpy as np

from qpe_core.verification.ensemble import CRPSAccumulator
from qpe_core.verification.spatial import FSSAccumulator

TARGETS = {"fss_mean": 0.02, "fss_member": 0.05, "realism": 0.15, "max_ratio": 2.0, "spectrum": (0.8, 1.2),
           "spread_skill": (0.8, 1.2), "crps_vs_mae": 0.85, "evals": 8, "crps_converged": 0.03}


def member_scores(truth: np.ndarray, members: np.ndarray, scale_px: int, threshold: float = 1.0) -> dict:
    """Per-member FSS at ``threshold`` (mm/h) and ``scale_px``, and each case's largest value.

    ``truth (n, y, x)`` and ``members (n, m, y, x)`` in mm/h (NaN = no radar / no estimate).
    Returns ``{"fss_members" [m], "fss_member0", "fss_member_mean", "case_max" [n], "truth_max" [n],
    "max_ratio" [n], "median_max_ratio" [n]}``; the maxima are over pixels where the truth is valid;
    ``median_max_ratio`` is the median over members of each member's maximum, over the truth's: near
    the largest member's ratio when the whole ensemble is too strong on that case, far below it when
    one member is an outlier.
    """
    n, m = members.shape[:2]
    names = [f"m{k}" for k in range(m)]
    acc = FSSAccumulator(names, ["thr"], [int(scale_px)])
    case_max, truth_max, median_max = [], [], []
    for i in range(n):
        o = truth[i].astype("float64")
        acc.update({names[k]: members[i, k].astype("float64") for k in range(m)}, o, {"thr": threshold})
        ok = np.isfinite(o)
        truth_max.append(float(np.nanmax(o[ok])) if ok.any() else float("nan"))
        f = members[i][:, ok]
        case_max.append(float(np.nanmax(f)) if np.isfinite(f).any() else float("nan"))
        per_member = [float(np.nanmax(x)) for x in f if np.isfinite(x).any()]
        median_max.append(float(np.median(per_member)) if per_member else float("nan"))
    fss = [float(acc.fss(k)[0, 0]) for k in names]
    ratio = [c / t if t > 0 else float("inf") for c, t in zip(case_max, truth_max)]
    median = [c / t if t > 0 else float("inf") for c, t in zip(median_max, truth_max)]
    return {"fss_members": fss, "fss_member0": fss[0], "fss_member_mean": float(np.nanmean(fss)),
            "case_max": case_max, "truth_max": truth_max, "max_ratio": ratio, "median_max_ratio": median}


def crps_of(truth: np.ndarray, members: np.ndarray) -> float:
    """Fair pixel CRPS (mm/h) of ``members (n, m, y, x)`` against ``truth (n, y, x)``, as the suite's ``CRPS_fair``."""
    acc = CRPSAccumulator([1])
    for i in range(truth.shape[0]):
        acc.update(members[i].astype("float64"), truth[i].astype("float64"))
    return float(acc.compute()["fair_1x1"])


def _oracle_text(oracle: dict | None, limit: float) -> str:
    """The maximum check of the oracle ensemble (the simulator's rain, only its IR-invisible
    efficiency redrawn), as a clause of the model's line."""
    if not oracle or not oracle.get("max_ratio"):
        return ""
    over = [sum(r > limit for r in draw) for draw in oracle["max_ratio"]]
    return (f" [an oracle ensemble, the simulator's own rain with only its IR-invisible efficiency redrawn: "
            f"every case held in {sum(n == 0 for n in over)} of {len(over)} draws, cases above {limit:g} per draw "
            f"mean {sum(over) / len(over):.2f}, range {min(over)}-{max(over)}]")


def _oracle_fss_text(oracle: dict | None, u24: float) -> str:
    """The member check of the oracle ensemble (FSS of its members at the same scale), as a clause."""
    if not oracle or not oracle.get("fss_member0"):
        return ""
    m0, mm = oracle["fss_member0"], oracle["fss_member_mean"]
    worst = [min(a, b) - u24 for a, b in zip(m0, mm)]
    return (f" [the oracle ensemble: member 0 {np.mean(m0):.3f} (range {min(m0):.3f}-{max(m0):.3f} over "
            f"{len(m0)} draws), mean over members {np.mean(mm):.3f}; held in {sum(w >= -TARGETS['fss_member'] for w in worst)}"
            f" of {len(m0)} draws]")


def _line(check: str, held: bool | None, text: str) -> dict:
    verdict = "not checked" if held is None else ("held" if held else "not held")
    return {"check": check, "held": held, "text": f"{text}: {verdict}"}


def _ok(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def mission_checks(model: dict, unet: dict | None, extra: dict, cost: dict | None,
                   oracle: dict | None = None) -> list[dict]:
    """The checks of the module docstring for one model.

    ``model`` / ``unet``: summaries (:func:`qpe_core.report.summarize`); ``extra``: :func:`member_scores`
    of the model; ``cost``: ``{"evals_per_member", "crps", "crps_ref", "ref_steps", "cases"}`` (CRPS at
    the default steps and at ``ref_steps`` on the same cases) or None; ``oracle``:
    :func:`qpe_core.simulator.oracle.oracle_maxima` on the same cases (a reference printed beside the
    maximum check; the verdict stays the target's) or None.
    """
    T, out = TARGETS, []
    u24 = unet["FSS_1_24km"] if unet else float("nan")
    a = model["FSS_1_24km"]
    out.append(_line("fss_mean", a >= u24 - T["fss_mean"] if _ok(a, u24) else None,
                     f"FSS 24 km of the ensemble mean {a:.3f} vs U-Net {u24:.3f} ({a - u24:+.3f}, >= -{T['fss_mean']})"))
    m0, mm = extra["fss_member0"], extra["fss_member_mean"]
    out.append(_line("fss_member", (min(m0, mm) >= u24 - T["fss_member"]) if _ok(m0, mm, u24) else None,
                     f"FSS 24 km of member 0 {m0:.3f} and mean over members {mm:.3f} vs U-Net {u24:.3f} "
                     f"({min(m0, mm) - u24:+.3f}, >= -{T['fss_member']})" + _oracle_fss_text(oracle, u24)))
    w, q = model["wet_fraction_ratio"], model["q99_ratio"]
    out.append(_line("realism", (abs(w - 1) <= T["realism"] and abs(q - 1) <= T["realism"]) if _ok(w, q) else None,
                     f"wet fraction {model['wet_fraction']:.3f} / truth {model['wet_fraction_truth']:.3f} = {w:.2f}, "
                     f"q99 {model['q99']:.2f} / {model['q99_truth']:.2f} mm/h = {q:.2f} (each 1 +- {T['realism']})"))
    ratios = [r for r in extra["max_ratio"] if r is not None and not math.isnan(r)]
    worst = max(ratios) if ratios else float("nan")
    bad = sum(r > T["max_ratio"] for r in ratios)
    med = [m for r, m in zip(extra["max_ratio"], extra.get("median_max_ratio") or []) if r > T["max_ratio"]]
    why = f" (median member there: {', '.join(f'{m:.2f}' for m in med)})" if med else ""
    out.append(_line("maximum", (bad == 0) if ratios else None,
                     f"largest member value / truth maximum per case: worst {worst:.2f}, {bad} of {len(ratios)} "
                     f"cases above {T['max_ratio']:g}{why}; largest value {max(extra['case_max']):.1f} mm/h"
                     + _oracle_text(oracle, T["max_ratio"])))
    s = model["spectrum_ratio_10_50km"]
    lo, hi = T["spectrum"]
    out.append(_line("spectrum", lo <= s <= hi if _ok(s) else None, f"spectrum member 0 / truth at 10-50 km {s:.2f} "
                     f"(per wavelength {model['spectrum_ratio_10_50km_min']:.2f}-"
                     f"{model['spectrum_ratio_10_50km_max']:.2f}; {lo}-{hi})"))
    r = model["spread_skill"]
    lo, hi = T["spread_skill"]
    out.append(_line("spread_skill", lo <= r <= hi if _ok(r) else None,
                     f"spread/skill {r:.2f} ({lo}-{hi}); rank histogram chi2/dof {model['rank_chi2_dof']:.3g}, "
                     f"RI {model['rank_RI']:.2f}"))
    c, mae = model["CRPS_fair"], unet["MAE"] if unet else float("nan")
    out.append(_line("crps", c <= T["crps_vs_mae"] * mae if _ok(c, mae) else None,
                     f"CRPS (fair) {c:.3f} vs U-Net MAE {mae:.3f} (ratio {c / mae if _ok(c, mae) and mae else float('nan'):.2f},"
                     f" <= {T['crps_vs_mae']}; m^2 estimator {model['CRPS']:.3f})"))
    if cost:
        e, c1, c64 = cost["evals_per_member"], cost["crps"], cost["crps_ref"]
        rel = (c1 - c64) / c64 if _ok(c1, c64) and c64 else float("nan")
        held = (e <= T["evals"] and abs(rel) <= T["crps_converged"]) if _ok(rel) else None
        out.append(_line("cost", held, f"{e} evaluations per member; CRPS (fair) {c1:.4f} vs {c64:.4f} with "
                         f"{cost['ref_steps']} steps ({rel:+.1%}, within {T['crps_converged']:.0%}) on "
                         f"{cost['cases']} cases"))
    else:
        out.append(_line("cost", None, "cost: no reference-step ensemble"))
    return out


def mission_markdown(metrics: dict) -> str:
    """The mission-check section of ``report.md``: the default model first, then the other ensembles."""
    mission, default = metrics.get("mission", {}), metrics.get("default")
    lines = ["## Mission checks", "",
             f"The product default is `{default}`; the same checks for the other ensembles, for comparison.", ""]
    for name in sorted(mission, key=lambda n: n != default):
        m = mission[name]
        lines += [f"### {name}{' (default)' if name == default else ''}: {m['held']} of {m['total']} held", ""]
        for c in m["checks"]:
            verdict = "not checked" if c["held"] is None else ("held" if c["held"] else "not held")
            lines.append(f"- {c['text'][: -len(verdict)]}**{verdict}**")
        ranks = metrics["models"][name].get("ensemble", {}) or {}
        freq = (ranks.get("rank_histogram") or {}).get("frequencies")
        if freq:
            lines.append("- rank histogram (frequencies, lowest rank first): " + " ".join(f"{f:.3f}" for f in freq))
        lines.append("")
        if m.get("uncertainty"):
            from qpe_core.report.uncertainty import uncertainty_markdown  # imports this module

            lines.append(uncertainty_markdown(m["uncertainty"], name))
    return "\n".join(lines)


COMPARISON = [("POD", "POD_1", "{:.3f}"), ("FAR", "FAR_1", "{:.3f}"), ("CSI", "CSI_1", "{:.3f}"),
              ("ETS", "ETS_1", "{:.3f}"), ("FSS 3 km", "FSS_1_3km", "{:.3f}"), ("FSS 24 km", "FSS_1_24km", "{:.3f}"),
              ("FSS 96 km", "FSS_1_96km", "{:.3f}"), ("wet / truth", "wet_fraction_ratio", "{:.2f}"),
              ("q99 / truth", "q99_ratio", "{:.2f}"), ("q99.9 / truth", "q99.9_ratio", "{:.2f}"),
              ("max / truth", "max_ratio", "{:.2f}"), ("spectrum 10-50 km", "spectrum_ratio_10_50km", "{:.2f}"),
              ("CRPS mm/h", "CRPS", "{:.3f}"), ("CRPS fair", "CRPS_fair", "{:.3f}"), ("spread/skill", "spread_skill", "{:.2f}"), ("rank RI", "rank_RI", "{:.2f}"),
              ("evals/member", "evals_per_member", "{}")]


def comparison_markdown(metrics: dict) -> str:
    """The mission's comparison table: spatial skill at 1 mm/h (ensemble mean) and statistical
    quality (all members pooled; maximum over all cases), one row per model."""
    head = "| model | " + " | ".join(c[0] for c in COMPARISON) + " |"
    lines = ["## Comparison", "", "Categorical scores and FSS at 1 mm/h of the ensemble mean; distribution "
             "ratios of all members pooled over the truth (max: the largest value of all cases); CRPS of a "
             "deterministic model is its MAE.", "", head, "|---|" + "---|" * len(COMPARISON)]
    for name, entry in metrics["models"].items():
        s = entry.get("summary") or {}
        cells = []
        for _, key, fmt in COMPARISON:
            v = s.get(key)
            cells.append("-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curves_markdown(metrics: dict) -> str:
    """Validation loss of every model at each validation step, and its change over the second half of
    training (is the budget enough? a U-Net whose loss is flat would not rank differently with more steps)."""
    lines = ["## Training curves (validation loss, EMA weights)", ""]
    for name, entry in metrics["models"].items():
        curve = entry.get("val_curve") or []
        if len(curve) < 2:
            continue
        last = curve[-1]
        half = min(curve, key=lambda c: abs(c[0] - last[0] / 2))
        change = (last[1] - half[1]) / half[1] if half[1] else float("nan")
        rate = f" ({entry['lr_schedule']} rate)" if entry.get("lr_schedule") else ""
        lines.append(f"- {name}{rate}: " + ", ".join(f"{int(s)}: {v:.4f}" for s, v in curve)
                     + f"; step {int(half[0])} to {int(last[0])}: {100 * change:+.1f} %")
    return "\n".join(lines) + "\n"

