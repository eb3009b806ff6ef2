"""Headline numbers, expectation checks and the markdown report of an evaluation.

Everything here reads the ``metrics`` dict of :func:`qpe_core.evaluation.score_ensembles` /
:func:`qpe_core.evaluation.evaluate`: ``metrics["models"][name]`` is one
:class:`~qpe_core.verification.suite.VerificationSuite` ``compute()`` (sections ``meta``,
``categorical``, ``fss``, ``continuous``, ``ensemble``, ``realism``) plus the model's description
(``kind``, ``members``, ``cases``, ``parameters``, ``train_steps``, ``evals_per_member``,
``seconds_per_case``, ...).

Conventions of the headline numbers (:func:`summarize`):

* MAE, CSI at 1 mm/h and FSS at 1 mm/h are scores of the **ensemble mean** (``"mean"``);
* FSS at 3, 24 and 96 km takes the suite's scale nearest to each (in log distance; the evaluation
  adds the scales ``round(km / pixel_km)`` so they exist exactly on 3 km and 4 km grids);
* POD, FAR and ETS at 1 mm/h, like CSI, of the ensemble mean;
* wet fraction (>= 0.1 mm/h), q99, q99.9 and the maximum are those of **all members** pooled (one member for a
  deterministic model), with their ratio to the radar truth of the same cases;
* CRPS (mm/h) is the ensemble CRPS per pixel; for one member it is its MAE (the CRPS of a point);
* spread/skill: ``sqrt(1 + 1/m) * spread / RMSE(mean)`` (1 = calibrated);
* rank histogram: chi-square against flat divided by its degrees of freedom (m), and the
  reliability index RI = sum |f_i - 1/(m+1)| (0 = flat, independent of the sample size);
* spectrum ratio: radially averaged power of **member 0** over that of the truth, summed over the
  wavelengths 10-50 km (the per-wavelength minimum and maximum are kept too).
"""

from __future__ import annotations

import math

import numpy as np

FSS_KM = (3.0, 24.0, 96.0)
SPECTRUM_KM = (10.0, 50.0)
TOLERANCES = {"fss_24km": 0.03, "realism": 0.15, "spectrum": 0.20, "spread_skill": (0.8, 1.2)}


def _num(value) -> float:
    """JSON value -> float (``None`` -> NaN)."""
    return float("nan") if value is None else float(value)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def nearest_scale(scales_km: list[float], km: float) -> int:
    """Index of the scale nearest to ``km`` in log distance (ties: the larger scale)."""
    d = [abs(math.log(s / km)) for s in scales_km]
    best = min(d)
    return max(i for i, v in enumerate(d) if v <= best + 1e-9)


def spectrum_ratio(spectrum: dict | None, band_km=SPECTRUM_KM, name: str = "member0") -> dict:
    """Power ratio ``name`` / truth over ``band_km``: summed, and per-wavelength min and max."""
    nan = float("nan")
    out = {"ratio": nan, "min": nan, "max": nan, "band_km": list(band_km), "rings": 0}
    if not spectrum or name not in spectrum.get("psd", {}):
        return out
    wl = np.array(spectrum["wavelength_km"], dtype=float)
    f = np.array([_num(v) for v in spectrum["psd"][name]])
    o = np.array([_num(v) for v in spectrum["psd"]["truth"]])
    sel = (wl >= band_km[0]) & (wl <= band_km[1]) & np.isfinite(f) & np.isfinite(o) & (o > 0)
    if not sel.any():
        return out
    per = f[sel] / o[sel]
    out.update(ratio=float(f[sel].sum() / o[sel].sum()), min=float(per.min()), max=float(per.max()),
               rings=int(sel.sum()))
    return out


