"""Data Store faults through the real eumdac code path (tests/datastore_server.py): 5xx bursts,
429 with and without Retry-After, token expiry in the middle of a backfill, stalled and truncated
downloads, MD5 mismatch, corrupt cached granules, and whole nowcast cycles on a failing server.

Every case ends with the cache audit (no granule with a sidecar is invalid) and, when it fails,
a re-run on a healthy server that completes the slot."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datastore_server import Fault
from faults.audit import archive_problems, cache_problems, cube_problems, file_problems, snapshot
from faults.conftest import HRIT_CHANNELS, SLOT, SLOT_LABEL, zero_deg_product
from qpe_core.sources import DOWNLOADS, DownloadError, DownloadTimeout

STEP = pd.Timedelta(minutes=15)


def _pid(server) -> str:
    return next(iter(server.products.values())).product_id


def _faulted(server, endpoint: str, statuses=(429, 500, 502, 503)) -> int:
    return sum(r.status in statuses for r in server.requests(endpoint))


# ----------------------------------------------------------------------------- 5xx and 429

@pytest.mark.parametrize("endpoint,statuses", [
    ("download", (500, 502, 503, 503)),
    ("search", (502, 503, 500)),
    ("token", (503, 500)),
])
def test_5xx_burst_is_recovered(datastore, make_ds_source, record, tmp_path, endpoint, statuses):
    rec = record(f"Data Store {'/'.join(map(str, statuses))} burst on {endpoint}")
    datastore.inject(endpoint, *(Fault(status=s) for s in statuses))
    paths = make_ds_source().fetch(SLOT)
    rec.injected = _faulted(datastore, endpoint)
    assert rec.injected == len(statuses) and len(paths) == 1
    rec.recover(rec.injected)
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


def test_persistent_503_is_flagged_then_a_rerun_completes(datastore, make_ds_source, record, tmp_path):
    rec = record("Data Store 503 on every download (outage)")
    datastore.always("download", Fault(status=503))
    with pytest.raises(DownloadError) as err:
        make_ds_source(max_attempts=2).fetch(SLOT)
    msg = str(err.value)
    assert SLOT_LABEL in msg and _pid(datastore) in msg and "HTTP 503" in msg and "gave up after 2" in msg
    rec.injected = _faulted(datastore, "download")
    rec.flag(msg, rec.injected)
    assert not list((tmp_path / "cache").rglob("*.zip")) and not list((tmp_path / "cache").rglob("_slot.json"))
    datastore.always("download", None)
    assert len(make_ds_source().fetch(SLOT)) == 1
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


def test_429_with_retry_after_is_honoured(datastore, make_ds_source, record):
    rec = record("429 with Retry-After: 1 (x5, beyond eumdac's own retries)")
    datastore.inject("download", *[Fault(status=429, retry_after="1")] * 5)
    assert make_ds_source(max_attempts=3).fetch(SLOT)
    reqs = datastore.requests("download")
    assert [r.status for r in reqs] == [429] * 5 + [200]
    assert np.diff([r.t for r in reqs]).min() >= 0.95  # every retry waited as asked
    rec.injected = 5
    rec.recover(5)


def test_429_without_retry_after_backs_off(datastore, make_ds_source, record):
    rec = record("429 without Retry-After (x3)")
    datastore.inject("download", *[Fault(status=429)] * 3)
    assert make_ds_source(backoff_s=0.2, max_attempts=4).fetch(SLOT)
    reqs = datastore.requests("download")
    assert [r.status for r in reqs] == [429] * 3 + [200]
    assert np.diff([r.t for r in reqs]).min() >= 0.1  # jittered back-off: at least half of 0.2 s
    rec.injected = 3
    rec.recover(3)


def test_429_asking_too_long_is_flagged(datastore, make_ds_source, record, tmp_path):
    rec = record("429 with Retry-After: 3600 (longer than allowed)")
    datastore.always("download", Fault(status=429, retry_after="3600"))
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="retry after 3600 s") as err:
        make_ds_source(max_retry_after_s=60).fetch(SLOT)
    assert time.monotonic() - t0 < 10 and SLOT_LABEL in str(err.value)
    assert DOWNLOADS.active == 0  # no request left sleeping an hour inside eumdac with a download slot
    rec.injected = _faulted(datastore, "download")
    rec.flag(str(err.value), rec.injected)
    datastore.always("download", None)
    assert make_ds_source().fetch(SLOT)


# ----------------------------------------------------------------------------- tokens

def test_token_expiry_in_the_middle_of_a_backfill(datastore, make_ds_source, granule_zip, record, tmp_path):
    """Six slots fetched two at a time (as the backfill flow does); the server forgets every
    token after the 2nd and the 4th completed download, and the token endpoint fails once."""
    rec = record("token expiry x2 during a 6-slot backfill (+ token 503)")
    slots = [SLOT + k * STEP for k in range(6)]
    for s in slots[1:]:
        datastore.add(zero_deg_product(s, granule_zip))
    datastore.always("download", Fault(slow_s=0.2))
    src = make_ds_source(timeout=5.0)
    done, lock = [0], threading.Lock()

    def fetch(slot):
        paths = src.fetch(slot)
        with lock:
            done[0] += 1
            if done[0] in (2, 4):
                datastore.expire_tokens()
                if done[0] == 4:
                    datastore.inject("token", Fault(status=503))
        return paths

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(fetch, slots))
    assert all(len(r) == 1 for r in results)
    served = [r.path for r in datastore.requests("download") if r.status == 200]
    assert len(served) == 6 == len(set(served))  # no slot downloaded twice (a download refused 401 is retried)
    rejected = sum(r.status == 401 for r in datastore.log)
    assert rejected >= 1 and len(datastore.tokens_issued) >= 2
    rec.injected = rejected + 1
    rec.recover(rec.injected, f"{len(datastore.tokens_issued)} tokens issued, {rejected} requests refused")
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


@pytest.mark.slow
def test_many_callers_of_one_slot_race_on_the_manifest(datastore, make_ds_source, record, tmp_path):
    """Sixteen threads fetch one slot, eight rounds (the slot manifest removed in between): every
    call gets the granule.  All threads used to write the manifest through one temporary name,
    and a rename could find it gone (FileNotFoundError)."""
    rec = record("16 concurrent fetches of one slot x8 rounds (manifest write race)")
    src = make_ds_source(timeout=5.0)
    barrier = threading.Barrier(16)

    def fetch(_):
        barrier.wait()
        return src.fetch(SLOT)

    for _ in range(8):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(fetch, range(16)))
        assert all(r == results[0] and len(r) == 1 for r in results)
        (results[0][0].parent / "_slot.json").unlink()
    assert len(datastore.requests("download")) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    rec.injected = 8
    rec.recover(8)
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


# ----------------------------------------------------------------------------- broken transfers

@pytest.mark.parametrize("where", ["headers", "body"])
def test_stall_is_timed_out_then_recovered(datastore, make_ds_source, record, tmp_path, where):
    rec = record(f"download stalls ({where})")
    datastore.inject("download", Fault(stall_s=3.0, where=where))
    paths = make_ds_source(timeout=0.5).fetch(SLOT)
    reqs = datastore.requests("download")
    assert len(paths) == 1 and len(reqs) == 2
    if where == "body":  # resumed where the stall left off
        assert reqs[1].range and reqs[1].status == 206
    rec.injected = 1
    rec.recover(1)
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


def test_persistent_stall_is_flagged(datastore, make_ds_source, record, tmp_path):
    rec = record("download stalls on every try")
    datastore.always("download", Fault(stall_s=2.0, where="body"))
    with pytest.raises(DownloadTimeout) as err:
        make_ds_source(timeout=0.4, max_attempts=2).fetch(SLOT)
    msg = str(err.value)
    assert SLOT_LABEL in msg and _pid(datastore) in msg
    rec.injected = 2
    rec.flag(msg, 2)
    final = list((tmp_path / "cache").rglob("*.zip"))
    assert final == []  # only the .part, which a re-run resumes
    datastore.always("download", None)
    assert make_ds_source().fetch(SLOT)
    assert datastore.requests("download")[-1].status == 206
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


def test_truncated_download_resumes_and_persistent_truncation_is_flagged(datastore, make_ds_source, record,
                                                                          tmp_path, granule_zip):
    rec = record("truncated downloads (connection closed early)")
    datastore.inject("download", Fault(truncate=300_000), Fault(truncate=200_000))
    assert make_ds_source().fetch(SLOT)
    reqs = datastore.requests("download")
    assert [r.range for r in reqs] == [None, "bytes=300000-", "bytes=500000-"]

    datastore.always("download", Fault(truncate=100_000))
    with pytest.raises(DownloadError, match="truncated download") as err:
        make_ds_source(cache=tmp_path / "other", max_attempts=2).fetch(SLOT)
    assert SLOT_LABEL in str(err.value)
    rec.injected = 4
    rec.recover(2)
    rec.flag(str(err.value), 2)
    datastore.always("download", None)
    assert make_ds_source(cache=tmp_path / "other").fetch(SLOT)
    rec.corrupt = len(cache_problems(tmp_path / "cache")) + len(cache_problems(tmp_path / "other"))


def test_md5_mismatch_is_flagged_and_nothing_is_cached(datastore, make_ds_source, record, tmp_path, granule_zip):
    rec = record("MD5 announced by the Data Store differs")
    pid = _pid(datastore)
    datastore.add(zero_deg_product(SLOT, granule_zip, pid, md5="f" * 32))
    with pytest.raises(DownloadError, match="MD5") as err:
        make_ds_source().fetch(SLOT)
    assert SLOT_LABEL in str(err.value) and pid in str(err.value)
    assert not [p for p in (tmp_path / "cache").rglob("*.zip*") if not p.name.endswith(".lock")]
    rec.injected = 2  # the first download and the one clean retry
    rec.flag(str(err.value), 2)
    datastore.add(zero_deg_product(SLOT, granule_zip, pid))  # the Data Store fixes its metadata
    assert make_ds_source().fetch(SLOT)
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "zero-length", "garbage-sidecar", "no-sidecar",
                                    "manifest-names-missing-product"])
def test_corrupt_cached_granule_is_fetched_again(datastore, make_ds_source, record, tmp_path, granule_zip, damage):
    rec = record(f"corrupt cached granule ({damage})")
    src = make_ds_source()
    (path,) = src.fetch(SLOT)
    sidecar, manifest = Path(f"{path}.json"), path.parent / "_slot.json"
    if damage == "flip-bytes":
        with open(path, "r+b") as fh:
            fh.seek(len(granule_zip) // 3)
            fh.write(b"\x00" * 4096)
    elif damage == "truncate":
        path.write_bytes(granule_zip[: len(granule_zip) // 2])
    elif damage == "zero-length":
        path.write_bytes(b"")
    elif damage == "garbage-sidecar":
        sidecar.write_text("{not json")
    elif damage == "no-sidecar":
        sidecar.unlink()
    else:
        manifest.write_text('{"products": ["no-such-product"]}')
    searches = len(datastore.requests("search"))
    assert src.fetch(SLOT) == [path]
    assert len(datastore.requests("search")) > searches  # the damaged slot was not taken from the cache
    if damage.startswith("manifest"):  # the granule itself is sound: found again without downloading
        assert len(datastore.requests("download")) == 1 and "no-such-product" not in manifest.read_text()
    else:  # the damage was seen and the granule fetched again
        assert len(datastore.requests("download")) == 2
    rec.injected = 1
    rec.recover(1)
    rec.corrupt = len(cache_problems(tmp_path / "cache"))


def test_corrupt_granule_in_the_s3_cache_is_fetched_again(datastore, make_ds_source, record, s3_bucket, tmp_path,
                                                          granule_zip):
    import s3fs

    from qpe_core.sources import GranuleCache

    rec = record("corrupt granule object in the S3 cache")
    bucket, opts = s3_bucket
    url = f"s3://{bucket}/granules"
    src = make_ds_source(cache=None)
    src.fetch(SLOT, dest_cache=GranuleCache(url, opts, staging_dir=tmp_path / "st1"))
    fs = s3fs.S3FileSystem(**opts)
    (key,) = [k for k in fs.find(f"{bucket}/granules") if k.endswith(".zip")]
    fs.pipe_file(key, granule_zip[:1000])
    (again,) = src.fetch(SLOT, dest_cache=GranuleCache(url, opts, staging_dir=tmp_path / "st2"))
    assert len(datastore.requests("download")) == 2 and fs.cat_file(key) == granule_zip
    rec.injected = 1
    rec.recover(1)
    rec.corrupt = len(cache_problems(tmp_path / "st2"))


# ----------------------------------------------------------------------------- whole nowcast cycles

def _cycle(tmp_path, checkpoint, source, lut_dir):
    from qpe_core.nowcast import run_cycle

    return run_cycle(str(tmp_path / "archive.zarr"), str(tmp_path / "products"), checkpoint, source, slot=SLOT,
                     now=SLOT + pd.Timedelta(minutes=30), members=2, seed=1, cache_dir=str(tmp_path / "cache"))


def _audit_cycle(tmp_path) -> int:
    bad = []
    if (tmp_path / "archive.zarr").exists():
        bad += archive_problems(tmp_path / "archive.zarr")
    cube = tmp_path / "products" / "france-3km.zarr"
    if cube.exists():
        bad += cube_problems(cube)
    bad += file_problems(tmp_path / "products")[0] + cache_problems(tmp_path / "cache")
    assert not bad, bad
    return len(bad)


def test_nowcast_cycle_on_a_failing_data_store(datastore, make_ds_source, record, tmp_path, hrit_checkpoint,
                                               lut_dir):
    """A cycle whose only input slot cannot be downloaded fails with the slot and the cause;
    nothing is in the archive nor among the products; the next run completes the slot."""
    from qpe_core.archive import Archive
    from qpe_core.products.cube import ProductCube

    rec = record("nowcast cycle: Data Store 502 on every download, then healthy")
    datastore.always("download", Fault(status=502))
    res = _cycle(tmp_path, hrit_checkpoint, make_ds_source(max_attempts=1, cache=tmp_path / "cache"), lut_dir)
    assert res.status == "failed"
    assert f"input slot {SLOT_LABEL}" in res.reason and "HTTP 502" in res.reason, res.reason
    assert "missing SEVIRI slot(s) 2010-01-19T12:00Z" in res.reason
    rec.injected = _faulted(datastore, "download")
    rec.flag(res.reason, rec.injected)
    assert not Archive.open(str(tmp_path / "archive.zarr")).has_slot(SLOT)
    assert not [p for p in snapshot(tmp_path / "products") if p.endswith((".tif", ".png"))]

    datastore.always("download", None)
    datastore.inject("download", Fault(status=503), Fault(truncate=500_000))  # a bumpy but working server
    again = _cycle(tmp_path, hrit_checkpoint, make_ds_source(max_attempts=3, cache=tmp_path / "cache"), lut_dir)
    assert again.status == "done", again.reason
    assert again.inputs_present == [SLOT_LABEL] and again.reason == ""
    assert ProductCube.open(again.products["cube"]).has_slot(SLOT)
    assert Archive.open(str(tmp_path / "archive.zarr")).channels == HRIT_CHANNELS
    rec.injected += 2
    rec.recover(2)
    rec.corrupt = _audit_cycle(tmp_path)
