"""Disk full while writing a granule, an archive slot, a product cube slot or a COG.

How the disk fills: a real ``RLIMIT_FSIZE`` (``resource.setrlimit``) in a subprocess, with
``SIGXFSZ`` ignored, so that every write past N bytes of one file fails in the kernel with
``EFBIG`` ("File too large"), exactly where ``ENOSPC`` would on a full disk.  No function of
ours is patched; a tmpfs would need root (not available here).  The parent then checks the
error names the slot (or file) and the cause, audits what a reader can see, and re-runs the
write without the limit, which must complete it."""

from __future__ import annotations

import pandas as pd

from faults.audit import archive_problems, cache_problems, cube_problems, file_problems
from faults.conftest import KEY, SECRET, SLOT, SLOT_LABEL
from faults.scenes import SIM_CHANNELS, child_result, ensemble, run_child, sim_slot

TIME = "2024-06-01T00:15"


def test_disk_full_while_downloading_a_granule(datastore, record, tmp_path, granule_zip):
    from qpe_core.sources.datastore import DataStoreSource

    rec = record("disk full (RLIMIT_FSIZE 1 MB) while downloading a 2 MB granule")
    cache = tmp_path / "cache"
    proc = run_child(f"""
        from qpe_core.sources.datastore import DataStoreSource
        src = DataStoreSource({KEY!r}, {SECRET!r}, api_url={datastore.url!r}, cache={str(cache)!r},
                              slot_minutes=15, timeout=5.0, max_attempts=3, backoff_s=0.05)
        limit_file_size(1_000_000)
        attempt(lambda: [str(p) for p in src.fetch({SLOT.isoformat()!r})])
    """)
    out = child_result(proc)
    assert not out["ok"] and out["type"] == "DownloadError", out
    msg = out["message"]
    assert SLOT_LABEL in msg and "File too large" in msg and ".part" in msg, msg
    rec.injected = 1
    rec.flag(msg)
    assert len(datastore.requests("download")) == 1  # not retried: a full disk is no network fault
    parts = list(cache.rglob("*.zip.part"))
    assert [p.stat().st_size for p in parts] == [1_000_000] and not list(cache.rglob("*.zip"))

    src = DataStoreSource(KEY, SECRET, api_url=datastore.url, cache=cache, slot_minutes=15, timeout=5.0)
    assert len(src.fetch(SLOT)) == 1  # space again: the re-run resumes from the kept bytes
    assert datastore.requests("download")[-1].range == "bytes=1000000-"
    rec.corrupt = len(cache_problems(cache))


def test_disk_full_while_writing_an_archive_slot(record, tmp_path):
    from qpe_core.archive import Archive

    rec = record("disk full (RLIMIT_FSIZE 64 kB) while writing an archive slot")
    url = str(tmp_path / "a.zarr")
    arc = Archive.create(url, "france-3km", SIM_CHANNELS)
    sev, radar = sim_slot("2024-06-01T00:00")
    arc.write_seviri(sev)  # an earlier complete slot must survive
    proc = run_child(f"""
        from faults.scenes import sim_slot
        from qpe_core.archive import Archive
        sev, radar = sim_slot({TIME!r})
        arc = Archive.open({url!r}, "a")
        arc.ensure_range(sev["time"].values)
        limit_file_size(64_000)
        attempt(lambda: arc.write_seviri(sev))
    """)
    out = child_result(proc)
    assert not out["ok"] and out["type"] == "ArchiveError", out
    assert "SEVIRI slot 2024-06-01T00:15Z" in out["message"] and "File too large" in out["message"]
    assert url in out["message"]
    rec.injected = 1
    rec.flag(out["message"])
    arc = Archive.open(url, "a")
    assert not arc.has_slot(TIME) and arc.has_slot("2024-06-01T00:00")
    assert archive_problems(url) == []
    sev, radar = sim_slot(TIME)
    arc.write_seviri(sev)
    assert arc.has_slot(TIME)
    rec.corrupt = len(archive_problems(url))


