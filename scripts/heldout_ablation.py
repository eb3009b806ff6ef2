"""Which part of the cascade's post-training calibration makes a held-out day what it is? A diagnosis on a
study's held-out cases, to REPORT, never to choose a setting (choices are made on validation:
``validation_draws.py``, ``calibration_crossfit.py``).

    python scripts/heldout_ablation.py data/study/cpu --profile cpu

Redraws the study's default (``STUDY/ck/cascade-flow``) on its held-out cases with the study's seeds
(the first variant reproduces ``STUDY/ensembles/cascade-flow.npz``, checked) as trained, without its
clip, without its spread calibration, and without both, and prints each held-out day's figures
(:mod:`qpe_core.report.uncertainty`) against the study's U-Net ensembles. Rain in mm/h.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

VARIANTS = {"as trained": {}, "no clip": {"clip_knots": None}, "no spread calibration": {"spread_knots": None},
            "neither": {"clip_knots": None, "spread_knots": None}}
KEYS = ("fss_mean", "fss_member", "wet_ratio", "q99_ratio", "cases_over", "spectrum", "spread_skill", "crps_vs_mae")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--model", default="cascade-flow")
    args = ap.parse_args(argv)
    from qpe_core.archive import Archive
    from qpe_core.evaluation import case_ensemble, case_stack, pixel_km_of, scale_px, window_slices
    from qpe_core.grids import get_spec
    from qpe_core.report.uncertainty import case_sums, figures
    from qpe_core.study_profiles import PROFILES, _window
    from qpe_core.training.checkpoint import load_checkpoint

    torch.set_grad_enabled(False)
    prof, ens_dir = PROFILES[args.profile], args.study / "ensembles"
    with np.load(ens_dir / "truth.npz") as z:
        truth, times = z["truth"].astype("float32"), pd.DatetimeIndex(list(z["times"]))
    with np.load(ens_dir / "unet.npz") as z:
        unet = z["rain"].astype("float32").reshape(truth.shape)
    with np.load(ens_dir / f"{args.model}.npz") as z:
        stored = z["rain"]
    arc = Archive.open(json.loads((args.study / "study.json").read_text())["archive"])
    spec = get_spec(arc.area)
    ys, xs = window_slices(_window(prof), (spec.height, spec.width))
    px = pixel_km_of(prof.area)
    model = load_checkpoint(args.study / "ck" / args.model, "cpu")
    obj = model.objective
    saved = {k: getattr(obj, k) for k in ("clip_knots", "spread_knots")}
    days = times.strftime("%Y-%m-%d")
    for name, over in VARIANTS.items():
        for k, v in {**saved, **over}.items():
            setattr(obj, k, v)
        t0 = time.perf_counter()
        ens = []
        for i, t in enumerate(times):
            bt, valid = case_stack(arc, t, model.card["lags"], model.card["channels"], ys, xs)
            ens.append(case_ensemble(model, bt, valid, prof.members, None, seed=i, device="cpu", tile=None))
        ens = np.stack(ens)
        if not over and not np.allclose(np.nan_to_num(ens), np.nan_to_num(stored), atol=1e-3):
            raise SystemExit(f"the redraw does not reproduce {ens_dir / (args.model + '.npz')}")
        sums = case_sums(truth, ens, unet, scale_px(24.0, px), px)
        for day in sorted(set(days)):
            f = figures(sums, (days == day).astype("float64"))
            print(f"{name:22s} {day} " + " ".join(f"{k} {f[k]:.3f}" for k in KEYS)
                  + f" max {np.nanmax(ens[days == day]):.1f} mm/h ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