def summarize(entry: dict) -> dict:
    """Headline numbers of one model entry (conventions in the module docstring); NaN where undefined."""
    nan = float("nan")
    out: dict = {"kind": entry.get("kind"), "members": entry.get("members"), "cases": entry.get("cases")}
    cont = entry.get("continuous", {}).get("mean", {}).get("all", {})
    out["MAE"] = _num(cont.get("MAE"))
    cat1 = entry.get("categorical", {}).get("mean", {}).get("1", {})
    out["CSI_1"] = _num(cat1.get("CSI"))
    for k in ("POD", "FAR", "ETS"):
        out[f"{k}_1"] = _num(cat1.get(k))
    fss = entry.get("fss", {}).get("mean", {}).get("1")
    for km in FSS_KM:
        key = f"FSS_1_{km:g}km"
        if fss and fss.get("scales_km"):
            i = nearest_scale(fss["scales_km"], km)
            out[key], out[key + "_scale_km"] = _num(fss["fss"][i]), float(fss["scales_km"][i])
        else:
            out[key], out[key + "_scale_km"] = nan, nan
    stats = entry.get("realism", {}).get("statistics", {})
    fc = stats.get("members") or stats.get("member0") or {}
    truth = stats.get("truth", {})
    for k in ("wet_fraction", "q99", "q99.9", "max"):
        out[k], out[k + "_truth"] = _num(fc.get(k)), _num(truth.get(k))
        out[k + "_ratio"] = _num(fc.get("ratio_to_truth", {}).get(k))
    ens = entry.get("ensemble")
    if ens:
        out["CRPS"] = _num(ens["crps"].get("1x1"))
        out["CRPS_fair"] = _num(ens["crps"].get("fair_1x1"))
        out["spread_skill"] = _num(ens["spread_skill"].get("ratio"))
        rank = ens["rank_histogram"]
        out["rank_chi2_dof"] = _num(rank.get("chi2")) / rank["dof"] if rank.get("dof") else nan
        freq = np.array([_num(v) for v in rank.get("frequencies", [])])
        out["rank_RI"] = float(np.abs(freq - 1.0 / len(freq)).sum()) if len(freq) else nan
    else:
        out["CRPS"] = out["CRPS_fair"] = _num(entry.get("continuous", {}).get("member0", {}).get("all", {}).get("MAE"))
        out["spread_skill"] = out["rank_chi2_dof"] = out["rank_RI"] = nan
    spec = spectrum_ratio(entry.get("realism", {}).get("spectrum"))
    out["spectrum_ratio_10_50km"] = spec["ratio"]
    out["spectrum_ratio_10_50km_min"], out["spectrum_ratio_10_50km_max"] = spec["min"], spec["max"]
    out["evals_per_member"] = entry.get("evals_per_member")
    out["shared_evals"] = entry.get("shared_evals")
    out["seconds_per_case"] = entry.get("seconds_per_case")
    return out


def _verdict(held: bool | None) -> str:
    return "not checked" if held is None else ("held" if held else "not held")


def expectations(summaries: dict[str, dict]) -> list[dict]:
    """The expectation checks of the issue, one dict per check and model:
    ``{"check", "model", "held" (True/False/None = not checkable), "text"}``."""
    out = []
    tol = TOLERANCES
    unets = [n for n, s in summaries.items() if s.get("kind") == "unet"]
    flows = [n for n, s in summaries.items() if s.get("kind") == "residual-flow"]
    if not unets or not flows:
        out.append({"check": "fss_24km", "model": None, "held": None,
                    "text": "residual flow FSS 24 km within 0.03 of U-Net: not checked (needs a unet and a "
                            "residual-flow model)"})
    for rf in flows:
        for un in unets[:1]:
            a, b = summaries[rf]["FSS_1_24km"], summaries[un]["FSS_1_24km"]
            held = (a >= b - tol["fss_24km"]) if _finite(a) and _finite(b) else None
            out.append({"check": "fss_24km", "model": rf, "held": held,
                        "text": f"{rf} FSS 1 mm/h at 24 km {a:.3f} vs {un} {b:.3f} (difference {a - b:+.3f}, "
                                f"must be >= -{tol['fss_24km']}): {_verdict(held)}"})
    for name, s in summaries.items():
        w, q = s["wet_fraction_ratio"], s["q99_ratio"]
        held = (abs(w - 1) <= tol["realism"] and abs(q - 1) <= tol["realism"]) \
            if _finite(w) and _finite(q) else None
        out.append({"check": "realism", "model": name, "held": held,
                    "text": f"{name} wet fraction {s['wet_fraction']:.3f} vs truth {s['wet_fraction_truth']:.3f} "
                            f"(ratio {w:.2f}), q99 {s['q99']:.2f} vs {s['q99_truth']:.2f} mm/h (ratio {q:.2f}); "
                            f"both within {tol['realism']:.0%}: {_verdict(held)}"})
    for name, s in summaries.items():
        r = s["spectrum_ratio_10_50km"]
        held = abs(r - 1) <= tol["spectrum"] if _finite(r) else None
        out.append({"check": "spectrum", "model": name, "held": held,
                    "text": f"{name} spectrum (member 0 / truth) at 10-50 km {r:.2f} (per wavelength "
                            f"{s['spectrum_ratio_10_50km_min']:.2f}-{s['spectrum_ratio_10_50km_max']:.2f}); "
                            f"within {tol['spectrum']:.0%}: {_verdict(held)}"})
    lo, hi = tol["spread_skill"]
    for name, s in summaries.items():
        if (s.get("members") or 1) < 2:
            continue
        r = s["spread_skill"]
        held = lo <= r <= hi if _finite(r) else None
        out.append({"check": "spread_skill", "model": name, "held": held,
                    "text": f"{name} spread/skill {r:.2f}, in {lo}-{hi}: {_verdict(held)}"})
    return out


# ------------------------------------------------------------------ tables

def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _with_ratio(value, ratio, spec: str) -> str:
    text = _fmt(value, spec)
    return text if text == "-" or not _finite(ratio) else f"{text} ({ratio:.2f})"


