"""Live verification (qpe_core.live_verification, flows/verify.py) on a tiny simulated archive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import prefect_artifacts
from qpe_core.archive import Archive
from qpe_core.grids import attach_grid
from qpe_core.live_verification import (
    ScoreStore,
    aggregate,
    default_store_url,
    score_fields,
    score_slot,
    update_live_scores,
)
from qpe_core.products.cube import ProductCube
from qpe_core.sources import make_source
from qpe_core.verification.suite import VerificationSuite

AREA = "france-3km"
M = 4
DAY1 = list(pd.date_range("2024-06-01T00:00", periods=2, freq="15min"))
DAY2 = list(pd.date_range("2024-06-02T12:00", periods=3, freq="15min"))
SLOTS = DAY1 + DAY2
LATE = DAY2[-1]  # its radar arrives after the first verification run
NOW = "2024-06-02T12:40Z"


def ensemble_ds(members: np.ndarray, t: pd.Timestamp) -> xr.Dataset:
    ds = xr.Dataset({"rain": (("member", "y", "x"), members.astype("float32"))},
                    coords={"member": np.arange(members.shape[0]), "time": t.to_datetime64()},
                    attrs={"model_kind": "residual-flow", "checkpoint": "data/ck/test", "members": members.shape[0],
                           "seed": 0, "steps": 4, "input_slots": [], "missing_inputs": []})
    return attach_grid(ds, AREA)


def radar_ds(rain: np.ndarray, t: pd.Timestamp) -> xr.Dataset:
    return attach_grid(xr.Dataset({"rain": (("y", "x"), rain.astype("float32"))},
                                  coords={"time": t.to_datetime64()}, attrs={"area": AREA}), AREA)


@pytest.fixture(scope="module")
def fields():
    """Radar (simulator) and a 4-member perturbed, shifted ensemble per slot; radar NaN in a corner of one."""
    src = make_source("simulated", area=AREA, seed=5, channels=["IR_108"])
    rng = np.random.default_rng(1)
    out = {}
    for k, t in enumerate(SLOTS):
        rain = src.simulate_slot(t)[1]["rain"].values.astype("float32")
        if k == 1:
            rain[:100, :150] = np.nan  # part of the radar composite missing
        base = np.nan_to_num(np.roll(rain, (2, -3), axis=(0, 1)))
        members = base[None] * rng.lognormal(0.0, 0.6, (M, *rain.shape)) + rng.gamma(0.3, 0.5, (M, *rain.shape))
        members[:, :12, :] = np.nan  # no estimate in the first rows, as predict does where inputs are invalid
        out[t] = (rain, members.astype("float32"))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, fields):
    """Archive (radar for every slot but LATE) + product cube (every slot), built once."""
    root = tmp_path_factory.mktemp("live")
    arc = Archive.create(str(root / "archive.zarr"), AREA, ["IR_108"])
    cube = ProductCube.create(str(root / "products" / f"{AREA}.zarr"), AREA, members=M)
    for t, (rain, members) in fields.items():
        cube.write_slot(ensemble_ds(members, t))
        if t != LATE:
            arc.write_radar(radar_ds(rain, t))
    return root


@pytest.fixture
def site(base, tmp_path):
    """A private copy of the base archive and products: (archive, products, root)."""
    root = tmp_path / "site"
    shutil.copytree(base, root)
    cube = ProductCube.open(str(root / "products" / f"{AREA}.zarr"))
    return Archive.open(str(root / "archive.zarr"), "a"), cube, root


def batch(fields: dict, slots) -> dict:
    """The same scores from a VerificationSuite run over ``slots`` plus a numpy wet fraction."""
    suite = VerificationSuite(pixel_km=3.0, thresholds=(1.0,), quantiles=(), fss_scales=(8,), pool_sizes=(1,))
    wet_f = wet_o = 0.0
    for t in slots:
        rain, members = fields[t]
        suite.update(members, rain)
        ok = np.isfinite(rain) & np.isfinite(members).all(axis=0)
        wet_f += (members[:, ok] >= 0.1).sum() / M
        wet_o += (rain[ok] >= 0.1).sum()
    res = suite.compute()
    return {"slots": res["meta"]["slots"], "pixels": res["meta"]["pixels"],
            "MAE": res["continuous"]["mean"]["all"]["MAE"], "RMSE": res["continuous"]["mean"]["all"]["RMSE"],
            "CSI_1": res["categorical"]["mean"]["1"]["CSI"], "FSS_1_24km": res["fss"]["mean"]["1"]["fss"][0],
            "CRPS": res["ensemble"]["crps"]["1x1"], "spread_skill": res["ensemble"]["spread_skill"]["ratio"],
            "brier_1": res["ensemble"]["probabilistic"]["1"]["brier"], "wet_fraction_ratio": wet_f / wet_o}


def check_equal(window: dict, expected: dict) -> None:
    assert window["slots"] == expected["slots"] and window["pixels"] == expected["pixels"]
    for key in ("MAE", "RMSE", "CSI_1", "FSS_1_24km", "CRPS", "spread_skill", "brier_1", "wet_fraction_ratio"):
        assert window[key] == pytest.approx(expected[key], rel=1e-9), key


def store_files(root: Path) -> list[Path]:
    return sorted((root / "products" / "verification").rglob("*.json"))


# ---------------------------------------------------------------------------- one slot
def test_perfect_product_and_hand_made_scores(tmp_path):
    rng = np.random.default_rng(0)
    truth = (rng.gamma(0.5, 2.0, (40, 40)) * (rng.random((40, 40)) > 0.5)).astype("float32")
    truth[0, :5] = np.nan
    row = score_fields(np.repeat(truth[None], 3, axis=0), truth)
    agg = aggregate([row])
    assert row["pixels"] == 1595 and row["hits"] > 0 and row["misses"] == row["false_alarms"] == 0
    assert agg["CSI_1"] == 1.0 and agg["MAE"] == 0.0 and agg["CRPS"] == pytest.approx(0.0, abs=1e-12)
    assert agg["FSS_1_24km"] == 1.0 and agg["brier_1"] == 0.0 and agg["wet_fraction_ratio"] == 1.0
    assert agg["spread"] == 0.0 and np.isnan(agg["spread_skill"])  # no error, no spread: undefined ratio

    # two members (0, 2) mm/h against 1 mm/h: CRPS = E|X - y| - E|X - X'| / 2 = 1 - 0.5; mean 1 -> a hit
    members = np.zeros((2, 8, 8))
    members[1] = 2.0
    agg = aggregate([score_fields(members, np.ones((8, 8)))])
    assert agg["CRPS"] == pytest.approx(0.5) and agg["MAE"] == 0.0 and agg["CSI_1"] == 1.0
    assert agg["brier_1"] == pytest.approx(0.25) and agg["wet_fraction_ratio"] == 0.5
    assert agg["spread"] == pytest.approx(np.sqrt(2.0 * 1.5))  # var (ddof 1) 2, times (1 + 1/m)

    # the same through the cubes: a perfect product slot, and None when radar or product is missing
    t = pd.Timestamp("2024-06-01T06:00")
    field = np.zeros((384, 384), "float32")
    field[100:140, 200:260] = 4.0
    arc = Archive.create(str(tmp_path / "a.zarr"), AREA, ["IR_108"])
    cube = ProductCube.create(str(tmp_path / "p" / f"{AREA}.zarr"), AREA, members=M)
    cube.write_slot(ensemble_ds(np.repeat(field[None], M, axis=0), t))
    assert score_slot(cube, arc, t) is None  # no radar yet
    arc.write_radar(radar_ds(field, t))
    row = score_slot(cube, arc, t)
    assert score_slot(cube, arc, t + pd.Timedelta("15min")) is None  # no product
    agg = aggregate([row])
    assert (agg["CSI_1"], agg["MAE"], agg["CRPS"], agg["FSS_1_24km"]) == (1.0, 0.0, 0.0, 1.0)
    assert row["time"] == "2024-06-01T06:00Z" and row["radar_coverage"] == 1.0 and row["members"] == M
    assert row["model_kind"] == "residual-flow" and row["fss_scale_km"] == 24.0
    assert default_store_url(cube) == f"{tmp_path}/p/verification/{AREA}"


# ---------------------------------------------------------------------------- rolling windows
def test_rolling_windows_equal_batch_idempotent_and_late_radar(site, fields):
    arc, cube, root = site
    first = update_live_scores(cube, arc, now=NOW)
    have = [t for t in SLOTS if t != LATE]
    assert first["scored"] == [f"{t:%Y-%m-%dT%H:%M}Z" for t in have]
    assert first["pending"] == ["2024-06-02T12:30Z"] and first["rescored"] == []
    check_equal(first["windows"]["7d"], batch(fields, have))
    check_equal(first["windows"]["24h"], batch(fields, DAY2[:-1]))
    assert [s["time"] for s in first["series"]] == first["scored"]
    assert len(store_files(root)) == 4

    again = update_live_scores(cube, arc, now=NOW)  # nothing new: nothing scored, same aggregates
    assert again["scored"] == again["rescored"] == [] and again["windows"] == first["windows"]
    forced = update_live_scores(cube, arc, now=NOW, rescore=True)  # rows replaced, not duplicated
    assert len(forced["rescored"]) == 4 and forced["windows"] == first["windows"]
    assert len(store_files(root)) == 4

    arc.write_radar(radar_ds(fields[LATE][0], LATE))  # the radar of the last slot arrives
    late = update_live_scores(cube, arc, now=NOW)
    assert late["scored"] == ["2024-06-02T12:30Z"] and late["pending"] == [] and late["rescored"] == []
    check_equal(late["windows"]["7d"], batch(fields, SLOTS))
    check_equal(late["windows"]["24h"], batch(fields, DAY2))

    changed = fields[DAY1[0]][0].copy()  # a corrected composite (different coverage) replaces a slot
    changed[200:, :] = np.nan
    arc.write_radar(radar_ds(changed, DAY1[0]))
    redo = update_live_scores(cube, arc, now=NOW)
    assert redo["rescored"] == ["2024-06-01T00:00Z"] and redo["scored"] == []
    fields2 = {**fields, DAY1[0]: (changed, fields[DAY1[0]][1])}
    check_equal(redo["windows"]["7d"], batch(fields2, SLOTS))
    assert len(store_files(root)) == 5

    # the windows are relative to `now`; the lookback bounds what gets scored
    later = update_live_scores(cube, arc, now="2024-06-03T13:00Z", lookback="1h")
    assert later["windows"]["24h"]["slots"] == 0 and later["windows"]["7d"]["slots"] == 5
    assert later["windows"]["24h"]["CSI_1"] is None and later["scored"] == []


_DIE_AT_THIRD_RENAME = """
import os, sys
real = os.replace
calls = []
def dying_replace(src, dst):
    if str(dst).endswith(".json"):
        calls.append(dst)
        if len(calls) == 3:
            os._exit(9)  # the third row is in its temp file, not yet renamed
    return real(src, dst)
