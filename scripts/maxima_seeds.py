"""How stable the study's maximum check is: the default model's ensemble on every held-out case drawn
again with other seeds, and each draw's count of cases whose largest member exceeds twice the truth's
maximum.

    python scripts/maxima_seeds.py data/study/cpu --profile cpu --seeds 0,1,2,3

Seed ``s`` draws case ``k`` with seed ``k + 1000 s`` (``s = 0``: the study's own draw). Prints, per
seed, the cases above 2 with their largest-member and median-member ratios; writes
``STUDY/validation/maxima-seeds.json``. The cases are the held-out ones: this measures the check's
noise, it chooses nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from qpe_core.report.mission import member_scores
    from qpe_core.study import PROFILES, _window, draw_ensembles

    from _study_files import held_out, save_validation

    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    archive, times, truth = held_out(args.study)  # the study's held-out cases, draw stage
    rows = []
    for s in (int(v) for v in args.seeds.split(",")):
        ens, _ = draw_ensembles(args.study / "ck" / prof.default, archive, times, prof.members, _window(prof),
                                prof.device, seeds=np.arange(len(times)) + 1000 * s)
        sc = member_scores(truth, ens, 8)
        over = [k for k, r in enumerate(sc["max_ratio"]) if r > 2]
        rows.append({"seed": s, "cases_over_2": over, "max_ratio": sc["max_ratio"],
                     "median_max_ratio": sc["median_max_ratio"], "truth_max": sc["truth_max"]})
        detail = ", ".join(f"case {k} ({times[k]:%m-%d %H:%M}, truth max {sc['truth_max'][k]:.1f} mm/h): "
                           f"{sc['max_ratio'][k]:.2f} / median member {sc['median_max_ratio'][k]:.2f}" for k in over)
        print(f"seed {s}: {len(over)} of {len(times)} cases above 2, worst {max(sc['max_ratio']):.2f}"
              + (f"; {detail}" if detail else ""), flush=True)
    save_validation(args.study, "maxima-seeds", {"cases": [str(t) for t in times], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
