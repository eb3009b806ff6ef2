"""Products: ensemble statistics, the product cube, COGs and quick-looks (local and S3)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import crash_at_marker
import xarray as xr

from qpe_core.errors import ArchiveError, MissingSlotError
from qpe_core.grids import attach_grid, get_spec
from qpe_core.products.cog import COG_PRODUCTS, product_path, write_cogs
from qpe_core.products.cube import ProductCube
from qpe_core.products.ensemble_stats import PROB_VARS, STAT_VARS, ensemble_stats
from qpe_core.products.quicklook import load_coastlines, projected_coastlines, write_quicklook

# rio_cogeo.cog_info -> rasterio.transform.from_bounds uses affine's deprecated `*` (third-party code)
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

AREA = "france-3km"
T = "2024-06-01T12:15"
INPUTS = ["2024-06-01T12:15Z", "2024-06-01T12:00Z", "2024-06-01T11:45Z", "2024-06-01T11:30Z"]


def ensemble(seed: int = 0, members: int = 4, time: str = T, missing=()) -> xr.Dataset:
    """A small ensemble shaped like ``predict``'s output: rain(member, y, x) mm/h on france-3km."""
    rng = np.random.default_rng(seed)
    rain = (rng.gamma(0.6, 3.0, (members, 384, 384)) * (rng.random((members, 384, 384)) > 0.3)).astype("f4")
    rain[:, :12, :] = np.nan  # no estimate in the first rows (as predict does where inputs are invalid)
    ds = xr.Dataset({"rain": (("member", "y", "x"), rain, {"standard_name": "rainfall_rate", "units": "mm h-1"})},
                    coords={"member": np.arange(members), "time": pd.Timestamp(time).to_datetime64()},
                    attrs={"model_kind": "residual-flow", "checkpoint": "data/ck/rf", "members": members,
                           "seed": seed, "steps": 8, "input_slots": INPUTS, "missing_inputs": list(missing),
                           "seconds": float(rng.random())})  # wall-clock: must not reach the products
    return attach_grid(ds, AREA)


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- statistics
def test_stats_exact_on_hand_made_ensemble():
    rain = np.zeros((4, 384, 384), dtype="float32")
    rain[:, 10, 20] = [12.0, 0.0, 2.0, 0.5]  # unordered on purpose
    rain[:, 11, 21] = [1.0, 1.0, 1.0, 1.0]  # exactly at a threshold: not "above"
    rain[:, 12, 22] = [0.1, 5.0, 10.0, 10.5]
    rain[2, 13, 23] = np.nan  # one member without estimate -> every statistic NaN there
    ds = attach_grid(xr.Dataset({"rain": (("member", "y", "x"), rain)},
                                coords={"time": np.datetime64("2024-06-01T12:00")},
                                attrs={"model_kind": "flow", "members": 4}), AREA)
    st = ensemble_stats(ds)
    assert set(STAT_VARS) == {"mean", "p50", "p90", "prob_gt_0p1", "prob_gt_1", "prob_gt_5", "prob_gt_10"}
    px = st.isel(y=10, x=20)
    # mean 14.5/4; quantiles numpy "linear" (type 7) on sorted [0, 0.5, 2, 12]:
    # p50 at rank 1.5 -> 1.25, p90 at rank 2.7 -> 2 + 0.7 * 10 = 9
    assert float(px["mean"]) == 3.625
    assert float(px["p50"]) == 1.25
    assert float(px["p90"]) == pytest.approx(9.0, abs=1e-6)
    assert [float(px[v]) for v in PROB_VARS] == [0.75, 0.5, 0.25, 0.25]
    at = st.isel(y=11, x=21)
    assert [float(at[v]) for v in PROB_VARS] == [1.0, 0.0, 0.0, 0.0]
    assert float(at["p90"]) == 1.0
    third = st.isel(y=12, x=22)
    assert [float(third[v]) for v in PROB_VARS] == [0.75, 0.75, 0.5, 0.25]  # float32 0.1 is not > 0.1
    for v in STAT_VARS:
        assert np.isnan(float(st[v][13, 23])), v
        assert int(np.isnan(st[v].values).sum()) == 1, v
    assert float(st["mean"][0, 0]) == 0.0 and float(st["prob_gt_0p1"][0, 0]) == 0.0

    # whole-field agreement with numpy on a random ensemble
    ens = ensemble(3, members=5)
    st = ensemble_stats(ens)
    r = ens["rain"].values.astype("float64")
    np.testing.assert_array_equal(st["mean"].values, r.mean(0).astype("float32"))
    np.testing.assert_array_equal(st["p90"].values, np.quantile(r, 0.9, axis=0, method="linear").astype("f4"))
    np.testing.assert_array_equal(st["prob_gt_5"].values,
                                  np.where(np.isnan(r).any(0), np.nan, (r > 5).sum(0) / 5).astype("f4"))
    assert st["mean"].dtype == np.float32 and st["mean"].dims == ("y", "x")

    # CF attributes and the CRS travel
    import rioxarray  # noqa: F401

    assert st["mean"].attrs["units"] == "mm h-1" and st["mean"].attrs["standard_name"] == "rainfall_rate"
    assert st["p90"].attrs["quantile"] == 0.9 and st["p50"].attrs["cell_methods"] == "realization: median"
    assert st["prob_gt_1"].attrs["units"] == "1" and st["prob_gt_1"].attrs["threshold"] == 1.0
    assert "standard_name" not in st["prob_gt_1"].attrs  # CF has none for exceedance probabilities
    assert all(st[v].attrs["grid_mapping"] == "spatial_ref" for v in STAT_VARS)
    assert st["mean"].rio.crs.to_epsg() == 3035 and st.rio.crs.to_epsg() == 3035
    assert st.attrs["model_kind"] == "residual-flow" and st.attrs["members"] == 5


