"""Where is an ensemble drier than the truth? Wet probability (>= 0.1 mm/h) per bin of the U-Net's value.

    python scripts/wet_deficit_by_bin.py data/study/confirm [--model cascade-flow]

Reads a study's stored ensembles (``ensembles/truth.npz``, ``unet.npz``, ``MODEL.npz``) and prints, per
bin of the U-Net's rain rate (mm/h), the share of valid pixels in the bin, how often the truth, the
U-Net and the members are wet there, and the bin's part of the members' wet-fraction deficit (as a
fraction of all pixels; the parts add up to truth wet fraction minus members'). Rain in mm/h.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

WET, EDGES = 0.1, (0.0, 0.01, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, np.inf)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--model", default="cascade-flow")
    args = ap.parse_args(argv)
    ens = args.study / "ensembles"
    with np.load(ens / "truth.npz") as z:
        truth = z["truth"]
    with np.load(ens / "unet.npz") as z:
        unet = z["rain"].reshape(truth.shape)
    with np.load(ens / f"{args.model}.npz") as z:
        members = z["rain"]
    ok = np.isfinite(truth)
    n = ok.sum()
    print(f"{'U-Net mm/h':>14s} {'share':>6s} {'truth wet':>9s} {'U-Net wet':>9s} {'members wet':>11s} {'deficit':>8s}")
    for lo, hi in zip(EDGES[:-1], EDGES[1:]):
        sel = ok & (unet >= lo) & (unet < hi)
        if not sel.any():
            continue
        t, u = (truth[sel] >= WET).mean(), (unet[sel] >= WET).mean()
        m = (members.transpose(1, 0, 2, 3)[:, sel] >= WET).mean()
        print(f"{lo:6.2f}-{hi:<7.2f} {sel.sum() / n:6.3f} {t:9.3f} {u:9.3f} {m:11.3f} {(t - m) * sel.sum() / n:8.4f}")
    all_m = (members.transpose(1, 0, 2, 3)[:, ok] >= WET).mean()
    print(f"all: truth {(truth[ok] >= WET).mean():.4f}, U-Net {(unet[ok] >= WET).mean():.4f}, members {all_m:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
