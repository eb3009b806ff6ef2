"""``qpe simulate --rain-from``: SEVIRI synthesised by the simulator for real radar rain.

The output archive must hold the source's rain unchanged (NaN where NaN) beside physical brightness
temperatures that are cold over heavy rain, open as a temporal stack, be rewritten identically, and
refuse bad requests naming the archive or the range.  Checked on the real OPERA sample (skipped
without ``../shared/data``) and on a hand-made rain field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, run_qpe

from qpe_core.archive import Archive
from qpe_core.errors import QpeError
from qpe_core.simulate_archive import open_rain_pair, rain_from_archive, rain_slots
from qpe_core.simulator.fields import FieldParams
from qpe_core.simulator.spectral import lognormal_excess
from qpe_core.simulator.radiance import CloudParams
from qpe_core.simulator.rain_driven import fill_holes, latent_from_rain, simulate_from_rain
from qpe_core.slots import radar_slot
from qpe_core.stack import temporal_stack

OPERA = SHARED / "radar" / "opera-odyssey-20180824"
CH = ["WV_062", "IR_108", "IR_120"]
LAGS = [0, -15, -30, -45]
T0 = pd.Timestamp("2024-06-01T12:00")
SLOTS = pd.date_range(T0, periods=4, freq="15min")
N = 384                                   # france-3km is 384 x 384


def _yx():
    return np.mgrid[0:N, 0:N].astype("float32")


def hand_made_rain(k: int, cell_from: int = 0) -> np.ndarray:
    """Slot ``k``: a stratiform shield (2 mm/h) around a convective cell (peak 60 mm/h) moving 3 px
    east per slot (present from slot ``cell_from``), dry elsewhere, no radar in the north-west
    corner, one quality-control hole in the cell."""
    y, x = _yx()
    rain = np.zeros((N, N), "float32")
    rain[((y - 200) / 60) ** 2 + ((x - 200) / 90) ** 2 < 1] = 2.0
    if k >= cell_from:
        cx = 180 + 3 * k
        rain = np.maximum(rain, 60.0 * np.exp(-((y - 200) ** 2 + (x - cx) ** 2) / (2 * 8.0 ** 2)))
        rain[200, cx] = np.nan
    rain[rain < 0.1] = 0.0                        # below the radar's detection
    rain[:60, :60] = np.nan
    return rain


def make_source(url: str, frames, quality: bool = True) -> Archive:
    arc = Archive.create(url, "france-3km", CH)
    for t, rain in zip(SLOTS, frames):
        q = np.where(np.isfinite(rain), 0.8, np.nan).astype("float32") if quality else None
        arc.write_radar(radar_slot(rain, t, "france-3km", quality=q))
    return arc


def check_output(source: Archive, out: Archive, times, heavy_margin_k: float) -> dict:
    """What every radar-driven archive must satisfy; returns IR_108 medians (K) per rain class."""
    assert list(out.times("bt")) == list(out.times("rain")) == list(times)
    ir = out.channels.index("IR_108")
    heavy, dry, strat = [], [], []
    for t in times:
        rain = out.read_rain(t)
        np.testing.assert_array_equal(rain, source.read_rain(t))            # NaN where NaN, else equal
        np.testing.assert_array_equal(out.read_rain_quality(t), source.read_rain_quality(t))
        bt = out.read_bt(t)
        assert np.isfinite(bt).all(), f"{t}: BT must cover the whole grid"
        assert 180.0 < bt.min() and bt.max() < 320.0, (t, bt.min(), bt.max())
        r = np.nan_to_num(rain, nan=-1.0)
        heavy.append(bt[ir][r >= 10.0])
        dry.append(bt[ir][r == 0.0])
        strat.append(bt[ir][(r >= 0.5) & (r < 5.0)])
    med = {k: float(np.median(np.concatenate(v))) for k, v in (("heavy", heavy), ("dry", dry), ("strat", strat))}
    assert med["heavy"] < med["dry"] - heavy_margin_k, med
    st = temporal_stack(out, times[-1], LAGS)
    assert st["bt"].shape == (4, len(out.channels), N, N) and st["available"].values.tolist() == [1, 1, 1, 1]
    assert bool(st["valid"].all())
    ds = out.to_xarray().sel(time=list(times))                        # plain xarray, decoded UTC times
    assert bool(ds.bt_coverage.notnull().all()) and bool(ds.rain_coverage.notnull().all())
    np.testing.assert_array_equal(ds.rain.isel(time=-1).values, source.read_rain(times[-1]))
    return med


# ----------------------------------------------------------------------------- the mapping itself

def test_latent_inverts_the_simulators_rain_mapping():
    fp = FieldParams()
    rain = np.array([0.05, 0.5, 3.0, 12.0, 60.0, 240.0])
    mu = np.log(fp.conv_median_mmh) + np.array([-0.3, 0.0, 0.2, 0.0, -0.1, 0.0])
    z = latent_from_rain(rain, fp.conv_rain_thr, mu, fp.conv_sigma_ln)
    assert (z >= np.float32(fp.conv_rain_thr)).all() and (np.diff(z[[1, 3, 5]]) > 0).all()
    back = lognormal_excess(z.astype("float64"), fp.conv_rain_thr, mu, fp.conv_sigma_ln)
    np.testing.assert_allclose(back[1:], rain[1:], rtol=2e-3)     # float32 latents: 0.05 mm/h is at the edge


def test_quality_holes_are_filled_for_the_synthesis_only():
    r = np.ones((20, 20), "float32")
    r[5, 5] = np.nan                 # a quality-control hole
    r[:, 14:] = np.nan               # no radar
    f = fill_holes(r)
    assert f[5, 5] == 1.0 and np.isfinite(f[:, 14:16]).all() and np.isnan(f[:, 17:]).all()
    assert np.isnan(r[5, 5])         # the input is not touched


def test_towers_rise_before_their_rain_and_stand_while_it_rains():
    frames = {t: hand_made_rain(k, cell_from=3) for k, t in enumerate(SLOTS)}   # the cell rains from 12:45
    out = list(simulate_from_rain("france-3km", SLOTS, frames.get, seed=2, channels=CH))
    tower, fp = CloudParams().tower_thr, FieldParams()
    cell = (slice(194, 207), slice(185, 194))      # the cell's core at 12:45
    up = [float(np.median(d["updraft"][cell])) for _, _, d in out]
    assert up[0] < tower < up[1] < up[2], up       # 45 min before: none; 30, 15 min before: growing
    assert up[3] > fp.conv_rain_thr + 0.5, up      # raining (the last slot: its own rain only): deep
    far = np.zeros((N, N), bool)
    far[300:, 300:] = True                         # dry and far from rain: the simulator's own, capped
    assert all(d["updraft"][far].max() < tower for _, _, d in out)


# ----------------------------------------------------------------------------- a hand-made case

def test_hand_made_rain_field(tmp_path):
    source = make_source(str(tmp_path / "src.zarr"), [hand_made_rain(k) for k in range(4)])
    src, out = open_rain_pair(source.url, str(tmp_path / "out.zarr"))
    stats = rain_from_archive(src, out, seed=7)
    assert stats["slots"] == 4 and stats["first"] == "2024-06-01T12:00Z" and not stats["skipped"]
    med = check_output(src, out, SLOTS, heavy_margin_k=40.0)
    assert med["strat"] < med["dry"] - 15.0, med                      # the rain shield is a deck
    assert med["heavy"] < 235.0, med                                  # a tall cell, near the tropopause
    nan_corner = out.read_bt(SLOTS[0])[:, :60, :60]                   # no radar: BT all the same
    assert np.isfinite(nan_corner).all() and np.isnan(out.read_rain(SLOTS[0])[:60, :60]).all()
    assert out.to_xarray().attrs["area"] == "france-3km" and out.channels == CH

    first = {t: out.read_bt(t) for t in SLOTS}                        # a re-run rewrites the same slots
    rain_from_archive(src, Archive.open(out.url, "a"), seed=7)
    assert all(np.array_equal(out.read_bt(t), first[t]) for t in SLOTS)
    other = Archive.create(str(tmp_path / "seed8.zarr"), "france-3km", CH)
    rain_from_archive(src, other, start="2024-06-01T12:15Z", periods=2, seed=8)   # a sub-range, another seed
    assert list(other.times("bt")) == list(SLOTS[1:3])
    assert not np.array_equal(other.read_bt(SLOTS[1]), first[SLOTS[1]])
    np.testing.assert_array_equal(other.read_rain(SLOTS[1]), src.read_rain(SLOTS[1]))


def test_gap_in_the_source_is_stepped_over(tmp_path):
    frames = [hand_made_rain(k) for k in range(4)]
    source = Archive.create(str(tmp_path / "src.zarr"), "france-3km", CH)
    for k in (0, 1, 3):                                               # no radar at 12:30
        source.write_radar(radar_slot(frames[k], SLOTS[k], "france-3km"))
    out = Archive.create(str(tmp_path / "out.zarr"), "france-3km", CH)
    stats = rain_from_archive(source, out, seed=1)
    assert stats["slots"] == 3 and stats["skipped"] == ["2024-06-01T12:30Z"]
    assert list(out.times("bt")) == [SLOTS[0], SLOTS[1], SLOTS[3]]
    assert np.isnan(out.read_rain_quality(SLOTS[0])).all()            # no quality in the source: none here


# ----------------------------------------------------------------------------- the real OPERA sample

@pytest.mark.skipif(not OPERA.is_dir(), reason=f"real OPERA sample data not found at {OPERA}")
def test_real_opera_evening(tmp_path):
    from qpe_core.ingest import ingest_radar

    files = sorted(OPERA.glob("*.hdf"))[:4]                           # 2018-08-24 18:00 .. 18:45
    source = Archive.create(str(tmp_path / "opera.zarr"), "france-3km", CH)
    report = ingest_radar(files, source, cache_dir=str(tmp_path / "cache"))
    assert len(report.written) == 4
    times = source.times("rain")
    src, out = open_rain_pair(source.url, str(tmp_path / "opera-ir.zarr"))
    rain_from_archive(src, out, seed=3)
    med = check_output(src, out, times, heavy_margin_k=20.0)
    assert med["strat"] < med["dry"] - 15.0, med
    # the heavy cores are 1-3 pixels wide: their cold tops are seen a few pixels north of the rain
    # (parallax of ~10 km tops at 46-51 N), where IR_108 is far colder than on the rain pixels themselves
    ir = out.channels.index("IR_108")
    north = []
    for k in range(8):
        vals = []
        for t in times:
            ys, xs = np.nonzero(np.nan_to_num(out.read_rain(t)) >= 10.0)
            ok = ys >= k
            vals.append(out.read_bt(t)[ir][ys[ok] - k, xs[ok]])
        north.append(float(np.median(np.concatenate(vals))))
    assert min(north[2:]) < 235.0 and min(north[2:]) < north[0] - 15.0, north
    assert np.isnan(out.read_rain(times[0])).any()                    # OPERA's own NaN kept
    assert np.isfinite(out.read_rain_quality(times[0])).any()         # and its QIND


# ----------------------------------------------------------------------------- errors

def test_errors_name_the_archive_or_the_range(tmp_path):
    source = make_source(str(tmp_path / "src.zarr"), [hand_made_rain(k) for k in range(4)], quality=False)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(QpeError, match=r"rain source .*nope\.zarr: no archive there"):
        open_rain_pair(str(tmp_path / "nope.zarr"), out)
    with pytest.raises(QpeError, match=r"between 2024-06-02T00:00Z and 2024-06-02T00:45Z \(it has 4 radar slot\(s\): "
                                       r"2024-06-01T12:00Z \.\. 2024-06-01T12:45Z\)"):
        open_rain_pair(source.url, out, start="2024-06-02T00:00Z", periods=4)
    assert not (tmp_path / "out.zarr").exists()                       # nothing created on a refusal
    with pytest.raises(QpeError, match="area 'europe-opera-4km' != area 'france-3km' of the rain source"):
        open_rain_pair(source.url, out, area="europe-opera-4km")
    Archive.create(str(tmp_path / "europe.zarr"), "europe-opera-4km", CH)
    with pytest.raises(QpeError, match=r"europe\.zarr is on europe-opera-4km .* on france-3km"):
        open_rain_pair(source.url, str(tmp_path / "europe.zarr"))
    with pytest.raises(QpeError, match="is the rain source"):
        open_rain_pair(source.url, source.url)
    with pytest.raises(QpeError, match="needs a start slot"):
        rain_slots(source, periods=3)
    empty = Archive.create(str(tmp_path / "empty.zarr"), "france-3km", CH)
    with pytest.raises(QpeError, match=r"empty\.zarr has no radar slot"):
        rain_slots(empty)


def test_cli_rain_from(tmp_path):
    source = make_source(str(tmp_path / "src.zarr"), [hand_made_rain(k) for k in range(4)])
    out = str(tmp_path / "out.zarr")
    res = run_qpe("simulate", "--rain-from", source.url, "--archive", out, "--seed", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "synthesised SEVIRI for 4 radar slot(s) 2024-06-01T12:00Z .. 2024-06-01T12:45Z" in res.stdout
    assert list(Archive.open(out).times("bt")) == list(SLOTS)
    res = run_qpe("simulate", "--rain-from", str(tmp_path / "missing.zarr"), "--archive", out)
    assert res.returncode == 2 and "no archive there" in res.stderr and "Traceback" not in res.stderr