def test_disk_full_while_writing_a_product_cube_slot(record, tmp_path):
    from qpe_core.products.cube import ProductCube

    rec = record("disk full (RLIMIT_FSIZE 64 kB) while writing a product cube slot")
    url = str(tmp_path / "france-3km.zarr")
    ProductCube.create(url, "france-3km", 4)
    proc = run_child(f"""
        from faults.scenes import ensemble
        from qpe_core.products.cube import ProductCube
        ens = ensemble({TIME!r})
        cube = ProductCube.open({url!r}, "a")
        cube.ensure_range(ens["time"].values)
        limit_file_size(64_000)
        attempt(lambda: cube.write_slot(ens))
    """)
    out = child_result(proc)
    assert not out["ok"] and out["type"] == "ArchiveError", out
    assert "product slot 2024-06-01T00:15Z" in out["message"] and "File too large" in out["message"]
    rec.injected = 1
    rec.flag(out["message"])
    cube = ProductCube.open(url, "a")
    assert not cube.has_slot(TIME) and cube_problems(url) == []
    cube.write_slot(ensemble(TIME))
    assert cube.has_slot(TIME)
    rec.corrupt = len(cube_problems(url))


def test_disk_full_while_writing_cogs_and_quicklook(record, tmp_path):
    from qpe_core.products.cog import COG_PRODUCTS, write_cogs
    from qpe_core.products.quicklook import write_quicklook

    rec = record("disk full (RLIMIT_FSIZE 100 kB) while writing COGs and the quick-look")
    root = tmp_path / "products"
    proc = run_child(f"""
        from faults.scenes import ensemble
        from qpe_core.products.cog import write_cog, COG_PRODUCTS
        from qpe_core.products.ensemble_stats import ensemble_stats
        from qpe_core.products.quicklook import write_quicklook
        stats = ensemble_stats(ensemble({TIME!r}))
        limit_file_size(100_000)
        results = {{}}
        for p in COG_PRODUCTS:
            try:
                results[p] = ["ok", write_cog(stats, p, {str(root)!r})]
            except Exception as exc:
                results[p] = [type(exc).__name__, str(exc)]
        try:
            results["quicklook"] = ["ok", write_quicklook(stats, {str(root)!r})]
        except Exception as exc:
            results["quicklook"] = [type(exc).__name__, str(exc)]
        report(ok=True, value=results)
    """)
    results = child_result(proc)["value"]
    failed = {k: v for k, v in results.items() if v[0] != "ok"}
    assert failed, f"the limit did not bite: {results}"
    for name, (kind, msg) in failed.items():
        assert kind == "QpeError", (name, kind, msg)
        assert "qpe_20240601T0015Z_" in msg and "nothing was published" in msg, msg
    rec.injected = len(failed)
    rec.flag("; ".join(v[1] for v in failed.values())[:400], len(failed))
    problems, leftovers = file_problems(root)
    assert problems == [] and leftovers == []  # the temporary files were removed too
    visible = {p.name for p in root.rglob("*") if p.is_file()}
    assert not any(n.endswith(f"_{name}.tif") for n in visible for name in failed)

    stats = ensemble(TIME)
    write_cogs(stats, root)
    write_quicklook(stats, root)
    problems, leftovers = file_problems(root)
    assert len([p for p in root.rglob("*.tif")]) == len(COG_PRODUCTS)
    rec.corrupt = len(problems)
    rec.leftovers = len(leftovers)


def test_disk_full_in_a_whole_nowcast_cycle(record, tmp_path):
    """The cycle's product stage on a full disk: the cycle reports ``failed`` with the slot and
    the cause (it used to escape as a bare OSError), and the next cycle completes it."""
    from qpe_core.nowcast import publish_products

    rec = record("disk full (RLIMIT_FSIZE 200 kB) during the product stage of a cycle")
    products = str(tmp_path / "products")
    proc = run_child(f"""
        from faults.scenes import ensemble
        from qpe_core.nowcast import publish_products
        ens = ensemble({TIME!r})
        limit_file_size(200_000)
        attempt(lambda: publish_products(ens, {products!r}, "france-3km"))
    """)
    out = child_result(proc)
    assert not out["ok"] and "QpeError" in out["mro"], out
    assert "2024-06-01T00:15Z" in out["message"] or "qpe_20240601T0015Z" in out["message"], out["message"]
    rec.injected = 1
    rec.flag(out["message"])
    cube = tmp_path / "products" / "france-3km.zarr"
    assert cube_problems(cube) == [] and file_problems(products)[0] == []
    paths = publish_products(ensemble(TIME), products, "france-3km")
    assert len(paths) == 9  # cube, 6 COGs, quick-look, STAC item
    rec.corrupt = len(cube_problems(cube)) + len(file_problems(products)[0])
    assert pd.Timestamp(TIME) in set(__import__("qpe_core.products.cube", fromlist=["x"]).ProductCube.open(
        str(cube)).times())