def _evals(s: dict) -> str:
    """Network evaluations per member, plus those shared by all members (e.g. "4 + 1", U-Net "0 + 1")."""
    text = _fmt(s.get("evals_per_member"), "d")
    return f"{text} + {s['shared_evals']}" if s.get("shared_evals") and text != "-" else text


COLUMNS = ("model", "kind", "members", "cases", "MAE mm/h", "CSI 1", "FSS 1 mm/h 3 km", "FSS 24 km",
           "FSS 96 km", "wet fraction (/truth)", "q99 mm/h (/truth)", "CRPS mm/h", "spread/skill",
           "rank chi2/dof", "rank RI", "spectrum 10-50 km", "evals/member (+ shared)", "s/case")


def table_rows(metrics: dict) -> list[dict]:
    """The comparison table as rows (column name -> text), models first, then the radar truth."""
    rows = []
    for name, entry in metrics["models"].items():
        s = entry.get("summary") or summarize(entry)
        rows.append(dict(zip(COLUMNS, (
            name, str(s["kind"]), _fmt(s["members"], "d"), _fmt(s["cases"], "d"), _fmt(s["MAE"], ".3f"),
            _fmt(s["CSI_1"], ".3f"), _fmt(s["FSS_1_3km"], ".3f"), _fmt(s["FSS_1_24km"], ".3f"),
            _fmt(s["FSS_1_96km"], ".3f"), _with_ratio(s["wet_fraction"], s["wet_fraction_ratio"], ".3f"),
            _with_ratio(s["q99"], s["q99_ratio"], ".2f"), _fmt(s["CRPS"], ".3f"), _fmt(s["spread_skill"], ".2f"),
            _fmt(s["rank_chi2_dof"], ".3g"), _fmt(s["rank_RI"], ".2f"), _fmt(s["spectrum_ratio_10_50km"], ".2f"),
            _evals(s), _fmt(s["seconds_per_case"], ".2f")))))
    truth = metrics.get("truth") or {}
    if truth:
        row = dict.fromkeys(COLUMNS, "")
        row.update({"model": "radar (truth)", "kind": "radar", "cases": _fmt(truth.get("cases"), "d"),
                    "wet fraction (/truth)": _fmt(_num(truth.get("wet_fraction")), ".3f"),
                    "q99 mm/h (/truth)": _fmt(_num(truth.get("q99")), ".2f")})
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0]) if rows else list(COLUMNS)
    esc = [[str(r.get(c, "")).replace("|", "\\|") for c in cols] for r in rows]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def expectation_lines(checks: list[dict]) -> list[str]:
    out = []
    for c in checks:
        verdict = _verdict(c["held"])
        text = c["text"]
        out.append(f"- {text[: -len(verdict)]}**{verdict}**" if text.endswith(verdict) else f"- {text} **{verdict}**")
    return out


def _scale_note(metrics: dict) -> list[str]:
    """A line naming the FSS scales actually used where they differ from the nominal 3, 24 and 96 km."""
    used = {}
    for entry in metrics["models"].values():
        s = entry.get("summary") or summarize(entry)
        for km in FSS_KM:
            got = s.get(f"FSS_1_{km:g}km_scale_km")
            if _finite(got) and abs(got - km) > 1e-6:
                used[km] = got
    if not used:
        return []
    return ["FSS columns use the nearest scale of the grid: " + ", ".join(
        f"{km:g} km -> {got:g} km" for km, got in sorted(used.items())) + ".", ""]


def report_markdown(metrics: dict, figures: dict[str, tuple[str, str]] | None = None) -> str:
    """``report.md``: header, comparison table, expectation checks and the figures
    (``figures``: name -> (relative path, caption))."""
    window = metrics.get("window")
    where = f"{metrics.get('area') or 'grid'}" + (f", window rows {window[0]}:{window[1]} cols {window[2]}:"
                                                 f"{window[3]}" if window else "")
    period = metrics.get("period") or ["?", "?"]
    lines = [f"# Evaluation on {metrics.get('archive') or 'precomputed ensembles'}", "",
             (f"Period {period[0]} .. {period[1]}, {metrics['cases']} cases on {where} "
              f"({metrics.get('pixel_km', 0):g} km pixels); {metrics.get('members', '?')} members for generative "
              "models. Deterministic scores (MAE, CSI, FSS) on the ensemble mean; wet fraction and q99 of all "
              "members with their ratio to the radar truth; spectrum of member 0 over the truth's; events "
              "R >= threshold (mm/h). Baselines are scored on the cases where they have a field."), "",
             "## Scores", "", markdown_table(table_rows(metrics)), "", *_scale_note(metrics),
             "## Expectations", "", *expectation_lines(metrics.get("expectations", [])), ""]
    if figures:
        lines += ["## Figures", ""]
        for name, (rel, caption) in figures.items():
            lines += [f"### {caption}", "", f"![{name}]({rel})", ""]
    return "\n".join(lines)
