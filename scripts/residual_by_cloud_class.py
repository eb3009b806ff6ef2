"""Is a cascade's drawn residual as wide, and centred where, the true one is, cloud class by cloud class?

    python scripts/residual_by_cloud_class.py data/study/cpu/ck/cascade-flow --validation
    python scripts/residual_by_cloud_class.py data/study/cpu/ck/cascade-flow --start 2024-06-26T15:00Z --end 2024-06-27T01:00Z

On 256 patches (the checkpoint's patch size) of its own validation blocks (``--validation``: the
patches its calibration was fitted on, ``train._val_set``) or of a period (``--start``/``--end``,
UTC; patches drawn as ``qpe recalibrate`` draws them), 4 members are drawn with the default sampler,
calibration and clip. The normalised residual ``u = (y - m) / s(m)`` of the truth and of the members
is compared per bin of the U-Net mean ``m`` (transformed units) and per cloud class read from the
current slot's IR: thin cirrus (IR 10.8 - IR 12.0 > 2 K and IR 10.8 < 250 K), thick cold cloud
(difference <= 2 K and IR 10.8 < 235 K), other. A diagnosis to report, never to choose a setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

BINS = ((-1.0, -0.5), (-0.5, 0.0), (0.0, 0.5), (0.5, 3.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--validation", action="store_true")
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--patches", type=int, default=256)
    args = ap.parse_args(argv)
    from qpe_core.archive import Archive
    from qpe_core.training.checkpoint import load_checkpoint
    from qpe_core.training.dataset import valid_times
    from qpe_core.training.recalibrate import card_patches

    torch.set_grad_enabled(False)
    model = load_checkpoint(args.checkpoint, "cpu")
    obj, card = model.objective, model.card
    if args.validation:
        from validation_draws import fit_patches

        cond, y, mask = fit_patches(model, args.patches)
    else:
        arc = Archive.open(card["config"]["archive"])
        times = valid_times(arc, card["lags"], card["config"].get("min_radar_coverage", 0.5), args.start, args.end)
        cond, y, mask = card_patches(model, arc, times, args.patches, 0)
    ch, n_ch = card["channels"], len(card["channels"])
    mu, sd = (torch.tensor(card["normalizer"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    bt = cond[:, :n_ch] * sd + mu  # the current slot's brightness temperatures (K)
    b108, btd = bt[:, ch.index("IR_108")], bt[:, ch.index("IR_108")] - bt[:, ch.index("IR_120")]
    u_s, m = obj._sample_u(model.nets, cond, 4, None, None, torch.Generator().manual_seed(777), None)
    drawn = obj.clip_residual(obj.calibrate_residual(u_s, m), m).reshape(-1, 4, *y.shape[-2:])
    m1 = m[::4]
    u_t = ((y - m1) / obj.scale(m1))[:, 0]
    ok = mask[:, 0] > 0.5
    cirrus, thick = (btd > 2) & (b108 < 250), (btd <= 2) & (b108 < 235)
    classes = {"thin cirrus": cirrus, "thick cold cloud": thick, "other": ~(cirrus | thick)}
    for lo, hi in BINS:
        in_bin = ok & (m1[:, 0] >= lo) & (m1[:, 0] < hi)
        for name, c in classes.items():
            q = in_bin & c
            if int(q.sum()) < 200:
                continue
            t, s = u_t[q], drawn.permute(1, 0, 2, 3)[:, q]
            print(f"m in [{lo:+.1f}, {hi:+.1f}) {name:16s} pixels {int(q.sum()):6d}  truth u mean {t.mean():+.2f} "
                  f"sd {t.std():.2f} q95 {t.quantile(0.95):+.2f} | members mean {s.mean():+.2f} sd {s.std():.2f} "
                  f"q95 {s.quantile(0.95):+.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
