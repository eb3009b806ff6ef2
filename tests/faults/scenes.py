"""Deterministic inputs for the fault tests, importable by the test process and by the
subprocesses it starts (``sys.path`` holds ``tests/``): ensembles, simulated slots, and the
subprocess runner with an optional file-size limit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
SIM_CHANNELS = ["WV_062", "IR_108", "IR_120"]


def ensemble(time: str = "2024-06-01T12:00", members: int = 4, area: str = "france-3km", seed: int = 0):
    """A synthetic ensemble ``rain(member, y, x)`` (mm/h) with the attributes products need."""
    from qpe_core.grids import attach_grid, get_spec

    spec = get_spec(area)
    rng = np.random.default_rng(seed)
    rain = rng.gamma(0.4, 3.0, (members, spec.height, spec.width)).astype("float32")
    rain[:, :8, :] = np.nan  # a strip without data, as outside the disk
    ds = xr.Dataset({"rain": (("member", "y", "x"), rain, {"units": "mm h-1"})},
                    coords={"member": np.arange(members), "time": pd.Timestamp(time).to_datetime64()},
                    attrs={"model_kind": "test", "checkpoint": "none", "members": members, "seed": seed,
                           "steps": 0, "input_slots": [pd.Timestamp(time).strftime("%Y-%m-%dT%H:%MZ")],
                           "missing_inputs": []})
    return attach_grid(ds, area)


def sim_slot(time: str = "2024-06-01T00:00", seed: int = 3, area: str = "france-3km",
             channels: list[str] = SIM_CHANNELS):
    """``(seviri, radar)`` slot of synthetic noise fields (fast; the simulator is not the point):
    brightness temperatures (K) of ``channels`` with a NaN strip, rain rates (mm/h)."""
    from qpe_core.grids import get_spec
    from qpe_core.slots import radar_slot, seviri_slot

    spec = get_spec(area)
    rng = np.random.default_rng([seed, int(pd.Timestamp(time).value // 60_000_000_000)])
    bt = rng.normal(260.0, 15.0, (len(channels), spec.height, spec.width)).astype("float32")
    bt[:, :5, :] = np.nan
    rain = rng.gamma(0.3, 2.0, (spec.height, spec.width)).astype("float32")
    return (seviri_slot(bt, list(channels), time, area, source_files=["synthetic"]),
            radar_slot(rain, time, area, source_file="synthetic"))


_PRELUDE = """
import json, os, resource, signal, sys, traceback
sys.path.insert(0, {tests!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing

def limit_file_size(nbytes):
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

def report(**kw):
    print("RESULT " + json.dumps(kw, default=str), flush=True)

def attempt(fn):
    try:
        out = fn()
        report(ok=True, value=out)
    except Exception as exc:
        report(ok=False, type=type(exc).__name__, message=str(exc), mro=[c.__name__ for c in type(exc).__mro__])
"""


def run_child(code: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run ``code`` (after a prelude defining ``limit_file_size(n)``, ``attempt(fn)`` and
    ``report(**kw)``) in a fresh Python process in the repository root."""
    script = _PRELUDE.format(tests=str(TESTS)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **popen)


def child_result(proc: subprocess.CompletedProcess) -> dict:
    """The JSON the child reported with ``report``/``attempt`` (the last one)."""
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child reported nothing (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def start_child(code: str) -> subprocess.Popen:
    """Start ``code`` (same prelude) in a background process (stdout piped, line-buffered)."""
    script = _PRELUDE.format(tests=str(TESTS)) + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-u", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
