"""Granule sources: the real eumdac code path against a local Data Store server
(tests/datastore_server.py) serving zipped real HRIT granules (Meteosat-9,
2010-01-19 12:00 UTC), the granule cache (local and S3), the local and simulated
sources and the factory."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datastore_server import DataStoreServer, FakeProduct, Fault, scan, zip_files
from qpe_core.errors import ConfigError, QpeError
from qpe_core.sources import (DOWNLOADS, DownloadError, DownloadTimeout, GranuleCache, SourceError, make_source,
                              sanitize_name, set_download_limit)
from qpe_core.sources.cache import check_granule, file_md5
from qpe_core.sources.datastore import RSS, ZERO_DEG, DataStoreSource
from qpe_core.sources.local import LocalSource
from qpe_core.sources.simulated import SimulatedSource, day_seed, simulate_slot

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HRIT_DIR = DATA / "seviri" / "hrit-20100119"
CHANNELS = ["IR_039", "IR_108", "IR_134"]
SLOT = pd.Timestamp("2010-01-19T12:00")
SLOT_LABEL = "2010-01-19T12:00Z"
KEY, SECRET = "qpe-test-consumer-key-7f3a", "qpe-test-consumer-secret-91c2"
PID = "MSG2-SEVI-MSG15-0100-NA-20100119121241.713000000Z-NA"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def granule_zip() -> bytes:
    """The five HRIT files of slot 2010-01-19 12:00 (MSG2), zipped as the Data Store ships products."""
    if not HRIT_DIR.is_dir():
        pytest.skip(f"real HRIT sample not found at {HRIT_DIR} (clone next to shared/)")
    return zip_files(sorted(HRIT_DIR.iterdir()))


def product(collection: str, slot: pd.Timestamp, data: bytes, pid: str | None = None, **kw) -> FakeProduct:
    """A product of ``collection`` for ``slot`` (RSS scans last 4 min, 0-degree ones 12)."""
    return scan(collection, slot.to_pydatetime(), data, pid, 4 if collection == RSS else 12, **kw)


@pytest.fixture
def server(granule_zip):
    with DataStoreServer(KEY, SECRET) as srv:
        srv.add(product(ZERO_DEG, SLOT, granule_zip, PID))
        yield srv


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_src(server, cache_dir):
    def make(**kw) -> DataStoreSource:
        settings = dict(consumer_key=KEY, consumer_secret=SECRET, api_url=server.url, slot_minutes=15,
                        cache=cache_dir, timeout=2.0, max_attempts=3, backoff_s=0.05, backoff_max_s=0.2)
        return DataStoreSource(**{**settings, **kw})
    return make


def final_path(cache_dir: Path, collection: str = ZERO_DEG, pid: str = PID) -> Path:
    return cache_dir / collection.replace(":", "_") / "2010/01/19/1200" / f"{pid}.zip"


# ----------------------------------------------------------------------------- the real eumdac path

def test_search_download_and_ingest_through_eumdac(server, make_src, cache_dir, granule_zip, tmp_path):
    from qpe_core.readers.seviri import group_slots, read_seviri

    src = make_src()
    refs = src.available(SLOT)
    assert [(r.collection, r.product_id) for r in refs] == [(ZERO_DEG, PID)]
    assert refs[0].md5 == hashlib.md5(granule_zip).hexdigest() and refs[0].size_kb == round(len(granule_zip) / 1024)

    paths = src.fetch(SLOT)
    assert paths == [final_path(cache_dir)]
    assert file_md5(paths[0]) == hashlib.md5(granule_zip).hexdigest()
    sidecar = json.loads(Path(f"{paths[0]}.json").read_text())
    assert sidecar["md5"] == refs[0].md5 and sidecar["size"] == len(granule_zip) and sidecar["fetched_at"]
    assert not list(cache_dir.rglob("*.part"))
    assert len(server.requests("token")) == 1 and len(server.requests("download")) == 1
    zero = [r.params for r in server.requests("search") if r.params["pi"] == ZERO_DEG]
    assert zero[-1]["dtstart"] == "2010-01-19T12:00:00" and zero[-1]["dtend"] == "2010-01-19T12:15:00"

    assert group_slots(paths) == {SLOT: paths}
    ds = read_seviri(paths, channels=CHANNELS, cache_dir=tmp_path / "lut")
    assert pd.Timestamp(ds["time"].values) == SLOT and list(ds["channel"].values) == CHANNELS
    bt = ds["bt"].values
    assert np.isfinite(bt).mean() > 0.2 and 180 < np.nanmedian(bt[1]) < 320


def test_cache_hit_does_not_download_again(server, make_src, cache_dir):
    first = make_src().fetch(SLOT)
    before = len(server.log)
    assert make_src().fetch(SLOT) == first  # a new source (new process): same cache
    assert make_src().fetch(SLOT.isoformat() + "Z") == first
    assert len(server.requests("download")) == 1
    assert len(server.log) == before  # a complete cached slot needs no search either


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "no-sidecar"])
def test_corrupt_cached_granule_is_fetched_again(server, make_src, granule_zip, damage):
    src = make_src()
    path = src.fetch(SLOT)[0]
    if damage == "flip-bytes":  # same size, other content: only the MD5 sees it
        with open(path, "r+b") as fh:
            fh.seek(len(granule_zip) // 2)
            fh.write(b"\xff" * 64)
    elif damage == "truncate":
        path.write_bytes(granule_zip[:1000])
    else:
        Path(f"{path}.json").unlink()
    assert src.fetch(SLOT) == [path]
    assert len(server.requests("download")) == 2
    assert check_granule(path, hashlib.md5(granule_zip).hexdigest(), len(granule_zip)) is None


def test_rss_gap_falls_back_to_zero_degree(server, make_src, cache_dir, granule_zip):
    for minute in (-5, 5, 15):  # RSS has 11:55, 12:05 and 12:15 but not 12:00
        server.add(product(RSS, SLOT + pd.Timedelta(minutes=minute), granule_zip))
    server.add(product(ZERO_DEG, SLOT + pd.Timedelta(minutes=15), granule_zip))
    src = make_src()
    assert src.fetch(SLOT) == [final_path(cache_dir)]
    searched = [r.params["pi"] for r in server.requests("search")]
    assert searched == [RSS, ZERO_DEG]
    later = src.available(SLOT + pd.Timedelta(minutes=15))
    assert [r.collection for r in later] == [RSS] and later[0].sensing_start == pd.Timestamp("2010-01-19T12:15:09")
    path = src.fetch(SLOT + pd.Timedelta(minutes=15))[0]
    assert path.relative_to(cache_dir).parts[:1] == ("EO_EUM_DAT_MSG_MSG15-RSS",)
    assert src.fetch(SLOT + pd.Timedelta(hours=3)) == []  # nowhere: nothing, no error


# ----------------------------------------------------------------------------- throttling and server errors

def test_429_retry_after_is_honoured(server, make_src):
    server.inject("download", *[Fault(status=429, retry_after="1")] * 4)  # beyond eumdac's own 3 retries
    assert make_src().fetch(SLOT)
    times = [r.t for r in server.requests("download")]
    assert len(times) == 5 and server.requests("download")[-1].status == 200
    gaps = np.diff(times)
    assert gaps.min() >= 1.0, gaps


def test_429_without_retry_after_backs_off(server, make_src):
    server.inject("download", Fault(status=429), Fault(status=429))
    assert make_src(backoff_s=0.2).fetch(SLOT)
    times = [r.t for r in server.requests("download")]
    assert len(times) == 3 and min(np.diff(times)) >= 0.1  # jitter keeps >= half the back-off


def test_503_burst_is_recovered_and_retries_are_bounded(server, make_src, tmp_path):
    server.inject("download", *(Fault(status=s) for s in (500, 502, 503, 503, 503)))
    assert make_src().fetch(SLOT)
    assert [r.status for r in server.requests("download")] == [500, 502, 503, 503, 503, 200]

    server.always("download", Fault(status=503))
    with pytest.raises(DownloadError, match="gave up after 2 attempt") as err:
        make_src(max_attempts=2, cache=tmp_path / "other-cache").fetch(SLOT)
    assert PID in str(err.value) and SLOT_LABEL in str(err.value)
    assert len(server.requests("download")) == 6 + 2 * 4  # eumdac's own 1 + 3 tries per attempt


# ----------------------------------------------------------------------------- broken transfers

def test_truncated_download_is_rejected(server, make_src, cache_dir):
    server.always("download", Fault(truncate=1000))
    with pytest.raises(DownloadError, match="truncated download") as err:
        make_src(max_attempts=2).fetch(SLOT)
    assert PID in str(err.value) and SLOT_LABEL in str(err.value)
    final = final_path(cache_dir)
    assert not final.exists() and not Path(f"{final}.json").exists()
    assert Path(f"{final}.part").stat().st_size == 2000  # kept: the next try resumes from it
    assert [r.range for r in server.requests("download")] == [None, "bytes=1000-"]


def test_md5_mismatch_is_rejected(server, make_src, cache_dir, granule_zip):
    server.add(product(ZERO_DEG, SLOT, granule_zip, PID, md5="0" * 32))
    with pytest.raises(DownloadError, match="MD5") as err:
        make_src().fetch(SLOT)
    assert PID in str(err.value) and SLOT_LABEL in str(err.value)
    assert not list(cache_dir.rglob("*.zip")) and not list(cache_dir.rglob("*.part"))
    assert len(server.requests("download")) == 2  # one clean download more, then refused


@pytest.mark.parametrize("where", ["headers", "body"])
def test_stalled_download_times_out(server, make_src, cache_dir, where):
    server.always("download", Fault(stall_s=3.0, where=where))
    t0 = time.monotonic()
    with pytest.raises(DownloadTimeout, match="no answer within 0.5 s|timed out") as err:
        make_src(timeout=0.5, max_attempts=1).fetch(SLOT)
    assert time.monotonic() - t0 < 2.5
    assert PID in str(err.value) and SLOT_LABEL in str(err.value)
    assert not final_path(cache_dir).exists()
    if where == "headers":  # the abandoned request keeps its slot until its connection ends
        assert DOWNLOADS.active == 1
        deadline = time.monotonic() + 5
        while DOWNLOADS.active and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        assert Path(f"{final_path(cache_dir)}.part").stat().st_size == server.requests("download")[0].sent
    assert DOWNLOADS.active == 0


def test_resume_from_part_uses_range(server, make_src, cache_dir, granule_zip):
    part = Path(f"{final_path(cache_dir)}.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(granule_zip[:700_000])  # an interrupted earlier download
    path = make_src().fetch(SLOT)[0]
    (req,) = server.requests("download")
    assert (req.range, req.status, req.sent) == ("bytes=700000-", 206, len(granule_zip) - 700_000)
    assert file_md5(path) == hashlib.md5(granule_zip).hexdigest() and not part.exists()


def test_stall_mid_body_resumes_with_range(server, make_src, granule_zip):
    server.inject("download", Fault(stall_s=3.0, where="body"))
    path = make_src(timeout=0.5).fetch(SLOT)[0]
    first, second = server.requests("download")
    assert first.range is None and second.range == f"bytes={len(granule_zip) // 2}-" and second.status == 206
    assert file_md5(path) == hashlib.md5(granule_zip).hexdigest()


def test_concurrent_downloads_respect_the_process_limit(server, make_src, granule_zip):
    slots = [SLOT + pd.Timedelta(minutes=15 * k) for k in range(6)]
    for s in slots[1:]:
        server.add(product(ZERO_DEG, s, granule_zip))
    server.always("download", Fault(slow_s=0.3))
    src = make_src(timeout=5.0)
    set_download_limit(2)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(src.fetch, slots))
    finally:
        set_download_limit(3)
    assert all(len(r) == 1 for r in results) and len(server.requests("download")) == 6
    assert server.max_active_downloads <= 2
    assert DOWNLOADS.active == 0


def test_one_download_for_concurrent_callers_of_one_slot(server, make_src):
    server.always("download", Fault(slow_s=0.3))
    src = make_src(timeout=5.0)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: src.fetch(SLOT), range(4)))
    assert len(server.requests("download")) == 1 and all(r == results[0] for r in results)


# ----------------------------------------------------------------------------- tokens and secrets

def test_expired_token_is_renewed(server, make_src, granule_zip):
    server.add(product(ZERO_DEG, SLOT + pd.Timedelta(minutes=15), granule_zip))
    src = make_src()
    src.fetch(SLOT)
    server.expire_tokens()  # the server forgets the token before its announced expiry
    assert src.fetch(SLOT + pd.Timedelta(minutes=15))
    assert len(server.tokens_issued) == 2
    assert any(r.status == 401 for r in server.log)


def test_secrets_never_logged_nor_in_messages(server, make_src, caplog, granule_zip):
    caplog.set_level(logging.DEBUG)
    server.add(product(ZERO_DEG, SLOT + pd.Timedelta(minutes=15), granule_zip))
    server.inject("download", Fault(status=503), Fault(status=429, retry_after="0"))
    src = make_src()
    src.fetch(SLOT)
    server.expire_tokens()
    src.fetch(SLOT + pd.Timedelta(minutes=15))
    with pytest.raises(SourceError) as err:
        make_src(consumer_secret="wrong-secret-5e1d").fetch(SLOT + pd.Timedelta(minutes=30))
    assert "refused" in str(err.value)
    secrets = [KEY, SECRET, "wrong-secret-5e1d", *server.tokens_issued]
    assert len(server.tokens_issued) == 2
    text = caplog.text + str(err.value) + repr(src)
    leaked = [s for s in secrets if s in text]
    assert not leaked
    assert any(r.name == "eumdac" for r in caplog.records) and "Bearer ***" in caplog.text  # redaction at work


def test_credentials_from_environment_or_a_config_error(server, monkeypatch, cache_dir):
    for var in ("EUMETSAT_CONSUMER_KEY", "EUMETSAT_CONSUMER_SECRET", "QPE_EUMETSAT_CONSUMER_KEY",
                "QPE_EUMETSAT_CONSUMER_SECRET"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="EUMETSAT_CONSUMER_KEY"):
        make_source("eumdac", api_url=server.url, cache=cache_dir)
    monkeypatch.setenv("EUMETSAT_CONSUMER_KEY", KEY)
    monkeypatch.setenv("EUMETSAT_CONSUMER_SECRET", SECRET)
    src = make_source("eumdac", api_url=server.url, cache=cache_dir)
    assert isinstance(src, DataStoreSource) and src.fetch(SLOT) == [final_path(cache_dir)]


def test_urls_ini_points_eumdac_at_the_server(server, cache_dir, tmp_path):
    import importlib.resources

    ini = importlib.resources.files("eumdac").joinpath("endpoints.ini").read_text()
    assert "api = https://api.eumetsat.int" in ini
    custom = tmp_path / "endpoints.ini"
    custom.write_text(ini.replace("api = https://api.eumetsat.int", f"api = {server.url}"))
    src = DataStoreSource(KEY, SECRET, urls_ini=custom, cache=cache_dir, slot_minutes=15)
    assert src.api_url == server.url and src.fetch(SLOT) == [final_path(cache_dir)]


# ----------------------------------------------------------------------------- names

def test_sanitize_name():
    cases = {"../../etc/passwd": "passwd", "/abs/path/x.zip": "x.zip", "..\\..\\evil": "evil", "..": "product",
             "": "product", "a/../../b": "b", "C:\\windows\\x": "x", "ok name\x00.zip": "ok_name.zip",
             ".hidden": "hidden", "EO:EUM:DAT:MSG:HRSEVIRI": "EO_EUM_DAT_MSG_HRSEVIRI"}
    assert {name: sanitize_name(name) for name in cases} == cases


def test_path_traversal_names_stay_in_the_cache(server, make_src, cache_dir, granule_zip, tmp_path):
    evil = "..\\..\\..\\evil-granule"
    server.add(product(ZERO_DEG, SLOT, granule_zip, evil, filename="../../../evil-granule.zip"))
    server.products.pop((ZERO_DEG, PID))
    before = set(tmp_path.parent.rglob("*evil*"))  # other tests' own "evil" files are not ours
    (path,) = make_src().fetch(SLOT)
    assert path.name == "evil-granule.zip" and path.resolve().is_relative_to(cache_dir.resolve())
    new = set(tmp_path.parent.rglob("*evil*")) - before
    assert new and [p for p in new if not p.resolve().is_relative_to(cache_dir.resolve())] == []
    cache = GranuleCache(cache_dir)
    assert cache.local_path("../../x", SLOT, "../y").resolve().is_relative_to(cache_dir.resolve())


# ----------------------------------------------------------------------------- S3 cache

def test_s3_cache_round_trip(server, make_src, s3_bucket, tmp_path, granule_zip):
    import s3fs

    bucket, opts = s3_bucket
    url = f"s3://{bucket}/granules"
    src = make_src(cache=None)
    (path,) = src.fetch(SLOT, dest_cache=GranuleCache(url, opts, staging_dir=tmp_path / "stage1"))
    fs = s3fs.S3FileSystem(**opts)
    key = f"{bucket}/granules/EO_EUM_DAT_MSG_HRSEVIRI/2010/01/19/1200/{PID}.zip"
    assert fs.exists(key) and json.loads(fs.cat_file(key + ".json"))["size"] == len(granule_zip)

    (again,) = src.fetch(SLOT, dest_cache=GranuleCache(url, opts, staging_dir=tmp_path / "stage2"))
    assert len(server.requests("download")) == 1  # restored from S3, not from the Data Store
    assert again.is_relative_to(tmp_path / "stage2") and file_md5(again) == file_md5(path)

    fs.pipe_file(key, b"not a zip")  # corrupt the object store copy
    (third,) = src.fetch(SLOT, dest_cache=GranuleCache(url, opts, staging_dir=tmp_path / "stage3"))
    assert len(server.requests("download")) == 2 and file_md5(third) == hashlib.md5(granule_zip).hexdigest()
    assert fs.cat_file(key) == granule_zip


# ----------------------------------------------------------------------------- local, simulated, factory

def test_local_source_finds_the_hrit_slot(tmp_path, granule_zip):
    if not HRIT_DIR.is_dir():
        pytest.skip(f"real HRIT sample not found at {HRIT_DIR}")
    src = LocalSource(HRIT_DIR)
    files = src.fetch(SLOT)
    assert files == sorted(HRIT_DIR.iterdir()) and len(files) == 5
    assert {r.product_id for r in src.available(SLOT)} == {f.name for f in files}
    assert src.fetch(SLOT + pd.Timedelta(minutes=15)) == []
    with pytest.raises(QpeError, match="not on the 15-minute slot grid"):
        src.fetch("2010-01-19T12:05Z")

    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / f"{PID}.zip").write_bytes(granule_zip)
    (zips / "README.txt").write_text("not a granule")
    assert LocalSource(zips).fetch(SLOT) == [zips / f"{PID}.zip"]


def test_simulated_source_is_deterministic_per_slot_and_seed():
    src = SimulatedSource(area="france-3km", seed=7, channels=["IR_108", "IR_120"])
    slot = pd.Timestamp("2024-06-01T00:00")
    assert src.fetch(slot) == [] and len(src.available(slot)) == 1
    sev1, rad1 = src.simulate_slot(slot)
    sev2, rad2 = simulate_slot("france-3km", "2024-06-01T00:00Z", 7, channels=["IR_108", "IR_120"])
    np.testing.assert_array_equal(sev1["bt"].values, sev2["bt"].values)
    np.testing.assert_array_equal(rad1["rain"].values, rad2["rain"].values)
    assert pd.Timestamp(sev1["time"].values) == slot and pd.Timestamp(rad1["time"].values) == slot
    assert 150 < float(np.nanmedian(sev1["bt"].values)) < 330
    assert len({day_seed(7, slot), day_seed(8, slot), day_seed(7, slot + pd.Timedelta(days=1))}) == 3
    assert day_seed(7, slot) == day_seed(7, slot + pd.Timedelta(hours=23, minutes=45))


def test_make_source_kinds_and_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown granule source kind 'ftp'; known: eumdac, local, simulated"):
        make_source("ftp")
    with pytest.raises(ConfigError, match="unknown setting"):
        make_source("local", directory=tmp_path, colour="red")
    assert isinstance(make_source("local", directory=tmp_path), LocalSource)
    assert isinstance(make_source("simulated", seed=3), SimulatedSource)
    src = make_source("eumdac", consumer_key=KEY, consumer_secret=SECRET, api_url="http://127.0.0.1:9",
                      cache=tmp_path, slot_minutes=15)
    assert isinstance(src, DataStoreSource) and src.api_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="does not exist"):
        make_source("eumdac", consumer_key=KEY, consumer_secret=SECRET, urls_ini=tmp_path / "none.ini",
                    cache=tmp_path, slot_minutes=15)
