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


def tiny_checkpoint(root: Path, channels: list[str], kind: str = "residual-flow", lags=(0, -15),
                    slots: int = 3, seed: int = 5) -> str:
    """A real checkpoint (tiny backbone, 1 training step) on ``slots`` simulated france-3km slots
    from 2024-06-01 00:00 written under ``root``; returns its folder."""
    import pandas as pd

    from qpe_core.archive import Archive
    from qpe_core.sources import make_source
    from qpe_core.training.train import TrainConfig, train

    src = make_source("simulated", area="france-3km", seed=seed, channels=channels)
    arc = Archive.create(str(root / "train.zarr"), "france-3km", channels)
    for t in pd.date_range("2024-06-01T00:00", periods=slots, freq="15min"):
        sev, radar = src.simulate_slot(t)
        arc.write_seviri(sev)
        arc.write_radar(radar)
    out = root / kind
    train(TrainConfig(archive=arc.url, kind=kind, out=str(out), max_steps=1, patch=32, batch_size=1, lags=list(lags),
                      val_fraction=0.0, backbone={"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}))
    return str(out)


def run_qpe(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``qpe`` console entry point in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qpe_core.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="session")
def s3_endpoint():
    """Endpoint URL of a local S3-compatible server (moto) with credentials in the environment."""
    from s3server import moto_s3

    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        with moto_s3() as url:
            yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the local S3 server; returns (bucket, storage_options)."""
    import uuid

    import s3fs

    opts = {"endpoint_url": s3_endpoint}
    name = f"qpe-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**opts).mkdir(name)
    return name, opts


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (SQLite) for flow tests, shared by the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def prefect_artifacts(key: str):
    """Artifacts stored on the Prefect server under ``key``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def prefect_events(name: str, where=lambda e: True, resource_id: str | None = None,
                   timeout: float = 30.0) -> list[dict]:
    """Events named ``name`` (and of ``resource_id``) stored on the Prefect server
    (``POST /events/filter``) for which ``where(event)`` holds, waiting up to ``timeout`` seconds for
    one: events reach the server asynchronously, and the session's server holds other tests' too."""
    import time

    from prefect.client.orchestration import get_client

    query: dict = {"event": {"name": [name]}}
    if resource_id:
        query["resource"] = {"id": [resource_id]}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            r = client._client.post("/events/filter", json={"filter": query, "limit": 50})
            r.raise_for_status()
            events = [e for e in r.json()["events"] if where(e)]
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


_DIE_AT_MARKER = """
import os, sys, numpy as np, zarr
sys.path.insert(0, {tests!r})
real = zarr.Array.__setitem__
def dying_setitem(self, key, value):
    # the process dies once every data chunk is written, as the completion marker is set
    if self.name.endswith({marker!r}) and np.isfinite(value).all():
        os._exit(9)
    return real(self, key, value)
zarr.Array.__setitem__ = dying_setitem
"""


def crash_at_marker(marker_suffix: str, write_code: str) -> subprocess.CompletedProcess:
    """Run ``write_code`` in a subprocess that dies (exit 9) when a completion marker whose name
    ends with ``marker_suffix`` is set to a finite value, i.e. after the data, before the marker."""
    script = _DIE_AT_MARKER.format(tests=str(Path(__file__).parent), marker=marker_suffix) + write_code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
