"""GPU study behind scripts/gpu_study.sh: simulate an archive in parallel segments, time the
ensembles on the GPU, and draw evaluation ensembles from trained checkpoints.

Run from the repository root with the project importable (``PYTHONPATH=.``). Sub-commands:
``simulate URL START PERIODS SEED`` (one segment), ``create URL START END``, ``bench OUT.json``,
``ensembles OUT.npz ARCHIVE START END CASES MEMBERS CKPT...`` (rain in mm/h, float16).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
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
    plans = [(k, False, False) for k in ("ddpm", "residual-flow", "flow", "unet")]
    plans += [(k, True, False) for k in ("ddpm", "residual-flow")] + [("residual-flow", True, True)]
    for kind, bf16, comp in plans:
        res["runs"].append(time_ensemble(kind, members=16, device=DEVICE, bf16=bf16, compile_=comp))
        print(json.dumps(res["runs"][-1]), flush=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


def _cases(arc, lags, start: str, end: str, cases: str):
    """Up to ``cases`` valid times spread over [start, end] and the arrays dict with their radar truth."""
    from qpe_core.training.dataset import valid_times

    times = valid_times(arc, lags, 0.5, start, end)
    times = times[np.linspace(0, len(times) - 1, min(int(cases), len(times))).astype(int)]
    return times, {"times": np.array([str(t) for t in times]),
                   "truth": np.stack([arc.read_rain(t) for t in times]).astype("float16")}


def ensembles(out: str, archive: str, start: str, end: str, cases: str, members: str, *ckpts: str) -> None:
    from qpe_core.archive import Archive
    from qpe_core.stack import temporal_stack
    from qpe_core.training.checkpoint import load_checkpoint
    from qpe_core.training.inference import ensemble

    arc = Archive.open(archive)
    times, arrays = _cases(arc, [0, -15, -30, -45], start, end, cases)  # the same cases for every model
    for ck in ckpts:
        model = load_checkpoint(ck, device=DEVICE)
        n = 1 if model.card["kind"] == "unet" else int(members)
        t0, fields = time.perf_counter(), []
        for k, t in enumerate(times):
            st = temporal_stack(arc, t, model.card["lags"], model.card["channels"])
            fields.append(ensemble(model, st["bt"].values, n, None, seed=k, device=DEVICE))
        name = ck.rstrip("/").split("/")[-1]
        arrays[name] = np.stack(fields).astype("float16")
        print(f"{name}: {len(times)} cases x {n} members in {time.perf_counter() - t0:.1f} s", flush=True)
    np.savez_compressed(out, **arrays)


def steps(out: str, archive: str, start: str, end: str, cases: str, members: str, ckpt: str) -> None:
    """Ensembles of one checkpoint for each sampler step count in $STEPS_LIST (CRPS vs steps)."""
    import os

    from qpe_core.archive import Archive
    from qpe_core.stack import temporal_stack
    from qpe_core.training.checkpoint import load_checkpoint
    from qpe_core.training.inference import ensemble

    arc, model = Archive.open(archive), load_checkpoint(ckpt, device=DEVICE)
    times, arrays = _cases(arc, model.card["lags"], start, end, cases)
    stacks = [temporal_stack(arc, t, model.card["lags"], model.card["channels"])["bt"].values for t in times]
    for n in os.environ.get("STEPS_LIST", "1 2 4 8 64").split():
        arrays[f"steps{n}"] = np.stack([ensemble(model, st, int(members), int(n), seed=k, device=DEVICE)
                                        for k, st in enumerate(stacks)]).astype("float16")
        print(f"steps {n}: done", flush=True)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    {"create": create, "simulate": simulate, "bench": bench, "ensembles": ensembles, "steps": steps}[sys.argv[1]](*sys.argv[2:])