# ---------------------------------------------------------------------------- cube
def test_cube_round_trip_idempotent_and_members_fixed(tmp_path):
    path = tmp_path / "products.zarr"
    cube = ProductCube.create(str(path), AREA, members=4)
    ens = ensemble(1, missing=["2024-06-01T11:30Z"])
    w = cube.write_slot(ens)
    assert w.index == 49 and w.coverage == pytest.approx(1 - 12 / 384)
    cube.write_slot(ensemble(2, time="2024-06-01T12:30"))
    before = _digest(path)
    cube.write_slot(ensemble(1, missing=["2024-06-01T11:30Z"]))  # same inputs and seed again
    assert _digest(path) == before

    back = ProductCube.open(str(path))
    assert list(back.times()) == [pd.Timestamp(T), pd.Timestamp("2024-06-01T12:30")]
    got = back.read_slot(T)
    np.testing.assert_array_equal(got["rain"].values, ens["rain"].values)
    st = ensemble_stats(ens)
    for v in STAT_VARS:
        np.testing.assert_array_equal(got[v].values, st[v].values)
    meta = back.slot_metadata(T)
    assert meta == {"datetime": "2024-06-01T12:15:00Z", "area": AREA, "model_kind": "residual-flow",
                    "model_card": "data/ck/rf", "members": 4, "seed": 1, "steps": 8,
                    "input_slots": INPUTS, "missing_inputs": ["2024-06-01T11:30Z"]}

    ds = back.to_xarray()
    import warnings

    with warnings.catch_warnings():  # consolidated metadata: a plain open, no warning, same cube
        warnings.simplefilter("error")
        plain = xr.open_zarr(str(path), decode_coords="all")
    assert plain.sizes == ds.sizes and list(plain.data_vars) == list(ds.data_vars)
    xr.testing.assert_identical(plain.sel(time=[T]), ds.sel(time=[T]))
    assert ds["time"].encoding["dtype"] == np.dtype("int64")
    assert ds["time"].encoding["units"].startswith("minutes since 1970-01-01")
    assert ds["qpe"].dims == ("time", "member", "y", "x") and ds.sizes["member"] == 4
    assert ds["qpe"].encoding["chunks"] == (1, 1, 384, 384) and ds["mean"].encoding["chunks"] == (1, 384, 384)
    assert int(ds["n_missing_inputs"].sel(time=T)) == 1
    assert json.loads(str(ds["slot_metadata"].sel(time=T).values))["seed"] == 1
    import rioxarray  # noqa: F401

    assert ds["mean"].rio.crs.to_epsg() == 3035
    assert ds["prob_gt_10"].attrs["units"] == "1" and ds["qpe"].attrs["units"] == "mm h-1"

    with pytest.raises(ArchiveError, match="6 members != cube's 4 members"):
        cube.write_slot(ensemble(1, members=6))
    with pytest.raises(ArchiveError, match="6 members != cube's 4 members"):
        ProductCube.open_or_create(str(path), AREA, members=6)
    with pytest.raises(MissingSlotError, match="2024-06-01T12:45Z"):
        back.read_slot("2024-06-01T12:45")


