"""GPU helpers beside scripts/gpu_study.sh (the study itself is ``qpe study --profile gpu``): time the
ensembles on the GPU, or simulate one archive segment.

Run from the repository root with the project importable (``PYTHONPATH=.``). Sub-commands:
``simulate URL START PERIODS SEED`` (one segment), ``create URL START END``, ``bench OUT.json``.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import torch

DEVICE = __import__("os").environ.get("DEVICE", "cuda")


def create(url: str, start: str, end: str) -> None:
    from qpe_core.archive import Archive
    from qpe_core.config import Settings

    arc = Archive.create(url, "france-3km", list(Settings().channels))
    arc.ensure_range(pd.Timestamp(start), pd.Timestamp(end))


def simulate(url: str, start: str, periods: str, seed: str) -> None:
    from qpe_core.archive import Archive
    from qpe_core.simulate_archive import simulate_to_archive

    print(json.dumps(simulate_to_archive(Archive.open(url, "a"), start, int(periods), int(seed))), flush=True)


def bench(out: str) -> None:
    from qpe_core.training.bench_models import time_ensemble

    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    plans = [(k, False, False) for k in ("ddpm", "cascade-flow", "residual-flow", "flow", "unet")]
    plans += [(k, True, False) for k in ("ddpm", "cascade-flow")] + [("cascade-flow", True, True)]
    for kind, bf16, comp in plans:
        res["runs"].append(time_ensemble(kind, members=16, device=DEVICE, bf16=bf16, compile_=comp))
        print(json.dumps(res["runs"][-1]), flush=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    {"create": create, "simulate": simulate, "bench": bench}[sys.argv[1]](*sys.argv[2:])
