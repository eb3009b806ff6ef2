"""What the maximum check asks of a perfect ensemble: the simulator's own rain, redrawn where the IR
cannot see, scored like a model.

    python scripts/maxima_oracle.py data/study/cpu --profile cpu --members 8 --draws 16

The simulator's convective rain rate carries a random precipitation efficiency (a latent field,
log-sd ``FieldParams.efficiency_ln`` = 0.35, ~150 km scales, :mod:`qpe_core.simulator.fields`) that
no brightness temperature depends on. For each of the study's held-out cases this script re-runs the
simulator of the evaluation segment (same seed, same slots), keeps every other latent of the case as
it was (updrafts, stratiform field, wetness: far more than any IR model can know) and redraws only
the efficiency field from its own stationary distribution, ``members`` times. Those fields are draws
of the rain given everything the satellite sees (and more): an oracle ensemble, exchangeable with
the truth. Each oracle ensemble is scored like the study's maximum check
(:func:`qpe_core.simulator.oracle.oracle_maxima`, the one ``qpe study`` reports); the script prints,
per draw, the cases whose largest member exceeds twice the truth's maximum and the fair CRPS, and
the same for the study's default model. With efficiency set back to the simulator's own field it reproduces the
archive's truth exactly (checked on every case). Writes ``STUDY/validation/maxima-oracle.json``.
It chooses nothing: it measures what the check asks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from qpe_core.report.mission import crps_of, member_scores
    from qpe_core.simulator.oracle import oracle_maxima
    from qpe_core.study import PROFILES, _window

    from _study_files import held_out, save_validation

    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--draws", type=int, default=16)
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    _, times, truth = held_out(args.study)
    with np.load(args.study / "ensembles" / f"{prof.default}.npz") as z:
        model = z["rain"]
    sc = member_scores(truth, model, 8)
    oracle = oracle_maxima(prof.area, prof.eval_segments, times, truth, args.members, args.draws, _window(prof),
                           seed=prof.seed)
    rows = [("model " + prof.default, sc["max_ratio"], crps_of(truth, model))] + [
        (f"oracle draw {d}", oracle["max_ratio"][d], oracle["crps_fair"][d]) for d in range(args.draws)]
    for name, ratios, crps in rows:
        over = [k for k, r in enumerate(ratios) if r > 2]
        print(f"{name}: {len(over)} of {len(times)} cases above 2, worst {max(ratios):.2f}, CRPS fair {crps:.4f}; "
              f"cases {[f'{times[k]:%m-%d %H:%M}' for k in over]}", flush=True)
    n_over = [sum(r > 2 for r in ratios) for _, ratios, _ in rows[1:]]
    print(f"oracle: {sum(n == 0 for n in n_over)} of {len(n_over)} draws hold the check on every case; "
          f"cases above 2 per draw: mean {np.mean(n_over):.2f}, range {min(n_over)}-{max(n_over)}")
    save_validation(args.study, "maxima-oracle", {"cases": [str(t) for t in times],
                                                  "model": {"name": prof.default, "max_ratio": sc["max_ratio"]},
                                                  "oracle": oracle})
    return 0


if __name__ == "__main__":
    sys.exit(main())
