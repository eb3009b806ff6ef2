"""How much of the study's cost check is sampling noise: the default model's CRPS at its own steps
and at ``--ref-steps`` on the study's cost cases, drawn again with other seeds.

    python scripts/cost_check_seeds.py data/study/cpu --profile cpu --seeds 0,1,2

Seed ``s`` draws cost case ``k`` with seed ``k + 1000 s`` at both step counts (``s = 0``: the seeds of
the study's reference draw; its default-step ensemble was drawn over all cases, case index as seed,
so it differs from this one by its seeds). Prints the
fair CRPS (mm/h) of each draw and the 4-step / 64-step ratio per seed; writes
``STUDY/validation/cost-seeds.json``. The cases are the study's held-out cost cases: this measures
the check's noise, it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from qpe_core.archive import Archive
    from qpe_core.evaluation import case_ensemble, case_stack, window_slices
    from qpe_core.grids import get_spec
    from qpe_core.report.mission import crps_of
    from qpe_core.study import PROFILES, _window, eval_cases
    from qpe_core.training.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ref-steps", type=int, default=None)
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    archive = json.loads((args.study / "study.json").read_text())["archive"]
    times = eval_cases(prof, archive)
    cost_t = times[np.linspace(0, len(times) - 1, min(prof.cost_cases, len(times))).astype(int)]
    arc, model = Archive.open(archive), load_checkpoint(args.study / "ck" / prof.default, prof.device)
    spec = get_spec(arc.area)
    ys, xs = window_slices(_window(prof), (spec.height, spec.width))
    truth = np.stack([arc.read_truth(t)[ys, xs] for t in cost_t])
    stacks = [case_stack(arc, t, model.card["lags"], model.card["channels"], ys, xs) for t in cost_t]
    ref = args.ref_steps or prof.cost_steps
    rows = []
    for s in (int(v) for v in args.seeds.split(",")):
        row = {"seed": s}
        for steps in (None, ref):
            ens = np.stack([case_ensemble(model, bt, ok, prof.members, steps, seed=k + 1000 * s,
                                          device=prof.device, tile=None) for k, (bt, ok) in enumerate(stacks)])
            row["default" if steps is None else f"steps_{ref}"] = crps_of(truth, ens)
        row["ratio"] = row["default"] / row[f"steps_{ref}"]
        rows.append(row)
        print(f"seed {s}: CRPS fair {row['default']:.5f} (default) vs {row[f'steps_{ref}']:.5f} ({ref} steps): "
              f"{100 * (row['ratio'] - 1):+.1f} %", flush=True)
    (args.study / "validation").mkdir(exist_ok=True)
    (args.study / "validation" / "cost-seeds.json").write_text(json.dumps(
        {"cases": [str(t) for t in cost_t], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