def test_a_cube_seen_while_another_process_creates_it_is_refused_by_name(tmp_path):
    """Between the group's creation and its attributes a concurrent opener sees a version and no
    area: a clear ArchiveError (``open_or_create`` then waits for the creator's lock), not a KeyError."""
    import zarr

    path = str(tmp_path / "p.zarr")
    zarr.open_group(path, mode="w", zarr_format=3).attrs.update({ProductCube.VERSION_ATTR: ProductCube.FORMAT_VERSION})
    with pytest.raises(ArchiveError, match=r"p.zarr: incomplete product cube metadata \(no area, slot_minutes, "
                                           r"members\); is another process creating it\?"):
        ProductCube.open(path)


def test_crash_between_data_and_marker_hides_slot(tmp_path):
    url = str(tmp_path / "products.zarr")
    cube = ProductCube.create(url, AREA, members=4)
    cube.write_slot(ensemble(1))  # a complete slot that the crashing run rewrites
    cube.write_slot(ensemble(2, time="2024-06-01T12:30"))  # another slot, untouched
    proc = crash_at_marker("qpe_coverage", f"""
from test_products import ensemble
from qpe_core.products.cube import ProductCube
ProductCube.open({url!r}, "a").write_slot(ensemble(7))
""")
    assert proc.returncode == 9, proc.stderr
    cube = ProductCube.open(url, "a")
    assert not cube.has_slot(T)
    assert list(cube.times()) == [pd.Timestamp("2024-06-01T12:30")]
    np.testing.assert_array_equal(cube.group["qpe"][cube.index_of(T)], ensemble(7)["rain"].values)  # data got there...
    with pytest.raises(MissingSlotError, match="2024-06-01T12:15Z"):
        cube.read_slot(T)  # ...but it is invisible
    assert np.isnan(float(cube.to_xarray()["qpe_coverage"].sel(time=T)))
    cube.write_slot(ensemble(7))  # the re-run completes the slot
    np.testing.assert_array_equal(cube.read_slot(T)["rain"].values, ensemble(7)["rain"].values)


# ---------------------------------------------------------------------------- COGs
def _check_cog(path, stats, product):
    import rasterio
    from rio_cogeo.cogeo import cog_info, cog_validate

    valid, errors, warnings = cog_validate(str(path))
    assert valid and errors == [] and warnings == [], (errors, warnings)
    info = cog_info(str(path))
    assert info.Tags["Image Structure"]["COMPRESSION"] == "DEFLATE"
    assert info.Tags["Image Structure"]["PREDICTOR"] == "3"
    assert info.Tags["Image Structure"]["LAYOUT"] == "COG"
    assert [ifd.Blocksize for ifd in info.IFD] == [(256, 256), (256, 256)]  # full res + 1 overview
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 3035
        assert src.dtypes == ("float32",) and np.isnan(src.nodata)
        assert src.overviews(1) == [2]
        assert src.transform.c == 3_150_000.0 and src.transform.f == 3_152_000.0 and src.res == (3000.0, 3000.0)
        tags = src.tags()
        assert tags["product"] == product and tags["model_kind"] == "residual-flow"
        assert tags["members"] == "4" and tags["valid_time"] == "2024-06-01T12:15:00Z"
        assert tags["input_slots"] == ",".join(INPUTS) and tags["missing_inputs"] == "2024-06-01T11:30Z"
        assert tags["units"] == ("mm h-1" if product in ("mean", "p90") else "1")
        assert src.tags(1)["units"] == tags["units"] and src.descriptions == (product,)
        np.testing.assert_array_equal(src.read(1), stats[product].values)