os.replace = dying_replace
from qpe_core.archive import Archive
from qpe_core.live_verification import update_live_scores
from qpe_core.products.cube import ProductCube
update_live_scores(ProductCube.open({cube!r}), Archive.open({arc!r}), now={now!r})
"""


def test_crash_mid_write_leaves_a_readable_store(site, fields):
    arc, cube, root = site
    proc = subprocess.run([sys.executable, "-c", _DIE_AT_THIRD_RENAME.format(cube=cube.url, arc=arc.url, now=NOW)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    store = ScoreStore(default_store_url(cube))
    assert [r["time"] for r in store.rows("2024-05-30", NOW)] == ["2024-06-01T00:00Z", "2024-06-01T00:15Z"]
    temps = list((root / "products" / "verification").rglob("*.tmp"))
    assert len(temps) == 1 and temps[0].name.startswith(".scores_20240602T1200Z.")
    assert temps[0].name.endswith(".json.tmp")

    # a row damaged outside our writer (e.g. a partial copy) is reported and scored again
    damaged = Path(store.path("2024-06-01T00:15"))
    damaged.write_text(damaged.read_text()[:40])
    with pytest.warns(UserWarning, match="unreadable score row"):
        res = update_live_scores(cube, arc, now=NOW)
    assert res["scored"] == ["2024-06-01T00:15Z", "2024-06-02T12:00Z", "2024-06-02T12:15Z"]
    check_equal(res["windows"]["7d"], batch(fields, [t for t in SLOTS if t != LATE]))
    assert len(store_files(root)) == 4

    os.utime(temps[0], (0, 0))  # a temp file older than an hour is swept by the next listing
    store.rows("2024-06-02", NOW)
    assert not temps[0].exists()


def test_score_store_on_s3(s3_bucket):
    bucket, opts = s3_bucket
    store = ScoreStore(f"s3://{bucket}/products/verification/{AREA}", opts)
    row = {"time": "2024-06-01T12:15Z", "pixels": 3, "value": float("nan")}
    store.write(row)
    store.write({**row, "pixels": 4})  # replaces the row
    assert store.read("2024-06-01T12:15") == {"time": "2024-06-01T12:15Z", "pixels": 4, "value": None}
    assert [r["pixels"] for r in store.rows("2024-06-01", "2024-06-02")] == [4]
    assert store.read("2024-06-01T12:30") is None


# ---------------------------------------------------------------------------- the flow
def test_flow_publishes_table_and_plot(prefect_server, site, fields):
    from flows.verify import live_verification

    arc, cube, root = site
    out = live_verification(products_url=str(root / "products"), archive_url=arc.url, lookback="7D", now=NOW)
    assert len(out["scored"]) == 4 and out["windows"]["7d"]["slots"] == 4
    check_equal(out["windows"]["24h"], batch(fields, DAY2[:-1]))
    table = prefect_artifacts("live-verification")
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert [r["window"] for r in rows] == ["24 h", "7 d"]
    assert set(rows[0]) == {"window", "slots", "MAE", "CSI 1", "FSS 24 km", "CRPS", "wet fraction ratio",
                            "spread/skill"}
    assert rows[1]["slots"] == 4 and rows[0]["CSI 1"] == pytest.approx(out["windows"]["24h"]["CSI_1"], abs=1e-4)
    plot = prefect_artifacts("live-verification-plot")
    assert "data:image/png;base64,iVBORw0KGgo" in plot[0].data  # an inline PNG

    empty = live_verification(products_url=str(root / "nothing"), archive_url=arc.url, now=NOW)
    assert empty["windows"]["7d"]["slots"] == 0 and "no product cube" in empty["reason"]
