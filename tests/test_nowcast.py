"""The nowcast cycle (qpe_core.nowcast) and its Prefect flows, on the simulated source."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rio_cogeo.cogeo import cog_validate

from conftest import prefect_artifacts, prefect_events, tiny_checkpoint
from qpe_core.archive import Archive
from qpe_core.nowcast import check_fresh, newest_slot, run_cycle
from qpe_core.products.cube import ProductCube
from qpe_core.sources import make_source
from qpe_core.errors import QpeError

CH = ["WV_062", "IR_108", "IR_120"]
SLOT = "2024-06-01T01:00"


@pytest.fixture(scope="module")
def source():
    return make_source("simulated", area="france-3km", seed=2, channels=CH)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck"), CH, seed=2, slots=6)


def test_newest_slot_and_freshness():
    assert newest_slot("2024-06-01T12:34Z") == pd.Timestamp("2024-06-01T12:00")
    check_fresh("2024-06-01T12:00", now="2024-06-01T12:30Z")
    with pytest.raises(QpeError, match="stale: 300 min old"):
        check_fresh("2024-06-01T12:00", now="2024-06-01T17:00Z")
    with pytest.raises(QpeError, match="in the future"):
        check_fresh("2024-06-01T12:00", now="2024-06-01T11:00Z")


def test_cycle_products_skip_and_stale(tmp_path, source, checkpoint):
    kw = dict(archive_url=str(tmp_path / "a.zarr"), products_url=str(tmp_path / "prod"), checkpoint=checkpoint,
              source=source, members=3, seed=1)
    res = run_cycle(slot=SLOT, now="2024-06-01T01:30Z", **kw)
    assert res.status == "done", res.reason
    assert res.inputs_present == ["2024-06-01T01:00Z", "2024-06-01T00:45Z"] and res.missing_inputs == []
    assert res.members == 3 and 0 <= res.rain_area_fraction <= 1
    cogs = [p for k, p in res.products.items() if k not in ("cube", "quicklook", "stac_item")]
    assert len(cogs) == 6 and all(cog_validate(p)[0] for p in cogs)
    assert Path(res.products["quicklook"]).stat().st_size > 10_000
    assert ProductCube.open(res.products["cube"]).has_slot(SLOT)
    again = run_cycle(slot=SLOT, now="2024-06-01T01:30Z", **kw)
    assert again.status == "skipped"
    stale = run_cycle(slot="2024-06-01T00:45", now="2024-06-01T06:00Z", **kw)
    assert stale.status == "stale" and "stale" in stale.reason


def test_cycle_events_for_a_product_and_each_missing_input():
    from qpe_core.events import INPUT_MISSING, PRODUCT_PUBLISHED, cycle_events
    from qpe_core.nowcast import CycleResult

    res = CycleResult("2024-06-01T01:00Z", "done", inputs_present=["2024-06-01T01:00Z"],
                      missing_inputs=["2024-06-01T00:45Z"], members=4, rain_area_fraction=float("nan"),
                      max_rate_mm_h=12.5, products={"cube": "s3://b/p.zarr"}, area="france-3km", model_kind="unet")
    pub, miss = cycle_events(res, "data/ck/u")
    assert pub["event"] == PRODUCT_PUBLISHED and pub["payload"]["missing_inputs"] == 1
    assert pub["payload"]["rain_area_fraction"] is None and pub["payload"]["max_rate_mm_h"] == 12.5  # JSON-safe
    assert miss["event"] == INPUT_MISSING and miss["resource"]["qpe.slot"] == "2024-06-01T00:45Z"
    assert miss["payload"]["for_slot"] == "2024-06-01T01:00Z"
    failed = CycleResult("2024-06-01T01:00Z", "failed", missing_inputs=["a", "b"], area="france-3km")
    assert [e["event"] for e in cycle_events(failed, "x")] == [INPUT_MISSING, INPUT_MISSING]


def test_nowcast_and_backfill_flows(prefect_server, tmp_path, checkpoint, monkeypatch):
    from flows.nowcast import backfill, nowcast

    monkeypatch.setenv("QPE_CHANNELS", ",".join(CH))
    kw = dict(checkpoint=checkpoint, members=2, seed=2, archive_url=str(tmp_path / "a.zarr"),
              products_url=str(tmp_path / "prod"))
    out = nowcast(valid_time=SLOT, max_age_minutes=10**9, **kw)
    assert out["status"] == "done" and out["members"] == 2
    assert prefect_artifacts("nowcast") and prefect_artifacts("nowcast-quicklook")
    # the server is shared by the session: this test's event is the one of its own checkpoint
    (ev,) = prefect_events("qpe.product.published", lambda e: e["payload"]["model_card"] == str(checkpoint),
                           resource_id="qpe.product.france-3km.2024-06-01T01:00Z")
    assert ev["resource"]["prefect.resource.id"] == "qpe.product.france-3km.2024-06-01T01:00Z"
    assert ev["resource"]["qpe.area"] == "france-3km" and ev["resource"]["qpe.model"] == "residual-flow"
    pay = ev["payload"]
    assert pay["missing_inputs"] == 0 and pay["members"] == 2 and pay["model_card"] == str(checkpoint)
    assert set(pay["products"]) >= {"cube", "quicklook"} and all(Path(u).exists() for u in pay["products"].values())
    summary = backfill(start="2024-06-01T00:45Z", end="2024-06-01T01:00Z", **kw)
    assert summary == {"slots": 2, "done": 1, "skipped": 1, "failed": 0, "stale": 0}
    # the quick-look artifact carries the animated loop of the ensemble mean: 00:45, 01:00, 01:15
    import base64
    import io

    from PIL import Image

    assert nowcast(valid_time="2024-06-01T01:15", max_age_minutes=10**9, **kw)["status"] == "done"
    md = max(prefect_artifacts("nowcast-quicklook"), key=lambda a: a.created).data
    gif = base64.b64decode(md.split("data:image/gif;base64,")[1].split(")")[0])
    img = Image.open(io.BytesIO(gif))
    assert img.format == "GIF" and img.n_frames == 3 and max(img.size) <= 192 and len(gif) < 500_000
    assert "backfill" in str(prefect_artifacts("backfill")[0].key)


HRIT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seviri" / "hrit-20100119"
HRIT_CH = ["IR_039", "IR_108", "IR_134"]


def test_backfill_on_local_replay_names_the_bad_slot(prefect_server, tmp_path, monkeypatch):
    """Backfill over real HRIT granules replayed from disk: 12:00 has its granule and completes,
    11:45 has none and fails; the run goes on and its table names the failed slot and why."""
    if not HRIT_DIR.is_dir():
        pytest.skip(f"real HRIT sample not found at {HRIT_DIR} (clone next to shared/)")
    from flows.nowcast import backfill

    ck = tiny_checkpoint(tmp_path, HRIT_CH, kind="unet", lags=[0], slots=2, seed=3)
    monkeypatch.setenv("QPE_CHANNELS", ",".join(HRIT_CH))
    summary = backfill(start="2010-01-19T11:45Z", end="2010-01-19T12:00Z", checkpoint=ck, source="local",
                       source_dir=str(HRIT_DIR), members=1, archive_url=str(tmp_path / "a.zarr"),
                       products_url=str(tmp_path / "prod"))
    assert summary == {"slots": 2, "done": 1, "skipped": 0, "failed": 1, "stale": 0}
    tables = [a.data if isinstance(a.data, list) else json.loads(a.data) for a in prefect_artifacts("backfill")]
    (rows,) = [t for t in tables if any(r["slot"].startswith("2010-01-19") for r in t)]  # this run's table
    bad = [r for r in rows if r["status"] == "failed"]
    assert len(bad) == 1 and bad[0]["slot"].startswith("2010-01-19T11:45") and bad[0]["reason"]
    assert ProductCube.open(str(tmp_path / "prod" / "france-3km.zarr")).has_slot("2010-01-19T12:00Z")


def test_duplicate_concurrent_runs_of_one_slot_give_one_output(tmp_path, source, checkpoint):
    """Two cycles for the same slot at once (a retried run overlapping the original): both end
    well, the slot is in the cube once, and every product is complete and the same bytes as a
    single undisturbed run's (same seed)."""
    from concurrent.futures import ThreadPoolExecutor

    def cycle(root):
        return run_cycle(archive_url=str(root / "a.zarr"), products_url=str(root / "prod"), checkpoint=checkpoint,
                         source=source, members=2, seed=4, slot=SLOT, now="2024-06-01T01:30Z")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(cycle, [tmp_path / "dup"] * 2))
    assert sorted(r.status for r in results) in (["done", "done"], ["done", "skipped"]), [r.reason for r in results]
    single = cycle(tmp_path / "single")
    assert single.status == "done"
    done = next(r for r in results if r.status == "done")
    for key, path in single.products.items():
        if key in ("cube", "quicklook", "stac_item"):
            continue
        assert cog_validate(done.products[key])[0]
        assert Path(done.products[key]).read_bytes() == Path(path).read_bytes(), key
    cube = ProductCube.open(done.products["cube"])
    assert cube.has_slot(SLOT) and list(cube.times()) == [pd.Timestamp(SLOT)]