def test_cogs_valid_tagged_and_byte_identical(tmp_path):
    stats = ensemble_stats(ensemble(4, missing=["2024-06-01T11:30Z"]))
    paths = write_cogs(stats, tmp_path / "cog")
    assert list(paths) == list(COG_PRODUCTS) == ["mean", "p90", *PROB_VARS]
    assert paths["prob_gt_0p1"] == f"{tmp_path}/cog/france-3km/2024/06/01/qpe_20240601T1215Z_prob_gt_0p1.tif"
    for product, path in paths.items():
        _check_cog(path, stats, product)
    first = _digest(tmp_path / "cog")
    assert len(first) == 6  # no temporary or side-car (.aux.xml) files left behind
    again = write_cogs(ensemble(4, missing=["2024-06-01T11:30Z"]), tmp_path / "cog")  # from the ensemble
    assert again == paths and _digest(tmp_path / "cog") == first


# ---------------------------------------------------------------------------- S3
def test_cube_and_cogs_on_s3(s3_bucket, tmp_path):
    import s3fs
    from rio_cogeo.cogeo import cog_validate

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    url = f"s3://{bucket}/products/france-3km.zarr"
    cube = ProductCube.create(url, AREA, members=4, storage_options=opts)
    cube.ensure_range(T)  # object stores: allocate before writers start (no lock)
    ens = ensemble(5, missing=["2024-06-01T11:30Z"])
    cube.write_slot(ens)
    etags = {p: fs.info(p)["ETag"] for p in fs.find(f"{bucket}/products/france-3km.zarr")}
    cube.write_slot(ens)
    assert {p: fs.info(p)["ETag"] for p in fs.find(f"{bucket}/products/france-3km.zarr")} == etags
    back = ProductCube.open(url, storage_options=opts)
    assert list(back.times()) == [pd.Timestamp(T)]
    np.testing.assert_array_equal(back.read_slot(T)["p90"].values, ensemble_stats(ens)["p90"].values)

    stats = ensemble_stats(ens)
    urls = write_cogs(stats, f"s3://{bucket}/cog", storage_options=opts)
    assert urls["mean"] == f"s3://{bucket}/cog/france-3km/2024/06/01/qpe_20240601T1215Z_mean.tif"
    keys = sorted(fs.find(f"{bucket}/cog"))
    assert keys == sorted(u.removeprefix("s3://") for u in urls.values())  # final keys only, no temp keys
    etags = {k: fs.info(k)["ETag"] for k in keys}
    write_cogs(stats, f"s3://{bucket}/cog", storage_options=opts)
    assert {k: fs.info(k)["ETag"] for k in sorted(fs.find(f"{bucket}/cog"))} == etags
    local = write_cogs(stats, tmp_path / "cog", products=("mean",))["mean"]
    assert fs.cat_file(urls["mean"]) == Path(local).read_bytes()  # same bytes as the local COG
    fetched = tmp_path / "fetched.tif"
    fetched.write_bytes(fs.cat_file(urls["prob_gt_1"]))
    assert cog_validate(str(fetched))[0]


