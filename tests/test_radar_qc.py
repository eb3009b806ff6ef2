"""Radar quality control: the rules on hand-made fields, then on the real OPERA and MeteoNet samples,
through the archive, training patches, evaluation truth and live verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from qpe_core.archive import Archive
from qpe_core.grids import attach_grid
from qpe_core.ingest import ingest_radar
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY, RadarQC, quality_control, truth_mask

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPERA = SHARED / "radar" / "opera-odyssey-20180824"
METEONET = SHARED / "meteonet" / "radar"
needs_opera = pytest.mark.skipif(not OPERA.is_dir(), reason=f"real OPERA sample data not found at {OPERA}")
needs_meteonet = pytest.mark.skipif(not METEONET.is_dir(), reason=f"real MeteoNet samples not found at {METEONET}")


def test_rules_set_bad_pixels_to_nan_and_count_them():
    r = np.zeros((20, 20), "float32")
    r[2:6, 2:6] = 30.0          # a convective cell, kept
    r[3, 3] = 110.0             # its core: 3.7x its neighbours' maximum, kept
    r[10, 10] = 5.0             # isolated wet pixel, dry neighbours: speckle
    r[12, 15] = 0.5             # isolated drizzle below 1 mm/h: kept
    r[15, 3:6] = 2.0
    r[15, 4] = 90.0             # 45x its neighbours: spike
    r[18, 18] = 2163.0          # above any physical rate
    r[0, 19] = np.nan
    out, counts = quality_control(r)
    assert counts == {"cap": 1, "isolated": 1, "spike": 1}
    assert np.isnan(out[[10, 15, 18], [10, 4, 18]]).all() and np.isnan(out[0, 19])
    assert out[3, 3] == 110.0 and out[12, 15] == 0.5 and (out[2:6, 2:6] > 0).all() and out[15, 3] == 2.0
    assert np.count_nonzero(np.isnan(out)) == 4  # nothing else touched, nothing set to 0
    _, strict = quality_control(r, RadarQC(spike_ratio=3.0))
    assert strict["spike"] == 2  # the cell core too, with a lower ratio
    q = np.full_like(r, np.nan)
    q[2, 2], q[2, 3] = 0.0, 0.5
    ok = truth_mask(out, q, MIN_RAIN_QUALITY)
    assert not ok[2, 2] and ok[2, 3] and ok[2, 4]  # quality 0 masked, unknown quality kept


@pytest.fixture(scope="module")
def opera_frames(tmp_path_factory):
    from qpe_core.readers.odim import read_odim

    cache = tmp_path_factory.mktemp("qc-cache")
    return [read_odim(f, "france-3km", cache_dir=str(cache)) for f in sorted(OPERA.glob("*.hdf"))]


@needs_opera
def test_real_opera_speckle_removed_and_wet_area_kept(opera_frames):
    removed = wet = 0
    for ds in opera_frames:
        r = ds["rain"].values
        assert np.nanmax(r) < 250.0, str(ds.time.values)
        raw = r.copy()
        wet += int(np.count_nonzero(np.nan_to_num(raw) >= 0.1))
        removed += sum(ds.attrs["qc_removed"].values())
    assert 0 < removed < 0.01 * wet  # the wet area changes by less than 1 %
    frame = next(ds for ds in opera_frames if str(ds.time.values).startswith("2018-08-24T22:15"))
    assert frame.attrs["qc_removed"]["cap"] == 1
    at_1800 = next(ds for ds in opera_frames if str(ds.time.values).startswith("2018-08-24T18:00"))
    assert np.nanmax(at_1800["rain"].values) < 211.0  # the 211 mm/h spike (neighbours <= 34) is gone
    q = frame["quality"].values
    wet_px = np.nan_to_num(frame["rain"].values) >= 0.1
    assert np.isfinite(q[wet_px]).mean() > 0.99 and np.isnan(q[~wet_px & np.isfinite(frame["rain"].values)]).mean() > 0.5


def _spike_pixel():
    """Where the 2163 mm/h pixel of 22:15 lies on france-3km (the reader's steps without quality control)."""
    from qpe_core.readers import odim

    f = OPERA / "T_PAAH21_C_EUOC_20180824221500.hdf"
    with odim._open(f) as h5:
        src = odim.source_area(odim._group(h5, "where", f), f)
        reg = odim.get_regridder(src, "france-3km", None)
        rain = reg.apply(odim._read_rain(h5, odim._pick_rain(odim.list_fields(h5), f), reg.slices, (200.0, 1.6), src, f))
    j = np.unravel_index(np.nanargmax(rain), rain.shape)
    assert rain[j] > 2000
    return j


@needs_opera
def test_the_2163_pixel_is_truth_nowhere(tmp_path):
    from qpe_core.live_verification import score_slot
    from qpe_core.models import BTNormalizer, RainTransform
    from qpe_core.products.cube import ProductCube
    from qpe_core.training.dataset import PatchSampler

    j = _spike_pixel()
    t = pd.Timestamp("2018-08-24T22:15")
    arc = Archive.create(str(tmp_path / "a.zarr"), "france-3km", ["IR_108"])
    files = [OPERA / "T_PAAH21_C_EUOC_20180824221500.hdf", OPERA / "T_PAAH21_C_EUOC_20180824220000.hdf"]
    report = ingest_radar(files, arc)
    assert len(report.written) == 2 and report.qc_totals()["cap"] == 1
    assert np.isnan(arc.read_rain(t)[j]) and np.isnan(arc.read_truth(t)[j])  # archive
    sampler = PatchSampler(arc, [0], ["IR_108"], BTNormalizer([250.0], [20.0]), RainTransform(), 32)
    y0, x0 = max(j[0] - 16, 0), max(j[1] - 16, 0)
    for s in (sampler, PatchSampler(arc, [0], ["IR_108"], sampler.normalizer, RainTransform(), 32, min_quality=0.0)):
        _, target, mask = s.read(t, y0, x0)
        assert mask[0, j[0] - y0, j[1] - x0] == 0  # training: not a target, whatever the quality threshold
    sampler.preload(pd.DatetimeIndex([t]))
    assert sampler.read(t, y0, x0)[2][0, j[0] - y0, j[1] - x0] == 0  # nor from memory
    # quality below the threshold is not truth either (training, evaluation, verification)
    q = arc.group["rain_quality"][arc.index_of(t)]
    low = np.isfinite(arc.read_rain(t)) & (q < MIN_RAIN_QUALITY)
    assert low.any() and np.isnan(arc.read_truth(t)[low]).all() and np.isfinite(arc.read_truth(t, 0.0)[low]).all()
    # live verification: a product equal to the raw radar everywhere, spike included, scores the
    # same as one with NaN at the spike: that pixel is not compared
    cube = ProductCube.create(str(tmp_path / "p" / "france-3km.zarr"), "france-3km", members=2)
    field = np.nan_to_num(arc.read_rain(t))
    field[j] = 2163.0
    ens = xr.Dataset({"rain": (("member", "y", "x"), np.repeat(field[None], 2, 0).astype("float32"))},
                     coords={"member": [0, 1], "time": t.to_datetime64()},
                     attrs={"model_kind": "unet", "checkpoint": "x", "members": 2, "seed": 0, "steps": 0,
                            "input_slots": [], "missing_inputs": []})
    cube.write_slot(attach_grid(ens, "france-3km"))
    row = score_slot(cube, arc, t)
    assert row["pixels"] == int(np.isfinite(arc.read_truth(t)).sum())


@needs_meteonet
def test_meteonet_quality_codes_become_rain_quality():
    from qpe_core.readers.meteonet import read_meteonet

    slots = read_meteonet(METEONET / "rainfall_NW_2016_08.3.npz", "france-3km")
    ds = slots[0]
    assert "quality" in ds and "quality-code" in ds.attrs["quality_source"]
    q = ds["quality"].values
    assert np.nanmin(q) >= 0.0 and np.nanmax(q) <= 1.0 and np.isfinite(q).any()
    assert set(ds.attrs["qc_removed"]) == {"cap", "isolated", "spike"}
    assert all(np.nanmax(s["rain"].values, initial=0.0) < 250.0 for s in slots)