def test_concurrent_cycles_bring_a_shared_lag_slot_once(tmp_path):
    """Slots 01:00 and 01:15 share the lag slot 01:00: brought at the same time by two threads, each
    slot is simulated and written exactly once (per-slot lock), so no writer clears a slot's
    marker under the other cycle."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from qpe_core.nowcast import ensure_inputs
    from qpe_core.sources.simulated import SimulatedSource

    class SlowCountingSource(SimulatedSource):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.calls, self._mutex = [], threading.Lock()

        def simulate_slot(self, slot):
            with self._mutex:
                self.calls.append(pd.Timestamp(slot))
            time.sleep(0.3)  # widen the window between "missing" and "written"
            return super().simulate_slot(slot)

    src = SlowCountingSource("france-3km", seed=5, channels=CH)
    arc = Archive.create(str(tmp_path / "a.zarr"), "france-3km", CH, origin="2024-06-01T00:00Z")
    arc.ensure_range(pd.Timestamp("2024-06-01T00:00Z"), pd.Timestamp("2024-06-01T02:00Z"))
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda s: ensure_inputs(arc, src, s, [0, -15]),
                            ["2024-06-01T01:00Z", "2024-06-01T01:15Z"]))
    assert [o[1] for o in out] == [[], []]  # nothing missing for either cycle
    assert sorted(t.strftime("%H:%M") for t in src.calls) == ["00:45", "01:00", "01:15"]  # 01:00 once


def test_stac_catalogue_written_by_cycles_and_rebuilt(tmp_path, source, checkpoint):
    import pystac

    from qpe_core.products import stac

    prod = tmp_path / "prod"
    kw = dict(archive_url=str(tmp_path / "a.zarr"), products_url=str(prod), checkpoint=checkpoint, source=source,
              members=2, seed=1, now="2024-06-01T01:30Z")
    for slot in ("2024-06-01T00:45", SLOT):
        res = run_cycle(slot=slot, **kw)
        assert res.status == "done", res.reason
    cat = pystac.Catalog.from_file(str(prod / "stac" / "catalog.json"))
    (col,) = list(cat.get_children())
    assert col.id == "qpe-france-3km"
    items = sorted(col.get_items(), key=lambda i: i.id)
    assert [i.id for i in items] == ["france-3km-20240601T0045", "france-3km-20240601T0100"]
    item = items[-1]
    assert item.datetime.isoformat() == "2024-06-01T01:00:00+00:00" and res.products["stac_item"].endswith(f"{item.id}.json")
    assert item.properties["proj:code"] == "EPSG:3035" and item.properties["proj:shape"] == [384, 384]
    assert item.properties["qpe:members"] == 2 and item.properties["qpe:missing_inputs"] == []
    assert item.assets["thumbnail"].roles == ["thumbnail"] and "zarr" in item.assets
    assert {"mean", "p90"} <= set(item.assets)
    for a in item.assets.values():  # every asset exists
        assert Path(a.href).exists(), a.href
    assert [str(t.isoformat()) for t in col.extent.temporal.intervals[0]] == ["2024-06-01T00:45:00+00:00",
                                                                            "2024-06-01T01:00:00+00:00"]
    # rebuilt from the products alone: the same items
    import shutil

    shutil.rmtree(prod / "stac")
    assert stac.rebuild(str(prod)) == {"france-3km": 2}
    from typer.testing import CliRunner

    from qpe_core.cli import app

    shutil.rmtree(prod / "stac")
    done = CliRunner().invoke(app, ["catalog", str(prod)])
    assert done.exit_code == 0 and "france-3km: 2 items" in done.output
    again = pystac.Catalog.from_file(str(prod / "stac" / "catalog.json"))
    assert sorted(i.id for i in again.get_items(recursive=True)) == [i.id for i in items]
