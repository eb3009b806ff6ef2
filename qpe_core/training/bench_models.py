"""Model benchmarks behind ``qpe bench --what models`` (figures printed, never asserted).

Timing uses networks of the default size (untrained weights: speed does not depend on
them) on a full grid; the CRPS-versus-steps study needs a trained residual-flow
checkpoint and an archive with radar, and runs on a central crop to stay cheap.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from qpe_core.grids import get_spec
from qpe_core.models import build_networks, make_objective

DEFAULT_STEPS = {"ddpm": 20, "flow": 8, "residual-flow": 4, "cascade-flow": 4, "unet": 1}


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs (polls /proc)."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @staticmethod
    def _rss() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())


def _count_calls(nets) -> list[int]:
    calls = [0]
    for net in nets.values():
        net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def time_ensemble(kind: str, area: str = "france-3km", members: int = 16, steps: int | None = None,
                  device: str = "cpu", lags: int = 4, channels: int = 7, compile_: bool = False,
                  bf16: bool = False) -> dict:
    """Seconds for one ``members`` ensemble of ``kind`` on the full ``area`` grid."""
    spec = get_spec(area)
    steps = steps or DEFAULT_STEPS[kind]
    obj = make_objective(kind)
    in_ch = lags * (channels + 1)
    nets = build_networks(obj, in_ch).to(device).eval()
    if device == "cpu" or bf16:
        nets.to(memory_format=torch.channels_last)
    flops = next(iter(nets.values())).flops_per_eval(spec.height, spec.width)
    params = sum(p.numel() for p in nets.parameters())
    calls = _count_calls(nets)
    if compile_:
        nets = torch.nn.ModuleDict({k: torch.compile(v) for k, v in nets.items()})
    cond = torch.randn(1, in_ch, spec.height, spec.width, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    ctx = torch.autocast(device, dtype=torch.bfloat16) if bf16 else torch.autocast(device, enabled=False)
    if device.startswith("cuda"):  # warm-up: CUDA context, cuDNN autotuning and compilation not timed
        with ctx:
            obj.sample(nets, cond, members=members, steps=steps, generator=gen)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem, ctx:
        t0 = time.perf_counter()
        obj.sample(nets, cond, members=members, steps=steps, generator=gen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    member_evals = obj.evals_per_member(steps)
    out = {"kind": kind, "members": members, "steps": steps, "evals_per_member": member_evals,
           "network_calls": calls[0], "ensemble_seconds": round(seconds, 2),
           "seconds_per_member_eval": round(seconds / max(members * member_evals, 1), 4),
           "gflops_per_eval": round(flops / 1e9, 2), "parameters": params, "peak_rss_mib": round(mem.peak, 1),
           "grid": f"{area} {spec.height}x{spec.width}", "device": device, "bf16": bf16, "compiled": compile_}
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def crps_vs_steps(checkpoint: str, archive_url: str, start=None, end=None, cases: int = 6, members: int = 8,
                  steps_list=(1, 2, 4, 8, 64), crop: int = 128) -> dict:
    """CRPS (mm/h) of a checkpoint for several step counts, on a central ``crop`` of the grid."""
    from qpe_core.archive import Archive
    from qpe_core.stack import temporal_stack
    from qpe_core.training.checkpoint import load_checkpoint
    from qpe_core.training.dataset import valid_times
    from qpe_core.training.inference import ensemble
    from qpe_core.verification import Scorer

    arc, model = Archive.open(archive_url), load_checkpoint(checkpoint)
    times = valid_times(arc, model.card["lags"], 0.5, start, end)
    times = times[np.linspace(0, len(times) - 1, min(cases, len(times))).astype(int)]
    ny, nx = arc.group["rain"].shape[-2:]
    ys, xs = slice((ny - crop) // 2, (ny + crop) // 2), slice((nx - crop) // 2, (nx + crop) // 2)
    result = {}
    for steps in steps_list:
        scorer, t0 = Scorer(), time.perf_counter()
        for k, t in enumerate(times):
            bt = temporal_stack(arc, t, model.card["lags"], model.card["channels"])["bt"].values[..., ys, xs]
            scorer.update(ensemble(model, bt, members, steps, seed=k), arc.read_truth(t)[ys, xs])
        s = scorer.compute()
        result[str(steps)] = {"evals_per_member": model.objective.evals_per_member(steps), "CRPS": s["CRPS"],
                              "spread_skill": s["spread_skill"], "seconds": round(time.perf_counter() - t0, 1)}
    ref = result[str(max(steps_list))]["CRPS"]
    for v in result.values():
        v["CRPS_vs_most_steps_pct"] = round(100 * (v["CRPS"] / ref - 1), 2)
    return {"checkpoint": checkpoint, "cases": len(times), "members": members, "crop": crop, "steps": result}


def bench_models(kinds=("ddpm", "cascade-flow", "residual-flow"), members: int = 16, device: str | None = None,
                 checkpoint: str | None = None, archive: str | None = None) -> dict:
    """Side-by-side ensemble timings (and the CRPS study when a checkpoint and archive are given)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = {"torch_threads": torch.get_num_threads(),
           "timings": [time_ensemble(k, members=members, device=device) for k in kinds]}
    if device == "cuda":
        out["timings_bf16_compiled"] = [time_ensemble(k, members=members, device=device, bf16=True,
                                                      compile_=True) for k in kinds]
    if checkpoint and archive:
        out["crps_vs_steps"] = crps_vs_steps(checkpoint, archive)
    return out
