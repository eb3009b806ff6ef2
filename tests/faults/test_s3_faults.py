"""Object-store faults: a proxy in front of the moto S3 server (tests/faults/s3proxy.py) answers
chosen requests with ``InternalError`` (500), ``SlowDown`` (503) or ``AccessDenied`` (403).

Transient errors are retried by botocore / s3fs and the write completes; persistent ones fail
with a message naming the slot (or product) and the cause, leave nothing visible (the slot's
completion marker unset, no object under a product's key), and a re-run completes."""

from __future__ import annotations

import pytest

from faults.audit import archive_problems, cube_problems
from faults.conftest import SLOT, SLOT_LABEL
from faults.s3proxy import S3Fault, S3Proxy
from faults.scenes import SIM_CHANNELS, ensemble, sim_slot
from qpe_core.errors import ArchiveError, QpeError

T0 = "2024-06-01T00:00"
RETRIES = {"retries": {"max_attempts": 3, "mode": "standard"}}  # persistent faults end quickly


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    with S3Proxy(s3_endpoint) as p:
        yield p


@pytest.fixture(scope="module")
def store(proxy):
    """(bucket, storage options through the proxy) shared by the module (moto is slow to
    create cubes: about 4 s each)."""
    import uuid

    import s3fs

    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=proxy.url).mkdir(bucket)
    return bucket, {"endpoint_url": proxy.url, "config_kwargs": RETRIES}


@pytest.fixture(scope="module")
def shared_archive(store):
    """An archive on S3 with one complete slot (T0) and the day's time axis allocated."""
    from qpe_core.archive import Archive

    bucket, opts = store
    url = f"s3://{bucket}/arc.zarr"
    arc = Archive.create(url, "france-3km", SIM_CHANNELS, storage_options=opts)
    arc.ensure_range(T0, "2024-06-01T23:45")
    sev, _ = sim_slot(T0)
    arc.write_seviri(sev)
    return url, arc


@pytest.fixture
def clean_proxy(proxy):
    proxy.clear()
    yield proxy
    proxy.clear()


@pytest.mark.parametrize("code,status,times", [("InternalError", 500, 2), ("SlowDown", 503, 3)])
def test_transient_s3_errors_on_chunk_writes_are_retried(clean_proxy, store, shared_archive, record, code, status,
                                                         times):
    rec = record(f"S3 {code} ({status}) x{times} on archive chunk PUTs")
    proxy, (_, opts), (url, arc) = clean_proxy, store, shared_archive
    T1 = "2024-06-01T00:15" if code == "InternalError" else "2024-06-01T00:30"
    proxy.inject(S3Fault("PUT", r"/arc\.zarr/bt/c/", code, status, times=times))
    sev, radar = sim_slot(T1)
    arc.write_seviri(sev)
    rec.injected = proxy.injected()
    assert rec.injected == times
    assert arc.has_slot(T1) and arc.has_slot(T0)
    rec.recover(rec.injected)
    rec.corrupt = len(archive_problems(url, opts))


def test_transient_s3_errors_on_reads_are_retried(clean_proxy, store, shared_archive, record):
    from qpe_core.archive import Archive

    rec = record("S3 InternalError x2 + SlowDown x2 on GETs of chunks and markers")
    proxy, (_, opts), (url, _) = clean_proxy, store, shared_archive
    proxy.inject(S3Fault("GET", r"/arc\.zarr/bt/c/", "InternalError", 500, times=2),
                 S3Fault("GET", r"_coverage/c/", "SlowDown", 503, times=2))
    again = Archive.open(url, storage_options=opts)
    assert again.has_slot(T0) and again.read_bt(T0).shape == (3, 384, 384)
    rec.injected = proxy.injected()
    assert rec.injected == 4
    rec.recover(4)


@pytest.mark.parametrize("target", ["data", "marker"])
def test_access_denied_during_a_slot_write_is_flagged(clean_proxy, store, shared_archive, record, target):
    rec = record(f"S3 AccessDenied on the archive {target} PUT")
    proxy, (_, opts), (url, arc) = clean_proxy, store, shared_archive
    T1 = "2024-06-01T00:45" if target == "data" else "2024-06-01T01:00"
    pattern = r"/arc\.zarr/bt/c/" if target == "data" else r"/arc\.zarr/bt_coverage/c/"
    proxy.inject(S3Fault("PUT", pattern, "AccessDenied", 403, times=1000))
    sev, _ = sim_slot(T1)
    with pytest.raises(ArchiveError) as err:
        arc.write_seviri(sev)
    msg = str(err.value)
    assert f"SEVIRI slot {T1}Z" in msg and url in msg and "PermissionError" in msg, msg
    rec.injected = proxy.injected()
    rec.flag(msg, rec.injected)
    assert not arc.has_slot(T1) and arc.has_slot(T0)  # the failed slot is hidden, the other intact
    assert archive_problems(url, opts) == []
    proxy.clear()
    arc.write_seviri(sev)  # the permission is back: the re-run completes
    assert arc.has_slot(T1)
    rec.corrupt = len(archive_problems(url, opts))


