"""Shared fixtures: the real sample data folder and small archives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real sample files); tests using it skip with a reason when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real sample data not found at {SHARED} (clone next to shared/)")
    return SHARED


@pytest.fixture
def small_channels() -> list[str]:
    return ["IR_108", "IR_120", "WV_062"]


def random_bt(seed: int, channels: int = 3, shape=(384, 384)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(260.0, 15.0, (channels, *shape)).astype("float32")


def run_qpe(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``qpe`` console entry point in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qpe_core.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)
