"""The default's mission checks over several study runs, one line per run (markdown).

    python scripts/verdict_matrix.py data/study/cpu data/study/cpu-s1 data/study/cpu-s2 \
        data/study/cpu-wide data/study/cpu-wide-s1 data/study/cpu-wide-s2 \
        data/study/confirm data/study/confirm-s1 data/study/confirm-s2

Reads each ``STUDY/report/metrics.json`` (written by ``qpe study``) and prints, for the profile's
default model (``--every``: every model the report checked), each check held (``yes``) or not
(``no``) beside its figure as the report's sentence gives it (FSS differences against the model's
U-Net, wet fraction and q99 over the truth's, cases with a member above twice the truth's maximum
beside the perfect (oracle) ensemble's mean count on the same cases, spectrum, spread/skill, CRPS
over the U-Net's MAE, the cost's CRPS change), and the count held. How sure each verdict is stays
in each report ("How sure"). A run without a report or mission section is listed with the
reason, not skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

CHECKS = ["fss_mean", "fss_member", "realism", "maximum", "spectrum", "spread_skill", "crps", "cost"]
HEAD = ["FSS mean - U-Net", "member - U-Net", "wet / q99", "cases > 2x max", "spectrum", "spread/skill",
        "CRPS / MAE", "cost"]


PATTERNS = {"fss_mean": r"\(([+-]\d\.\d{3}), >=", "fss_member": r"\(([+-]\d\.\d{3}), >=",
            "realism": r"= (\d\.\d\d), q99 .*= (\d\.\d\d) \(", "maximum": r"(\d+) of \d+ cases above 2",
            "spectrum": r"10-50 km (\d\.\d\d)", "spread_skill": r"spread/skill (\d\.\d\d)",
            "crps": r"ratio (\d\.\d\d)", "cost": r"\(([+-]\d+\.\d%)"}


ORACLE = r"cases above 2 per draw mean (\d+\.\d+)"


def _cell(check: dict | None, oracle: str = "") -> str:
    """``figure yes|no`` of one check (its figure read from the report's own sentence), ``-`` if absent;
    the maxima's cell adds the oracle ensemble's mean count on the same cases when the report has it."""
    if check is None:
        return "-"
    if "not checked" in check["text"]:
        return "not checked"
    found = re.search(PATTERNS[check["check"]], check["text"])
    fig = " / ".join(found.groups()) if found else ""
    if check["check"] == "maximum" and oracle:
        fig += f" (oracle {oracle})"
    return f"{fig} {'yes' if check['held'] else 'no'}".strip()


def rows(study: Path, every: bool) -> list[str]:
    """Markdown lines of one study: its default's checks, or every model's with ``every``."""
    path = study / "report" / "metrics.json"
    if not path.is_file():
        return [f"| {study} | - | - | - | " + " | ".join(["no report"] * len(CHECKS)) + " | - |"]
    m = json.loads(path.read_text())
    prof, mission = m.get("profile", {}), m.get("mission", {})
    names = list(mission) if every else [m.get("default", "")]
    texts = [c["text"] for v in mission.values() for c in v["checks"] if c["check"] == "maximum"]
    oracle = next((f.group(1) for f in (re.search(ORACLE, t) for t in texts) if f), "")  # same cases, any model
    out = []
    for name in names:
        if name not in mission:
            out.append(f"| {prof.get('name', study)} | {name} | - | - | " + " | ".join(["no mission checks"] * len(CHECKS)) + " | - |")
            continue
        checks = {c["check"]: c for c in mission[name]["checks"]}
        seed = next((s["seed"] for s in prof.get("models", []) if s.get("name") == name and s.get("seed") is not None),
                    prof.get("seed"))
        out.append(f"| {prof.get('name', study.name)} | {name} | {seed} | {len(m['times'])} | "
                   + " | ".join(_cell(checks.get(k), oracle) for k in CHECKS) + f" | {mission[name]['held']}/{mission[name]['total']} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path)
    ap.add_argument("--every", action="store_true", help="every model with mission checks, not only the default")
    args = ap.parse_args(argv)
    print("| profile | model | seed | cases | " + " | ".join(HEAD) + " | held |")
    print("|" + "---|" * (len(HEAD) + 5))
    for s in args.studies:
        print("\n".join(rows(s, args.every)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
