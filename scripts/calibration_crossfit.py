"""Does a cascade's calibration, fitted on some validation days, carry over to other days? Cross-fitted
on the VALIDATION blocks of its own training, never on a study's held-out cases.

    python scripts/calibration_crossfit.py CASCADE_CKPT UNET_CKPT --variants full,gain,none --cases 8

A cascade's clip and spread calibration (``CascadeFlow.calibrate``) are fitted on its training's
validation blocks (two 2-day blocks in the ``cpu`` study). For each validation block ``b``, every
variant's clip and calibration are refitted on patches of the OTHER blocks only (as training draws
them: ``train._val_set``, same seed and number), then ``--cases`` slots spread over block ``b`` are
drawn (same seeds for every variant, so the raw residuals are identical) and scored with the study's
figures (:mod:`qpe_core.report.uncertainty`) against the U-Net ``UNET_CKPT`` on the same slots:

* ``full``: the product's calibration (per-bin shift and gain, ``calibrate_shift`` True);
* ``gain``: per-bin gain about the drawn residual's own mean (``calibrate_shift`` False): the spread
  is fitted on the other days, their bias is not;
* ``none``: the clip refitted, no spread calibration (``calibrate_members`` 0).

Prints each fold's and the pooled figures and writes ``--out`` (JSON). Rain in mm/h.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = {"full": {"calibrate_shift": True}, "gain": {"calibrate_shift": False}, "none": {"calibrate_members": 0}}
KEYS = ("fss_mean", "fss_member", "wet_ratio", "q99_ratio", "cases_over", "spectrum", "spread_skill", "crps_vs_mae")


def _fold_fit(model, arc, fit_times, n: int, seed: int, options: dict):
    """Refit ``model``'s clip and calibration with ``options`` on ``n`` patches of ``fit_times``."""
    from qpe_core.training.recalibrate import card_patches, refit_calibration

    obj = model.objective
    for k, v in options.items():
        setattr(obj, k, v)
    fit = card_patches(model, arc, fit_times, n, seed)
    return refit_calibration(model, fit, "cpu", seed)


def _draw(model, arc, times, ys, xs, members: int, first_seed: int) -> np.ndarray:
    from qpe_core.evaluation import case_ensemble, case_stack

    out = []
    for k, t in enumerate(times):
        bt, valid = case_stack(arc, t, model.card["lags"], model.card["channels"], ys, xs)
        out.append(case_ensemble(model, bt, valid, members, None, seed=first_seed + k, device="cpu", tile=None))
    return np.stack(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cascade", type=Path)
    ap.add_argument("unet", type=Path)
    ap.add_argument("--variants", default="full,gain,none")
    ap.add_argument("--cases", type=int, default=8, help="cases per validation block")
    ap.add_argument("--profile", default="cpu", help="window, members and pixel size of this study profile")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from qpe_core.evaluation import pixel_km_of, scale_px, window_slices
    from qpe_core.grids import get_spec
    from qpe_core.report.uncertainty import case_sums, figures
    from qpe_core.study_profiles import PROFILES, _window
    from qpe_core.training.checkpoint import load_checkpoint
    from validation_draws import _validation_times

    torch.set_grad_enabled(False)
    prof = PROFILES[args.profile]
    model, unet = load_checkpoint(args.cascade, "cpu"), load_checkpoint(args.unet, "cpu")
    cfg = model.card["config"]
    arc, val_t = _validation_times(cfg)
    spec = get_spec(arc.area)
    ys, xs = window_slices(_window(prof), (spec.height, spec.width))
    px = pixel_km_of(prof.area)
    blocks = val_t.floor(cfg["val_block"])
    names = [v for v in args.variants.split(",") if v]
    saved = {k: getattr(model.objective, k) for k in ("clip_knots", "spread_knots", "calibrate_shift", "calibrate_members")}
    sums = {v: [] for v in names}
    result: dict = {"cascade": str(args.cascade), "unet": str(args.unet), "folds": []}
    for b in sorted(set(blocks)):
        own, other = val_t[blocks == b], val_t[blocks != b]
        cases = own[np.linspace(0, len(own) - 1, min(args.cases, len(own))).astype(int)]
        truth = np.stack([arc.read_truth(t)[ys, xs] for t in cases]).astype("float32")
        u = _draw(unet, arc, cases, ys, xs, 1, 0)[:, 0]
        fold = {"block": str(b), "fit_slots": len(other), "cases": [str(t) for t in cases], "variants": {}}
        for v in names:
            t0 = time.perf_counter()
            for k, val in saved.items():
                setattr(model.objective, k, val)
            summary = _fold_fit(model, arc, other, cfg.get("fit_patches", 256), cfg["seed"], VARIANTS[v])
            ens = _draw(model, arc, cases, ys, xs, prof.members, 0)
            s = case_sums(truth, ens, u, scale_px(24.0, px), px)
            sums[v].append(s)
            f = figures(s, np.ones(len(cases)))
            fold["variants"][v] = {"figures": f, "calibration": summary, "seconds": time.perf_counter() - t0}
            print(f"block {b.date()} {v:5s} " + " ".join(f"{k} {f[k]:.3f}" for k in KEYS)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        result["folds"].append(fold)
    result["pooled"] = {}
    for v in names:
        s = {k: np.concatenate([x[k] for x in sums[v]]) for k in sums[v][0]}
        f = figures(s, np.ones(len(s["over"])))
        result["pooled"][v] = f
        print(f"pooled {v:5s} " + " ".join(f"{k} {f[k]:.3f}" for k in KEYS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
