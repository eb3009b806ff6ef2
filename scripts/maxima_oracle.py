"""What the maximum check asks of a perfect ensemble: the simulator's own rain, redrawn where the IR
cannot see, scored like a model.

    python scripts/maxima_oracle.py data/study/cpu --profile cpu --members 8 --draws 4

The simulator's convective rain rate carries a random precipitation efficiency (a latent field,
log-sd ``FieldParams.efficiency_ln`` = 0.35, ~150 km scales, :mod:`qpe_core.simulator.fields`) that
no brightness temperature depends on. For each of the study's held-out cases this script re-runs the
simulator of the evaluation segment (same seed, same slots), keeps every other latent of the case as
it was (updrafts, stratiform field, wetness: far more than any IR model can know) and redraws only
the efficiency field from its own stationary distribution, ``members`` times. Those fields are draws
of the rain given everything the satellite sees (and more): an oracle ensemble, exchangeable with
the truth. Each oracle ensemble is scored with the study's ``member_scores``; the script prints,
per draw, the cases whose largest member exceeds twice the truth's maximum, and the same for the
study's default model. With efficiency set back to the simulator's own field it reproduces the
archive's truth exactly (checked on every case). Writes ``STUDY/validation/maxima-oracle.json``.
It chooses nothing: it measures what the check asks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None) -> int:
    from qpe_core.report.mission import crps_of, member_scores
    from qpe_core.evaluation import window_slices
    from qpe_core.grids import get_spec, lonlats
    from qpe_core.simulator import Simulator
    from qpe_core.simulator.oracle import oracle_ensembles
    from qpe_core.timeutil import slot_range
    from qpe_core.study import PROFILES, _window

    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--draws", type=int, default=4)
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    with np.load(args.study / "ensembles" / "truth.npz") as z:
        times, truth = pd.DatetimeIndex(z["times"]), z["truth"]
    oracle = np.zeros((args.draws, len(times), args.members, *truth.shape[1:]), np.float32)
    for seg in prof.eval_segments:
        t0 = pd.Timestamp(seg.start)
        k = np.flatnonzero((times >= t0) & (times < t0 + pd.Timedelta(minutes=15 * seg.periods)))
        if len(k):
            spec, (lon, lat) = get_spec(prof.area), lonlats(prof.area)
            sim = Simulator((spec.height, spec.width), 0.5 * sum(spec.resolution_m) / 1000.0, seg.seed,
                            lon=lon, lat=lat, workers=1)  # as simulate() builds it for the archive
            ys, xs = window_slices(_window(prof), (spec.height, spec.width))
            ens, own = oracle_ensembles(sim, slot_range(seg.start, seg.periods, 15), times[k], args.members,
                                        args.draws, ys, xs, np.random.default_rng(seg.seed + 7919))
            valid = np.isfinite(truth[k])
            if not np.array_equal(own[valid], truth[k][valid]):
                raise RuntimeError(f"segment {seg.start}: the re-run simulator's rain differs from the archive's truth")
            oracle[:, k] = ens
    with np.load(args.study / "ensembles" / f"{prof.default}.npz") as z:
        model = z["rain"]
    valid = np.isfinite(truth)[:, None]
    rows = []
    for name, ens in [("model " + prof.default, model)] + [
            (f"oracle draw {d}", np.where(valid, oracle[d], np.nan)) for d in range(args.draws)]:
        sc = member_scores(truth, ens, 8)
        over = [k for k, r in enumerate(sc["max_ratio"]) if r > 2]
        crps = crps_of(truth, ens)
        rows.append({"name": name, "cases_over_2": over, "max_ratio": sc["max_ratio"], "crps_fair": crps,
                     "median_max_ratio": sc["median_max_ratio"], "truth_max": sc["truth_max"]})
        print(f"{name}: {len(over)} of {len(times)} cases above 2, worst {max(sc['max_ratio']):.2f}, median member "
              f"ratio {np.median(sc['median_max_ratio']):.2f}, CRPS fair {crps:.4f}; "
              f"cases {[f'{times[k]:%m-%d %H:%M}' for k in over]}", flush=True)
    n_over = [len(r["cases_over_2"]) for r in rows[1:]]
    print(f"oracle: {sum(n == 0 for n in n_over)} of {len(n_over)} draws hold the check on every case; "
          f"cases above 2 per draw: mean {np.mean(n_over):.2f}, range {min(n_over)}-{max(n_over)}")
    out = args.study / "validation"
    out.mkdir(exist_ok=True)
    (out / "maxima-oracle.json").write_text(json.dumps({"cases": [str(t) for t in times], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
