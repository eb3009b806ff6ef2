"""Seed groups of a study: models that differ only by their training seed, reported together.

``qpe study --profile cpu-lags`` trains the U-Net and the default model with 1, 2 and 4 slots and
two seeds each; :func:`seed_groups` gives, per group, the mean over seeds and the seed-to-seed
difference (max - min) of the scores that decide the temporal claim (CRPS, mm/h; CSI at 1 mm/h of
the ensemble mean; FSS at 1 mm/h, 24 km; q99 / truth), and :func:`temporal_claim` compares each
kind's groups with the one-slot group: CRPS at least 3 % lower and CSI higher, both by more than
the larger seed-to-seed difference of the two groups.
"""

from __future__ import annotations

import numpy as np

from qpe_core.config import DEFAULT_LAGS

SCORES = ("CRPS", "CSI_1", "FSS_1_24km", "q99_ratio", "spread_skill")


def seed_groups(metrics: dict, group_of: dict[str, str], mission: dict | None = None) -> dict:
    """``{group: {"models", "kind", "lags", score: {"mean", "diff", "values"}, "checks"}}`` from the
    scored models; ``checks`` (where ``mission`` has the group's models): ``{check: [held per seed]}``,
    held being True, False or None (not checked)."""
    out: dict[str, dict] = {}
    for name, group in group_of.items():
        entry = metrics["models"].get(name)
        if entry is None:
            continue
        g = out.setdefault(group, {"models": [], "kind": entry["kind"], "lags": entry["lags"]})
        g["models"].append(name)
        for k in SCORES:
            v = entry["summary"].get(k)
            g.setdefault(k, {"values": []})["values"].append(None if v is None else float(v))
        for c in (mission or {}).get(name, {}).get("checks", []):
            g.setdefault("checks", {}).setdefault(c["check"], []).append(c["held"])
    for g in out.values():
        for k in SCORES:
            vals = [v for v in g[k]["values"] if v is not None and np.isfinite(v)]
            g[k]["mean"] = float(np.mean(vals)) if vals else None
            g[k]["diff"] = float(max(vals) - min(vals)) if len(vals) > 1 else None
    return {"groups": out, "claims": temporal_claim(out)}


def temporal_claim(groups: dict) -> list[dict]:
    """For each kind, each multi-slot group against the one-slot group (held / not held)."""
    claims = []
    for kind in sorted({g["kind"] for g in groups.values()}):
        mine = {n: g for n, g in groups.items() if g["kind"] == kind}
        base = next((n for n, g in mine.items() if len(g["lags"]) == 1), None)
        if base is None:
            continue
        b = mine[base]
        for n, g in mine.items():
            if n == base:
                continue
            noise_crps = max(b["CRPS"]["diff"] or 0.0, g["CRPS"]["diff"] or 0.0)
            noise_csi = max(b["CSI_1"]["diff"] or 0.0, g["CSI_1"]["diff"] or 0.0)
            d_crps = b["CRPS"]["mean"] - g["CRPS"]["mean"]
            d_csi = g["CSI_1"]["mean"] - b["CSI_1"]["mean"]
            held = d_crps >= 0.03 * b["CRPS"]["mean"] and d_crps > noise_crps and d_csi > noise_csi
            claims.append({"kind": kind, "group": n, "against": base, "crps_gain": d_crps / b["CRPS"]["mean"],
                           "crps_gain_abs": d_crps, "crps_seed_diff": noise_crps, "csi_gain": d_csi,
                           "csi_seed_diff": noise_csi, "held": bool(held),
                           "default_lags": [int(v) for v in g["lags"]] == list(DEFAULT_LAGS)})
    return claims


def groups_markdown(groups: dict) -> str:
    """The seed-group table and the temporal claim, for ``report.md``."""
    lines = ["## Seed groups (mean over seeds, seed-to-seed difference in brackets)", "",
             "| group | kind | lags | " + " | ".join(SCORES) + " |", "|---|---|---|" + "---|" * len(SCORES)]
    for n, g in groups["groups"].items():
        cells = [f"{g[k]['mean']:.3f} ({g[k]['diff']:.3f})" if g[k]["mean"] is not None and g[k]["diff"] is not None
                 else ("-" if g[k]["mean"] is None else f"{g[k]['mean']:.3f}") for k in SCORES]
        lines.append(f"| {n} | {g['kind']} | {','.join(str(x) for x in g['lags'])} | " + " | ".join(cells) + " |")
    if groups["claims"]:
        lines += ["", "Temporal claim: CRPS at least 3 % lower and CSI(1 mm/h) higher than with one slot, both by more "
                  "than the seed-to-seed difference.", ""]
        for c in groups["claims"]:
            mark = " (the product's default lags)" if c.get("default_lags") else ""
            lines.append(f"- {c['kind']} {c['group']}{mark} vs {c['against']}: CRPS {100 * c['crps_gain']:+.1f} % lower "
                         f"(seed diff {c['crps_seed_diff']:.4f} mm/h, gain {c['crps_gain_abs']:+.4f}), CSI "
                         f"{c['csi_gain']:+.4f} (seed diff {c['csi_seed_diff']:.4f}): **{'held' if c['held'] else 'not held'}**")
    lines += checks_by_seed_markdown(groups)
    return "\n".join(lines) + "\n"


def checks_by_seed_markdown(groups: dict) -> list[str]:
    """Lines of the table: for each group, in how many of its seeds each mission check held."""
    rows = {n: g["checks"] for n, g in groups["groups"].items() if g.get("checks")}
    if not rows:
        return []
    names = list(dict.fromkeys(c for checks in rows.values() for c in checks))
    lines = ["", "Mission checks by seed (seeds where the check held / seeds where it was checked):", "",
             "| group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for n, checks in rows.items():
        cells = []
        for c in names:
            done = [h for h in checks.get(c, []) if h is not None]
            cells.append(f"{sum(done)}/{len(done)}" if done else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines
