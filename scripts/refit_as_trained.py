"""A cascade checkpoint's calibration refitted as its training would end with today's code.

    python scripts/refit_as_trained.py SRC OUT [--check]

A cascade's clip and spread calibration are fitted after training, on the held-out validation
patches of its own training (``TrainConfig.fit_patches``, the block split of its seed) with its final
weights. A checkpoint trained before a calibration default changed (e.g. the dry-bin calibration of
2026-12-05) keeps the old knots; retraining it reproduces its weights bit for bit and refits them.
This refits them without retraining, on the same patches with the same seed (the objective options
the card lacks take today's defaults), and writes ``OUT`` (weights copied, card written last).
``--check`` refits SRC in memory and says whether the knots it stores come back (a checkpoint
trained with today's code must). Runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from validation_draws import fit_patches

from qpe_core.atomic import write_atomically


def refit(src: Path):
    """The checkpoint at ``src`` with its clip and calibration refitted as training ends."""
    from qpe_core.training.checkpoint import load_checkpoint
    from qpe_core.training.recalibrate import refit_calibration

    torch.set_grad_enabled(False)
    model = load_checkpoint(src, "cpu")
    if model.card["kind"] != "cascade-flow":
        raise SystemExit(f"{src}: a {model.card['kind']} checkpoint has no calibration to refit")
    cfg = model.card["config"]
    summary = refit_calibration(model, fit_patches(model, cfg.get("fit_patches", 256)), "cpu", cfg["seed"])
    return model, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--check", action="store_true", help="only say whether SRC's stored knots come back")
    args = ap.parse_args(argv)
    stored = json.loads((args.src / "card.json").read_text())["objective"]
    model, summary = refit(args.src)
    new = model.objective.config()
    same = all(stored.get(k) == new[k] for k in ("clip_knots", "spread_knots"))
    print(f"{args.src}: refitted knots {'equal' if same else 'differ from'} the stored ones; {summary}")
    if args.check:
        return 0 if same else 1
    if args.out is None or args.out.resolve() == args.src.resolve() or (args.out / "card.json").exists():
        raise SystemExit("give a new OUT directory (never SRC, never an existing checkpoint)")
    args.out.mkdir(parents=True)
    for f in args.src.iterdir():
        if f.is_file() and f.name != "card.json":
            shutil.copyfile(f, args.out / f.name)
    card = {**model.card, "objective": new, "refitted_as_trained": {"from": str(args.src), "summary": summary}}
    write_atomically(args.out / "card.json", lambda p: p.write_text(json.dumps(card, indent=2, default=str)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