# ---------------------------------------------------------------------------- quick-look
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_quicklook_png_with_coastlines(tmp_path):
    import matplotlib.image

    # the shipped coastlines project into the France grid (Channel, Atlantic and Mediterranean coasts)
    lonlat = load_coastlines()
    assert lonlat.shape[1] == 2 and np.isnan(lonlat[:, 0]).any()
    x, y = projected_coastlines(AREA)
    x0, y0, x1, y1 = get_spec(AREA).extent
    inside = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    assert inside.sum() > 500
    assert (Path(__file__).parents[1] / "qpe_core/products/coastlines.npz").stat().st_size < 1_000_000

    stats = ensemble_stats(ensemble(6))
    path = write_quicklook(stats, tmp_path / "ql")
    assert path == product_path(tmp_path / "ql", AREA, T, "quicklook", "png")
    assert path.endswith("france-3km/2024/06/01/qpe_20240601T1215Z_quicklook.png")
    data = Path(path).read_bytes()
    assert _png_size(data) == (1000, 480)
    bare = write_quicklook(stats, tmp_path, coastlines=False, path=str(tmp_path / "bare.png"))
    assert Path(bare).read_bytes() != data
    with_c, without = matplotlib.image.imread(path)[..., :3], matplotlib.image.imread(bare)[..., :3]
    dark = lambda img: int((img.max(axis=-1) < 0.2).sum())  # noqa: E731
    assert dark(with_c) > dark(without) + 500  # coastline pixels are drawn
    changed = np.argwhere(np.abs(with_c - without).sum(-1) > 0.3)
    assert changed[:, 1].min() < 500 < changed[:, 1].max()  # in both panels
    assert sorted(p.name for p in Path(path).parent.iterdir()) == [Path(path).name]  # atomic: no temp left


def test_publishing_a_slot_waits_for_another_publisher_of_it(tmp_path):
    """Two runs of one slot publish one after the other (a rewrite hides the slot for a moment, which
    failed the other run's STAC step): publish_products holds the slot's lock throughout."""
    import threading

    from qpe_core.nowcast import publish_products

    prod = str(tmp_path / "prod")
    cube = ProductCube.open_or_create(f"{prod}/{AREA}.zarr", AREA, 4)
    done = threading.Event()
    with cube.slot_lock(T):  # another run is publishing this slot
        th = threading.Thread(target=lambda: (publish_products(ensemble(1), prod, AREA), done.set()))
        th.start()
        assert not done.wait(2.0), "published while another run held the slot"
    th.join(120)
    assert done.is_set() and ProductCube.open(f"{prod}/{AREA}.zarr").has_slot(T)


def test_publishing_a_slot_on_s3_waits_for_another_publisher_of_it(s3_bucket):
    """The same on an object store: the slot lock is an object created with an exclusive write
    (If-None-Match), honoured by the local S3 server; the lock object is gone afterwards."""
    import threading

    import s3fs

    from qpe_core.nowcast import publish_products

    bucket, opts = s3_bucket
    prod = f"s3://{bucket}/prod"
    cube = ProductCube.open_or_create(f"{prod}/{AREA}.zarr", AREA, 4, storage_options=opts)
    done = threading.Event()
    with cube.slot_lock(T):
        fs = s3fs.S3FileSystem(**opts)
        assert fs.find(f"{bucket}/prod/{AREA}.zarr.locks") == [f"{bucket}/prod/{AREA}.zarr.locks/20240601T1215.lock"]
        th = threading.Thread(target=lambda: (publish_products(ensemble(1), prod, AREA, opts), done.set()))
        th.start()
        assert not done.wait(3.0), "published while another run held the slot"
    th.join(120)
    assert done.is_set() and ProductCube.open(f"{prod}/{AREA}.zarr", storage_options=opts).has_slot(T)
    assert fs.find(f"{bucket}/prod/{AREA}.zarr.locks", refresh=True) == []


def test_object_lock_takes_over_a_dead_holders_lock_and_times_out_naming_it(s3_bucket):
    import json
    import time

    import s3fs

    from qpe_core.errors import ArchiveError
    from qpe_core.object_lock import object_lock

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    url = f"s3://{bucket}/cube.zarr.locks/20240601T1215.lock"
    fs.pipe_file(url, json.dumps({"owner": "dead-worker", "expires": time.time() - 1}).encode())
    with object_lock(url, opts, timeout=5):  # the lease ended: taken over at once
        assert json.loads(fs.cat_file(url))["owner"] != "dead-worker"
        with pytest.raises(ArchiveError, match=r"slot 2024-06-01T12:15Z: still held by .* after 1 s.*20240601T1215.lock"):
            with object_lock(url, opts, timeout=1, what="slot 2024-06-01T12:15Z"):
                pass
    fs.invalidate_cache()
    assert not fs.exists(url)