def test_s3_errors_on_product_cogs(clean_proxy, store, record):
    """A burst of 500s on a COG PUT is retried; AccessDenied on one COG fails with its key and
    nothing appears under it; the re-run publishes it."""
    import s3fs

    from qpe_core.products.cog import write_cogs

    rec = record("S3 500 x2 then AccessDenied on product COG PUTs")
    proxy, (bucket, opts) = clean_proxy, store
    root = f"s3://{bucket}/products"
    proxy.inject(S3Fault("PUT", r"_mean\.tif$", "InternalError", 500, times=2))
    paths = write_cogs(ensemble("2024-06-01T00:15"), root, storage_options=opts)
    assert proxy.injected() == 2 and paths["mean"].endswith("_mean.tif")
    rec.injected = 2
    rec.recover(2)

    ens2 = ensemble("2024-06-01T00:30", seed=1)
    proxy.inject(S3Fault("PUT", r"_p90\.tif$", "AccessDenied", 403, times=1000))
    with pytest.raises(QpeError) as err:
        write_cogs(ens2, root, storage_options=opts)
    msg = str(err.value)
    assert "qpe_20240601T0030Z_p90.tif" in msg and "PermissionError" in msg, msg
    rec.injected += 1
    rec.flag(msg)
    fs = s3fs.S3FileSystem(endpoint_url=proxy.url)
    key = f"{bucket}/products/france-3km/2024/06/01/qpe_20240601T0030Z_p90.tif"
    assert not fs.exists(key)
    proxy.clear()
    write_cogs(ens2, root, storage_options=opts)
    assert fs.exists(key)


@pytest.mark.slow
def test_s3_errors_on_a_product_cube_slot(clean_proxy, store, record):
    """The product cube on S3: AccessDenied on member chunk PUTs hides the slot with a message
    naming it; SlowDown on the marker is retried; the re-run completes."""
    from qpe_core.nowcast import publish_products
    from qpe_core.products.cube import ProductCube

    rec = record("S3 AccessDenied on product cube member PUTs, SlowDown on its marker")
    proxy, (bucket, opts) = clean_proxy, store
    root = f"s3://{bucket}/cube-products"
    publish_products(ensemble("2024-06-01T00:15"), root, "france-3km", storage_options=opts)
    proxy.inject(S3Fault("PUT", r"france-3km\.zarr/qpe/c/", "AccessDenied", 403, times=1000))
    ens = ensemble("2024-06-01T00:30", seed=2)
    with pytest.raises(ArchiveError) as err:
        publish_products(ens, root, "france-3km", storage_options=opts)
    msg = str(err.value)
    assert "product slot 2024-06-01T00:30Z" in msg and "PermissionError" in msg, msg
    rec.injected = proxy.injected()
    rec.flag(msg, rec.injected)
    cube_url = f"{root}/france-3km.zarr"
    cube = ProductCube.open(cube_url, storage_options=opts)
    assert not cube.has_slot("2024-06-01T00:30") and cube.has_slot("2024-06-01T00:15")
    proxy.clear()
    proxy.inject(S3Fault("PUT", r"qpe_coverage/c/", "SlowDown", 503, times=2))
    publish_products(ens, root, "france-3km", storage_options=opts)
    assert ProductCube.open(cube_url, storage_options=opts).has_slot("2024-06-01T00:30")
    rec.injected += 2
    rec.recover(2)
    rec.corrupt = len(cube_problems(cube_url, opts))


def test_s3_errors_on_the_granule_cache(clean_proxy, store, record, datastore, make_ds_source, tmp_path):
    import s3fs

    from qpe_core.sources import DownloadError, GranuleCache

    rec = record("S3 SlowDown x2 then AccessDenied on the granule cache upload")
    proxy, (bucket, opts) = clean_proxy, store
    url = f"s3://{bucket}/granules"
    src = make_ds_source(cache=None)
    proxy.inject(S3Fault("PUT", r"\.zip$", "SlowDown", 503, times=2))
    assert src.fetch(SLOT, dest_cache=GranuleCache(url, opts, staging_dir=tmp_path / "st1"))
    assert proxy.injected() == 2
    rec.injected = 2
    rec.recover(2)

    url2 = f"s3://{bucket}/granules2"
    proxy.inject(S3Fault("PUT", r"granules2/.*\.zip$", "AccessDenied", 403, times=1000))
    with pytest.raises(DownloadError) as err:
        src.fetch(SLOT, dest_cache=GranuleCache(url2, opts, staging_dir=tmp_path / "st2"))
    msg = str(err.value)
    assert SLOT_LABEL in msg and url2 in msg and "PermissionError" in msg, msg
    rec.injected += 1
    rec.flag(msg)
    fs = s3fs.S3FileSystem(endpoint_url=proxy.url)
    assert not [k for k in fs.find(f"{bucket}/granules2") if k.endswith(".json")]  # no sidecar, no manifest
    proxy.clear()
    assert src.fetch(SLOT, dest_cache=GranuleCache(url2, opts, staging_dir=tmp_path / "st3"))
    assert [k for k in fs.find(f"{bucket}/granules2") if k.endswith("_slot.json")]
