"""What kind of rain is a study's held-out heavy rain, and what do the U-Net and the default give there?

    python scripts/heavy_rain_regimes.py data/study/cpu --profile cpu

Runs the simulator of each held-out segment again (as the archive was simulated; the truth is checked
to be its rain) and, for each case, over the pixels where the truth is at least the truth's pooled
q99 (``--threshold``, mm/h, default: that q99): the share of each satellite-frame cloud type
(clear, low/stratiform, convective core, anvil, thin cirrus), the share where convective rain is
more than half the rain, the precipitation efficiency there and over the window (std units; IR
cannot see it), the median IR 10.8 brightness temperature (K), and the median U-Net value, default
member value and truth there (mm/h). A diagnosis to report, never to choose a setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--model", default="cascade-flow")
    ap.add_argument("--threshold", type=float, default=None)
    args = ap.parse_args(argv)
    from qpe_core.config import DEFAULT_CHANNELS
    from qpe_core.evaluation import window_slices
    from qpe_core.grids import get_spec, lonlats
    from qpe_core.simulator import Simulator
    from qpe_core.study_profiles import PROFILES, _window
    from qpe_core.timeutil import slot_range

    prof, ens = PROFILES[args.profile], args.study / "ensembles"
    with np.load(ens / "truth.npz") as z:
        truth, times = z["truth"], pd.DatetimeIndex(list(z["times"]))
    with np.load(ens / "unet.npz") as z:
        unet = z["rain"].reshape(truth.shape)
    with np.load(ens / f"{args.model}.npz") as z:
        members = z["rain"]
    thr = args.threshold if args.threshold is not None else float(np.nanquantile(truth, 0.99))
    spec, (lon, lat) = get_spec(prof.area), lonlats(prof.area)
    ys, xs = window_slices(_window(prof), (spec.height, spec.width))
    ir108 = DEFAULT_CHANNELS.index("IR_108")  # the simulator's channels are the default ones
    naive = times.tz_convert(None) if times.tz is not None else times
    print(f"heavy: truth >= {thr:.2f} mm/h; cloud types: clear, low/stratiform, convective core, anvil, thin cirrus")
    for seg in prof.eval_segments:
        sim = Simulator((spec.height, spec.width), 0.5 * sum(spec.resolution_m) / 1000.0, seg.seed, lon=lon, lat=lat,
                        workers=1)
        wanted = {t: i for i, t in enumerate(naive)}
        for t in slot_range(seg.start, seg.periods, 15):
            if t > naive.max():
                break
            bt, rain, diag = sim.step(t)
            if t not in wanted:
                continue
            i = wanted[t]
            ok = np.isfinite(truth[i])
            if not np.array_equal(rain[ys, xs][ok], truth[i][ok]):
                raise SystemExit(f"{t}: the study's truth is not segment {seg.start}'s simulated rain")
            heavy = ok & (truth[i] >= thr)
            if not heavy.any():
                print(f"{t:%Y-%m-%d %H:%M} no heavy pixel")
                continue
            kinds = np.bincount(diag["cloud_type"][ys, xs][heavy].astype(int), minlength=5) / heavy.sum()
            conv = diag["rain_convective"][ys, xs][heavy] > 0.5 * truth[i][heavy]
            eff = sim.dynamics.efficiency[ys, xs]
            print(f"{t:%Y-%m-%d %H:%M} heavy {heavy.sum():5d} px  types {' '.join(f'{k:.2f}' for k in kinds)}  "
                  f"convective {conv.mean():.2f}  efficiency {eff[heavy].mean():+.2f} (window {eff.mean():+.2f})  "
                  f"IR10.8 {np.median(bt[ir108][ys, xs][heavy]):.0f} K  U-Net {np.median(unet[i][heavy]):.2f}  "
                  f"members {np.median(members[i][:, heavy]):.2f}  truth {np.median(truth[i][heavy]):.1f} mm/h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
