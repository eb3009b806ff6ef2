"""Realism statistics (:mod:`qpe_core.realism`) on hand-made fields with known answers, and the
report on the real samples of ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qpe_core.realism import SOURCES, ir_statistics, largest_valid_square, rain_statistics, realism_report

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
T0 = pd.Timestamp("2024-08-24T12:00")
PX = 3.0  # km


def _minutes(*m):
    return [T0 + pd.Timedelta(minutes=v) for v in m]


def power_law_field(n: int, beta: float, seed: int) -> np.ndarray:
    """Gaussian random field on n x n pixels with power spectrum ~ |k|^-beta (zero mean, unit std)."""
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    k = np.hypot(kx, ky)
    amp = np.where(k > 0, k, 1.0) ** (-beta / 2) * (k > 0)
    f = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * amp).real
    return (f - f.mean()) / f.std()


def rain_like(n: int, seed: int) -> np.ndarray:
    """Intermittent rain (mm/h): a smooth field cut at zero, about half of the pixels wet."""
    return 4.0 * np.clip(power_law_field(n, 3.0, seed), 0.0, None)


def test_wet_fraction_and_quantiles_over_valid_pixels():
    rain = np.zeros((60, 60))
    rain[:15] = 2.0                     # 900 wet pixels
    rain[15:20] = 0.05                  # below 0.1 mm/h: dry
    rain[45:] = np.nan                  # 900 pixels without data: not counted
    s = rain_statistics([(T0, rain)], PX)
    assert s["valid_pixels"] == 2700
    assert s["wet_fraction"] == pytest.approx(900 / 2700)
    assert s["wet_median_mm_h"] == pytest.approx(2.0) and s["wet_q99_mm_h"] == pytest.approx(2.0)
    hist = s["wet_histogram"]
    widths = np.diff(hist["edges_mm_h"])
    assert np.sum(np.array(hist["density_per_mm_h"]) * widths) == pytest.approx(1.0)
    assert s["persistence"]["pairs"] == 0 and s["advection"]["speed_km_h"] is None


def test_identical_frames_persist_and_do_not_move():
    rain = rain_like(96, seed=1)
    s = rain_statistics(list(zip(_minutes(0, 15, 30), [rain, rain, rain])), PX)
    assert s["persistence"]["pairs"] == 2
    assert s["persistence"]["phi"] == pytest.approx(1.0)
    assert s["advection"]["speed_km_h"] == pytest.approx(0.0, abs=1e-6)
    assert s["advection"]["pooled_speed_km_h"] == pytest.approx(0.0, abs=1e-6)


def test_known_shift_gives_advection_speed():
    big = rain_like(160, seed=2)
    dy, dx = 3, -4                      # 3 px south, 4 px west per 15 min: 5 px = 15 km -> 60 km/h
    f0 = big[20:148, 20:148]
    f1 = big[20 - dy:148 - dy, 20 - dx:148 - dx]   # f1(y, x) = f0(y - dy, x - dx): not periodic
    f1 = np.where(np.arange(128)[None, :] < 100, f1, np.nan)   # partial coverage in the second frame
    adv = rain_statistics(list(zip(_minutes(0, 15), [f0, f1])), PX)["advection"]
    assert adv["pairs"] == 1
    assert adv["pair_shifts_px"][0] == pytest.approx([dy, dx], abs=0.15)
    assert adv["speed_km_h"] == pytest.approx(60.0, abs=2.0)
    assert adv["u_km_h"] == pytest.approx(-48.0, abs=2.0)      # westward
    assert adv["v_km_h"] == pytest.approx(-36.0, abs=2.0)      # southward
    assert adv["max_shift_px"] == math.ceil(150.0 * 0.25 / PX)


def test_frames_not_15_minutes_apart_are_skipped():
    rain = rain_like(64, seed=3)
    s = rain_statistics(list(zip(_minutes(0, 15, 45, 50), [rain] * 4)), PX)
    assert s["frames"] == 4
    assert s["persistence"]["pairs"] == 1 and s["persistence"]["pairs_skipped"] == 2
    assert s["advection"]["pairs"] == 1


def test_power_law_field_slope():
    field = 10.0 + power_law_field(256, 3.0, seed=4)     # positive, finite; ring 0 left out anyway
    s = rain_statistics([(T0, field)], PX)
    assert s["spectrum"]["window_px"] == 256
    assert s["slope"] == pytest.approx(-3.0, abs=0.25)


def test_largest_valid_square():
    valid = np.zeros((50, 40), bool)
    valid[5:25, 10:40] = True           # 20 x 30 block: largest square 20
    valid[30:47, 0:17] = True           # 17 x 17
    rows, cols = largest_valid_square(valid)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (20, 20)
    assert valid[rows, cols].all()
    assert largest_valid_square(np.zeros((8, 8), bool)) is None


def test_ir_statistics_known_values():
    rng = np.random.default_rng(5)
    ir108 = rng.uniform(200.0, 300.0, (100, 100))
    ir108[:, 80:] = np.nan                                     # outside the sample
    frames = [(t, {"IR_108": b, "IR_120": b - 2.0, "WV_062": b - 30.0})
              for t, b in zip(_minutes(0, 15), [ir108, ir108 + rng.normal(0.0, 1.5, ir108.shape)])]
    s = ir_statistics(frames, PX)
    ch = s["channels"]["IR_108"]
    assert ch["pixels"] == 2 * 8000
    assert ch["mean"] == pytest.approx(250.0, abs=1.0) and ch["std"] == pytest.approx(100 / 12**0.5, abs=1.0)
    assert ch["q01"] == pytest.approx(201.0, abs=0.5) and ch["q50"] == pytest.approx(250.0, abs=1.0)
    edges = np.array(ch["histogram"]["edges_k"])
    assert edges[0] == 180.0 and edges[-1] == 320.0
    assert np.sum(np.array(ch["histogram"]["density_per_k"]) * np.diff(edges)) == pytest.approx(1.0)
    assert s["differences"]["IR_108-IR_120"]["q50"] == pytest.approx(2.0, abs=0.06)
    assert s["differences"]["WV_062-IR_108"]["q50"] == pytest.approx(-30.0, abs=0.06)
    assert s["change_15min_ir108"]["pairs"] == 1
    assert s["change_15min_ir108"]["std_k"] == pytest.approx(1.5, abs=0.1)
    assert s["spectrum_ir108"]["window_px"] == 80                # largest valid square


def _no_nan(path: Path) -> dict:
    def refuse(token):
        raise ValueError(f"non-JSON constant {token} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_reports_absent_samples_as_skipped(tmp_path):
    report = realism_report(tmp_path / "no-shared", tmp_path / "out", periods=3, seed=5)
    stored = _no_nan(tmp_path / "out" / "realism.json")
    assert stored == report
    for name, (kind, rel, _) in SOURCES.items():
        assert "not found" in report[kind][name]["skipped"] and rel in report[kind][name]["skipped"]
    assert report["rain"]["simulator"]["frames"] == 3 and report["ir"]["simulator"]["frames"] == 3
    for name in report["figures"]:
        assert (tmp_path / "out" / name).stat().st_size > 5000


def test_report_on_real_samples(tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"real sample data not found at {DATA} (clone next to shared/)")
    from qpe_core.cli_realism import headline

    out = tmp_path / "realism"
    report = realism_report(DATA, out, periods=12, seed=5)
    stored = _no_nan(out / "realism.json")
    assert set(stored["rain"]) == {"simulator", "opera", "meteonet_nw", "meteonet_se"}
    assert set(stored["ir"]) == {"simulator", "satip", "hrit"}
    head = headline(report)
    # the single HRIT slot has no IR_120 / WV_062 and no 15-minute pair: those are None by design
    not_applicable = {("hrit", "ir108_ir120_median_k"), ("hrit", "wv062_ir108_median_k"),
                      ("hrit", "change_15min_std_k")}
    for kind in ("rain", "ir"):
        for source, numbers in head[kind].items():
            assert "skipped" not in numbers, source
            for key, value in numbers.items():
                if (source, key) in not_applicable:
                    assert value is None
                else:
                    assert value is not None and math.isfinite(value), (source, key)
    assert report["rain"]["opera"]["frames"] == 24
    assert report["rain"]["meteonet_nw"]["frames"] == 15      # the on_15min_grid steps
    assert report["ir"]["satip"]["frames"] == 4               # slot starts 11:30, 11:45, 12:00, 12:15
    assert set(report["figures"]) == {"rain_distributions.png", "rain_spectra.png", "ir_histograms.png",
                                      "ir_differences.png"}
    for name in report["figures"]:
        assert (out / name).stat().st_size > 5000


def test_cli_start_puts_the_simulator_in_another_season(tmp_path):
    from typer.testing import CliRunner

    from qpe_core.cli import app

    out = tmp_path / "winter"
    res = CliRunner().invoke(app, ["realism", "--shared", str(tmp_path / "no-shared"), "--out", str(out),
                                   "--periods", "2", "--start", "2024-12-20T06:00"])
    assert res.exit_code == 0, res.output
    stored = _no_nan(out / "realism.json")
    assert stored["simulator"]["start"] == "2024-12-20 06:00:00"
    assert stored["ir"]["simulator"]["first"].startswith("2024-12-20 06:00")
