"""``qpe bench --what train``: training throughput with the slots held in memory and read from the store.

The ``cpu`` study profile's U-Net configuration (backbone, patch, batch, 2 lags, 2 loader threads),
``steps`` optimiser steps each way on the same archive and seed; figures are the samples per
second from the first step to the last (training's own rate) and the memory the slots took. A profile's
archive (``--archive``) gives the study's own figures; without one, one simulated day
(96 slots, a minute or so on 2 cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def bench_train(archive: str | None = None, steps: int = 100) -> dict:
    """Samples/s and held memory of ``steps`` U-Net steps from memory and from the store (CPU)."""
    from qpe_core.archive import Archive
    from qpe_core.config import DEFAULT_CHANNELS
    from qpe_core.simulate_archive import simulate_to_archive
    from qpe_core.study_profiles import PROFILES
    from qpe_core.training.train import TrainConfig, train

    prof = PROFILES["cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        if archive is None:
            archive = str(Path(tmp) / "sim.zarr")
            simulate_to_archive(Archive.create(archive, prof.area, list(DEFAULT_CHANNELS)), "2024-06-01T00:00", 96, seed=11)
        result: dict = {"archive": archive, "steps": steps, "batch_size": prof.batch_size, "patch": prof.patch}
        for name, preload in (("memory", True), ("store", False)):
            out = Path(tmp) / name
            last: dict = {}
            t0 = time.perf_counter()
            card = train(TrainConfig(archive=archive, kind="unet", out=str(out), max_steps=steps, patch=prof.patch,
                                     batch_size=prof.batch_size, lags=prof.lags, lr=prof.lr, backbone=prof.backbone,
                                     val_every=steps, save_every=steps, loader_threads=2, preload=preload),
                         progress=lambda step, rec: last.update(rec))
            result[name] = {"samples_per_s": round(last["samples_per_s"], 1), "seconds": round(time.perf_counter() - t0, 1),
                            "held_in_memory_mb": card["training_period"]["held_in_memory_mb"]}
        result["speedup"] = round(result["memory"]["samples_per_s"] / result["store"]["samples_per_s"], 2)
    return result
