"""The default's mission checks over several study runs, one line per run (markdown).

    python scripts/verdict_matrix.py data/study/cpu data/study/cpu-s1 data/study/cpu-s2 \
        data/study/cpu-wide data/study/cpu-wide-s1 data/study/cpu-wide-s2 \
        data/study/confirm data/study/confirm-s1 data/study/confirm-s2

Reads each ``STUDY/report/metrics.json`` (written by ``qpe study``) and prints, for the profile's
default model, each check held (``yes``) or not (``no``) beside its figure (the report's point
estimates: FSS differences against the run's U-Net, wet fraction and q99 over the truth's, cases
with a member above twice the truth's maximum, ...), and the count held. How sure each verdict is
stays in each report ("How sure"). A run without a report or mission section is listed with the
reason, not skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHECKS = ["fss_mean", "fss_member", "realism", "maximum", "spectrum", "spread_skill", "crps", "cost"]
HEAD = ["FSS mean - U-Net", "member - U-Net", "wet / q99", "cases > 2x max", "spectrum", "spread/skill",
        "CRPS / MAE", "cost"]


def _figures(point: dict) -> dict:
    """The figure printed beside each verdict, from the report's uncertainty point estimates."""
    return {"fss_mean": f"{point['fss_mean']:+.3f}", "fss_member": f"{point['fss_member']:+.3f}",
            "realism": f"{point['wet_ratio']:.2f} / {point['q99_ratio']:.2f}", "maximum": f"{point['cases_over']:.0f}",
            "spectrum": f"{point['spectrum']:.2f}", "spread_skill": f"{point['spread_skill']:.2f}",
            "crps": f"{point['crps_vs_mae']:.2f}", "cost": ""}


def row(study: Path) -> str:
    """One markdown line: profile, seed, cases, each check's figure and verdict, checks held."""
    path = study / "report" / "metrics.json"
    if not path.is_file():
        return f"| {study} | - | - | " + " | ".join(["no report"] * len(CHECKS)) + " | - |"
    m = json.loads(path.read_text())
    mission = m.get("mission", {}).get(m.get("default", ""))
    if not mission:
        return f"| {study} | - | - | " + " | ".join(["no mission checks"] * len(CHECKS)) + " | - |"
    held = {c["check"]: c["held"] for c in mission["checks"]}
    figs = _figures(mission["uncertainty"]["point"]) if mission.get("uncertainty") else {}
    cells = [f"{figs.get(k, '')} {'yes' if held.get(k) else 'no' if k in held else '-'}".strip() for k in CHECKS]
    prof = m.get("profile", {})
    return (f"| {prof.get('name', study.name)} | {prof.get('seed', m.get('seed'))} | {len(m['times'])} | "
            + " | ".join(cells) + f" | {mission['held']}/{mission['total']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path)
    args = ap.parse_args(argv)
    print("| profile | seed | cases | " + " | ".join(HEAD) + " | held |")
    print("|" + "---|" * (len(HEAD) + 4))
    for s in args.studies:
        print(row(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
