"""How much of the study's cost check is sampling noise: the default model's CRPS at its own steps
and at ``--ref-steps`` on the study's cost cases, drawn again with other seeds.

    python scripts/cost_check_seeds.py data/study/cpu --profile cpu --seeds 0,1,2

Seed ``s`` draws the ``k``-th cost case with seed ``k + 1000 s`` at both step counts, so each pair is
drawn from the same initial noise (the study itself gives each case the seed of its index among all
held-out cases). Prints the fair CRPS (mm/h) of each draw and the ratio per seed; writes
``STUDY/validation/cost-seeds.json``. The cases are the study's held-out cost cases: this measures
the check's noise, it chooses nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from qpe_core.report.mission import crps_of
    from qpe_core.study import PROFILES, _window, cost_case_indices, draw_ensembles

    from _study_files import held_out, save_validation

    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ref-steps", type=int, default=None)
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    archive, times, truth = held_out(args.study)  # the study's held-out cases, draw stage
    idx = cost_case_indices(prof, len(times))
    cost_t, truth = times[idx], truth[idx]
    ref = args.ref_steps or prof.cost_steps
    rows = []
    for s in (int(v) for v in args.seeds.split(",")):
        row = {"seed": s}
        for steps in (None, ref):
            ens, _ = draw_ensembles(args.study / "ck" / prof.default, archive, cost_t, prof.members, _window(prof),
                                    prof.device, steps, seeds=np.arange(len(cost_t)) + 1000 * s)
            row["default" if steps is None else f"steps_{ref}"] = crps_of(truth, ens)
        row["ratio"] = row["default"] / row[f"steps_{ref}"]
        rows.append(row)
        print(f"seed {s}: CRPS fair {row['default']:.5f} (default) vs {row[f'steps_{ref}']:.5f} ({ref} steps): "
              f"{100 * (row['ratio'] - 1):+.1f} %", flush=True)
    save_validation(args.study, "cost-seeds", {"cases": [str(t) for t in cost_t], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
