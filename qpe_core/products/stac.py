"""A STAC catalogue of the products (pystac): one Item per slot, one Collection per area.

Layout, next to the products (local folder or ``s3://``)::

    <products>/stac/catalog.json                       root Catalog, links to every area's Collection
    <products>/stac/<area>/collection.json              Collection: extent = grid bbox x slots published
    <products>/stac/<area>/items/<area>-<YYYYmmddTHHMM>.json   one Item per slot

An Item's assets are the slot's COGs (``mean``, ``p90``, ``prob_gt_*``; role ``data``), the
quick-look PNG (role ``thumbnail``) and the product Zarr cube (role ``data``, all slots); its
properties hold the projection (``proj:code``, ``proj:shape``, ``proj:transform``: the projection
extension) and the slot's model card as the cube records it (model kind and card path, members,
seed, sampler steps, input slots, missing inputs). Asset hrefs are absolute (the product URLs).

Every file is written atomically (:func:`~qpe_core.products.cog.publish`: temporary file renamed,
or one PUT on S3). :func:`add_slot` is called by each nowcast / backfill cycle after its products;
the Collection is rebuilt from the Item files present, so concurrent cycles can only leave it one
Item short until the next cycle, and ``qpe catalog PRODUCTS`` rebuilds everything from the products
on disk (:func:`rebuild`).
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pandas as pd

from qpe_core.grids import get_area, get_spec
from qpe_core.products.cog import COG_PRODUCTS, product_path, publish
from qpe_core.products.cube import ProductCube
from qpe_core.timeutil import iso, to_utc

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def _root(products_url: str) -> str:
    return str(products_url).removeprefix("file://").rstrip("/")


def item_id(area: str, slot) -> str:
    return f"{area}-{to_utc(slot):%Y%m%dT%H%M}"


def _geometry(area: str) -> tuple[list[float], dict]:
    """Lon/lat bbox and polygon of the grid (degrees)."""
    lon0, lat0, lon1, lat1 = get_area(area).area_extent_ll
    bbox = [float(min(lon0, lon1)), float(min(lat0, lat1)), float(max(lon0, lon1)), float(max(lat0, lat1))]
    w, s, e, n = bbox
    return bbox, {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def slot_item(cube: ProductCube, slot, products_url: str):
    """The STAC Item of one complete slot of ``cube`` (assets that are missing are left out)."""
    import pystac

    area, ts, root = cube.area, to_utc(slot), _root(products_url)
    meta = cube.slot_metadata(ts)
    spec, a = get_spec(area), get_area(area)
    bbox, geom = _geometry(area)
    x0, y0, x1, y1 = a.area_extent
    props = {"proj:code": f"EPSG:{a.crs.to_epsg()}", "proj:shape": [spec.height, spec.width],
             "proj:transform": [(x1 - x0) / spec.width, 0.0, x0, 0.0, -(y1 - y0) / spec.height, y1, 0.0, 0.0, 1.0],
             "qpe:model_kind": meta.get("model_kind"), "qpe:model_card": meta.get("model_card"),
             "qpe:members": meta.get("members"), "qpe:seed": meta.get("seed"), "qpe:steps": meta.get("steps"),
             "qpe:input_slots": meta.get("input_slots"), "qpe:missing_inputs": meta.get("missing_inputs"),
             "description": f"ensemble rain rate (mm/h) estimated from MSG SEVIRI for {iso(ts)} on {area}"}
    item = pystac.Item(item_id(area, ts), geom, bbox, ts.tz_localize("UTC").to_pydatetime(), props,
                       stac_extensions=[PROJECTION], collection=f"qpe-{area}")
    for rel in ("collection", "parent"):
        item.add_link(pystac.Link(rel, "../collection.json", media_type="application/json"))
    fs, _ = fsspec.core.url_to_fs(root, **(cube.storage_options or {}))
    for name in COG_PRODUCTS:
        href = product_path(root, area, ts, name)
        if fs.exists(href):
            item.add_asset(name, pystac.Asset(href, f"{name} (mm/h or probability)", media_type=COG_TYPE, roles=["data"]))
    thumb = product_path(root, area, ts, "quicklook", "png")
    if fs.exists(thumb):
        item.add_asset("thumbnail", pystac.Asset(thumb, "quick-look", media_type="image/png", roles=["thumbnail"]))
    item.add_asset("zarr", pystac.Asset(cube.url, "product cube (all slots; time = slot)",
                                        media_type="application/vnd+zarr", roles=["data"]))
    return item


def _write_json(obj: dict, dest: str, storage_options: dict | None) -> str:
    return publish(lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)), dest, storage_options)


def add_slot(products_url: str, area: str, slot, storage_options: dict | None = None) -> str:
    """Write the Item of ``slot`` and refresh the area's Collection and the root Catalog; returns the Item's URL."""
    cube = ProductCube.open(f"{_root(products_url)}/{area}.zarr", storage_options=storage_options)
    url = _write_item(slot_item(cube, slot, products_url), products_url, area, storage_options)
    write_collection(products_url, area, storage_options)
    return url


def _write_item(item, products_url: str, area: str, storage_options: dict | None) -> str:
    return _write_json(item.to_dict(include_self_link=False, transform_hrefs=False),
                       f"{_root(products_url)}/stac/{area}/items/{item.id}.json", storage_options)


def write_collection(products_url: str, area: str, storage_options: dict | None = None) -> str:
    """The area's Collection from the Item files present, and the root Catalog listing the areas."""
    import pystac

    root = _root(products_url)
    base = f"{root}/stac/{area}"
    fs, _ = fsspec.core.url_to_fs(root, **(storage_options or {}))
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{base}/items/*.json"))
    times = [pd.Timestamp(n.rsplit("-", 1)[-1].removesuffix(".json"), tz="UTC") for n in names]
    bbox, _ = _geometry(area)
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent(
        [[min(times).to_pydatetime(), max(times).to_pydatetime()] if times else [None, None]]))
    col = pystac.Collection(f"qpe-{area}", f"QPE ensemble rain-rate products on {area} (MSG SEVIRI)", extent,
                            license="proprietary", stac_extensions=[PROJECTION])
    col.add_link(pystac.Link("root", "../catalog.json", media_type="application/json"))
    for n in names:
        col.add_link(pystac.Link("item", f"./items/{n}", media_type="application/geo+json"))
    url = _write_json(col.to_dict(include_self_link=False, transform_hrefs=False), f"{base}/collection.json",
                      storage_options)
    areas = sorted(p.rstrip("/").rsplit("/", 2)[-2] for p in fs.glob(f"{root}/stac/*/collection.json"))
    cat = pystac.Catalog("qpe", "QPE products: one collection per grid")
    for a in areas:
        cat.add_link(pystac.Link("child", f"./{a}/collection.json", media_type="application/json"))
    _write_json(cat.to_dict(include_self_link=False, transform_hrefs=False), f"{root}/stac/catalog.json",
                storage_options)
    return url


def rebuild(products_url: str, storage_options: dict | None = None) -> dict[str, int]:
    """Items for every complete slot of every product cube under ``products_url``; {area: items}."""
    root = _root(products_url)
    fs, _ = fsspec.core.url_to_fs(root, **(storage_options or {}))
    out = {}
    for path in sorted(fs.glob(f"{root}/*.zarr")):
        area = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
        cube = ProductCube.open(f"{root}/{area}.zarr", storage_options=storage_options)
        for t in cube.times():
            _write_item(slot_item(cube, t, products_url), products_url, area, storage_options)
        write_collection(products_url, area, storage_options)
        out[area] = len(cube.times())
    return out
