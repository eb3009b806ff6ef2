"""Fixtures of the fault-injection suite and its summary.

Every test records what it injected and how the chain coped through the ``record`` fixture
(one :class:`FaultRecord` per fault kind): ``injected`` faults, ``recovered`` (the run
completed despite them), ``flagged`` (the run failed with a message naming the slot or file
and the cause), ``corrupt`` (outputs a reader can see that are not complete: must be 0; see
``audit.py``).  At the end of the session the ledger is written to
``<pytest basetemp>/fault-summary.json``, printed in the terminal summary, and asserted:
no corrupt output, and every injected fault recovered or flagged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HRIT_DIR = SHARED / "seviri" / "hrit-20100119"
OPERA_DIR = SHARED / "radar" / "opera-odyssey-20180824"
KEY, SECRET = "qpe-fault-consumer-key-4b1e", "qpe-fault-consumer-secret-c03a"
SLOT = pd.Timestamp("2010-01-19T12:00")
SLOT_LABEL = "2010-01-19T12:00Z"
HRIT_CHANNELS = ["IR_108", "IR_134"]
_LEDGER = pytest.StashKey[list]()
_SUMMARY_PATH = pytest.StashKey[Path]()


@dataclasses.dataclass
class FaultRecord:
    """What one test injected and what came of it."""

    test: str
    fault: str
    kind: str = "fault"  # fault | bad-input
    injected: int = 0
    recovered: int = 0
    flagged: int = 0
    corrupt: int = 0
    leftovers: int = 0  # temporary files a crash left, invisible to readers
    message: str = ""

    def flag(self, message: str, n: int = 1) -> None:
        self.flagged += n
        self.message = str(message)[:400]
        if self.kind == "bad-input":  # each bad input is one injected fault
            self.injected += n

    def recover(self, n: int = 1, note: str = "") -> None:
        self.recovered += n
        if self.kind == "bad-input":
            self.injected += n
        if note:
            self.message = note[:400]


@pytest.fixture(scope="session")
def ledger(request, tmp_path_factory):
    records: list[FaultRecord] = []
    request.config.stash[_LEDGER] = records
    path = tmp_path_factory.getbasetemp() / "fault-summary.json"
    request.config.stash[_SUMMARY_PATH] = path
    yield records
    path.write_text(json.dumps({"totals": totals(records), "records": [dataclasses.asdict(r) for r in records]},
                               indent=1))
    corrupt = [r for r in records if r.corrupt]
    unresolved = [r for r in records if r.recovered + r.flagged < max(r.injected, 1)]
    assert not corrupt, f"corrupt outputs after faults: {[(r.test, r.fault, r.corrupt) for r in corrupt]}"
    assert not unresolved, f"faults neither recovered nor flagged: {[(r.test, r.fault) for r in unresolved]}"


@pytest.fixture
def record(ledger, request):
    """``record(fault, kind='fault') -> FaultRecord`` bound to the current test."""
    def make(fault: str, kind: str = "fault") -> FaultRecord:
        rec = FaultRecord(request.node.nodeid.split("::", 1)[-1], fault, kind)
        ledger.append(rec)
        return rec
    return make


def totals(records: list[FaultRecord]) -> dict:
    out = {"records": len(records)}
    for field in ("injected", "recovered", "flagged", "corrupt", "leftovers"):
        out[field] = sum(getattr(r, field) for r in records)
    out["bad_inputs"] = sum(r.kind == "bad-input" for r in records)
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = config.stash.get(_LEDGER, None)
    if not records:
        return
    tr = terminalreporter
    tr.section("fault-injection summary")
    for r in records:
        tr.write_line(f"{r.kind:9s} {r.fault[:58]:58s} inj {r.injected:3d} rec {r.recovered:3d} "
                      f"flag {r.flagged:3d} corrupt {r.corrupt}")
    t = totals(records)
    tr.write_line(f"TOTAL: {t['records']} records ({t['bad_inputs']} bad inputs), {t['injected']} faults injected, "
                  f"{t['recovered']} recovered, {t['flagged']} flagged, {t['corrupt']} corrupt outputs, "
                  f"{t['leftovers']} invisible leftovers")
    path = config.stash.get(_SUMMARY_PATH, None)
    if path is not None:
        tr.write_line(f"ledger: {path}")


# ----------------------------------------------------------------------------- shared data

@pytest.fixture(scope="session")
def hrit_files() -> list[Path]:
    if not HRIT_DIR.is_dir():
        pytest.skip(f"real HRIT sample not found at {HRIT_DIR} (clone next to shared/)")
    return sorted(HRIT_DIR.iterdir())


@pytest.fixture(scope="session")
def granule_zip(hrit_files) -> bytes:
    from datastore_server import zip_files

    return zip_files(hrit_files)


@pytest.fixture(scope="session")
def opera_files() -> list[Path]:
    if not OPERA_DIR.is_dir():
        pytest.skip(f"real OPERA sample not found at {OPERA_DIR} (clone next to shared/)")
    return sorted(OPERA_DIR.glob("*.hdf"))


@pytest.fixture(scope="session")
def lut_dir(tmp_path_factory) -> Path:
    """One resampling look-up-table cache for the session (read-only use after the first)."""
    return tmp_path_factory.mktemp("lut")


@pytest.fixture(scope="session")
def hrit_checkpoint(tmp_path_factory) -> str:
    """A tiny residual-flow checkpoint on france-3km for the HRIT channels with lag 0 only
    (trained one step on synthetic slots): enough to run whole nowcast cycles."""
    from faults.scenes import sim_slot
    from qpe_core.archive import Archive
    from qpe_core.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("ck")
    arc = Archive.create(str(root / "train.zarr"), "france-3km", HRIT_CHANNELS)
    for t in ("2024-06-01T00:00", "2024-06-01T00:15"):
        sev, radar = sim_slot(t, 5, channels=HRIT_CHANNELS)
        arc.write_seviri(sev)
        arc.write_radar(radar)
    train(TrainConfig(archive=arc.url, kind="residual-flow", out=str(root / "rf"), max_steps=1, patch=32,
                      batch_size=1, lags=[0], val_fraction=0.0,
                      backbone={"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}))
    return str(root / "rf")


# ----------------------------------------------------------------------------- the Data Store

def zero_deg_product(slot: pd.Timestamp, data: bytes, pid: str | None = None, **kw):
    from datastore_server import scan
    from qpe_core.sources.datastore import ZERO_DEG

    return scan(ZERO_DEG, slot.to_pydatetime(), data, pid, 12, **kw)


@pytest.fixture
def datastore(granule_zip):
    """A local Data Store serving the real 2010-01-19 12:00 granule (0-degree collection)."""
    from datastore_server import DataStoreServer

    with DataStoreServer(KEY, SECRET) as srv:
        srv.add(zero_deg_product(SLOT, granule_zip))
        yield srv


@pytest.fixture
def make_ds_source(datastore, tmp_path):
    """``make(**overrides)``: a DataStoreSource on the local server with fast retries."""
    from qpe_core.sources.datastore import DataStoreSource

    def make(**kw):
        settings = dict(consumer_key=KEY, consumer_secret=SECRET, api_url=datastore.url, slot_minutes=15,
                        cache=tmp_path / "cache", timeout=2.0, max_attempts=3, backoff_s=0.05, backoff_max_s=0.2)
        return DataStoreSource(**{**settings, **kw})
    return make
