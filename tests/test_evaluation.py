"""Evaluation: Scorer CRPS, the CRR reader on real files, score_ensembles / evaluate / write_report on
tiny archives and checkpoints, and the generalisation check on europe-opera-4km."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED, run_qpe

from qpe_core.archive import Archive
from qpe_core.errors import QpeError
from qpe_core.evaluation import central_window, evaluate, score_ensembles, score_npz, write_report
from qpe_core.report import FIGURES
from qpe_core.report.summary import COLUMNS
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.training.train import TrainConfig, train
from qpe_core.verification import Scorer
from qpe_core.verification.ensemble import crps_pixels

# ---------------------------------------------------------------- Scorer CRPS

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # CSI/FSS of an all-dry truth are 0/0
def test_scorer_crps_with_ties_at_zero():
    """Members (0, 1) mm/h and truth 0: CRPS 0.25 (pysteps' CRPS_accum gave 0)."""
    members = np.stack([np.zeros((8, 8)), np.ones((8, 8))])
    scorer = Scorer()
    scorer.update(members, np.zeros((8, 8)))
    assert scorer.compute()["CRPS"] == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    f = rng.gamma(0.5, 2.0, (4, 16, 16)) * (rng.random((4, 16, 16)) < 0.5)
    o = rng.gamma(0.5, 2.0, (16, 16)) * (rng.random((16, 16)) < 0.5)
    o[0, :4] = np.nan
    scorer = Scorer()
    scorer.update(f, o)
    ok = np.isfinite(o)
    assert scorer.compute()["CRPS"] == pytest.approx(float(crps_pixels(f[:, ok], o[ok]).mean()))


# ---------------------------------------------------------------- CRR reader (real files)

def test_crr_reader_on_real_files(shared_data, tmp_path):
    import h5py
    from pyproj import Transformer

    from qpe_core.errors import InputFileError
    from qpe_core.grids import lonlats
    from qpe_core.readers.crr import CRRFiles, read_crr

    folder = shared_data / "saf" / "crr-20180601"
    path = folder / "S_NWC_CRR_MSG4_Europe-VISIR_20180601T120000Z.nc"
    ds = read_crr(path, "france-3km")
    rain = ds["rain"].values
    assert rain.shape == (384, 384) and ds["rain"].attrs["units"] == "mm h-1"
    assert str(ds["time"].values)[:16] == "2018-06-01T12:00" and ds.attrs["satellite"] == "MSG4"
    assert ds.attrs["regrid_method"] == "nearest"  # CRR pixels (~3 x 4.5 km over France) >= 3 km cells
    assert np.isfinite(rain).all()  # France lies inside the CRR Europe region
    assert 0.001 < (rain >= 0.2).mean() < 0.2 and 5.0 < rain.max() <= 50.0
    np.testing.assert_allclose(rain * 10, np.round(rain * 10), atol=1e-3)  # 0.1 mm/h steps

    # projection: every target cell holds the raw value of the geos pixel containing its centre
    with h5py.File(path, "r") as f:
        raw = f["crr_intensity"][:]
        proj, gt = f.attrs["gdal_projection"], f.attrs["gdal_geotransform_table"]
    proj = proj.decode() if isinstance(proj, bytes) else str(proj)
    lon, lat = lonlats("france-3km")
    gx, gy = Transformer.from_crs("EPSG:4326", proj, always_xy=True).transform(lon, lat)
    col = np.floor((gx - float(gt[0])) / float(gt[1])).astype(int)
    row = np.floor((gy - float(gt[3])) / float(gt[5])).astype(int)
    expected = raw[row, col].astype("float64") * 0.1
    np.testing.assert_allclose(rain, np.where(raw[row, col] == 65535, np.nan, expected), atol=1e-4)

    files = CRRFiles(folder)
    assert len(files) == 8
    assert files.nearest("2018-06-01T12:05").name == path.name
    assert files.nearest("2018-06-01T12:08").name.endswith("121500Z.nc")
    assert files.nearest("2018-06-01T13:00") is None and files.nearest("2018-06-01T10:45") is None
    europe = read_crr(folder / "S_NWC_CRR_MSG4_Europe-VISIR_20180601T114500Z.nc", "europe-opera-4km")
    assert europe["rain"].shape == (1100, 950) and np.isfinite(europe["rain"].values).mean() > 0.99

    bad = tmp_path / "S_NWC_CT_MSG4_Europe-VISIR_20180601T120000Z.nc"
    bad.write_bytes(b"not netcdf")
    with pytest.raises(InputFileError, match="cannot open as netCDF"):
        read_crr(bad)
    with pytest.raises(InputFileError, match="no such CRR file"):
        CRRFiles(tmp_path / "nothing" / "*.nc")


# ---------------------------------------------------------------- evaluation on a tiny archive

CH = ["WV_062", "IR_108", "IR_120"]
TINY = {"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}
CRR_DIR = SHARED / "saf" / "crr-20180601"
SECTIONS = ("meta", "categorical", "fss", "continuous", "ensemble", "realism")
WINDOW = central_window("france-3km", 32)
STEPS = {"residual-flow": 2}


def _train(arc, out, kind, steps=2):
    train(TrainConfig(archive=arc.url, kind=kind, out=str(out), max_steps=steps, patch=32, batch_size=2,
                      lags=[0, -15], val_block="2h", val_patches=2, val_every=2, save_every=2, backbone=TINY))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """France archive at the time of the real CRR files (2018-06-01 10:30-12:15), a U-Net and a residual
    flow trained 2 steps, and their evaluation on a 32 x 32 window (with the CRR when ../shared exists)."""
    root = tmp_path_factory.mktemp("eval")
    arc = Archive.create(str(root / "fr.zarr"), "france-3km", CH)
    simulate_to_archive(arc, "2018-06-01T10:30", 8, seed=5)
    cks = [_train(arc, root / "unet", "unet"), _train(arc, root / "residual-flow", "residual-flow")]
    baselines = {"crr": str(CRR_DIR)} if CRR_DIR.is_dir() else None
    metrics = evaluate(arc, cks, members=3, max_cases=5, steps=STEPS, window=WINDOW, baselines=baselines)
    return {"root": root, "arc": arc, "cks": cks, "metrics": metrics, "baselines": baselines}


def test_report_has_every_model_section_figure_and_table(tiny):
    out = write_report(tiny["metrics"], tiny["root"] / "report")
    metrics = json.loads((out / "metrics.json").read_text())
    names = ["unet", "residual-flow"] + (["crr"] if tiny["baselines"] else [])
    assert list(metrics["models"]) == names and metrics["cases"] == 5 and metrics["window"] == list(WINDOW)
    for name, entry in metrics["models"].items():
        assert set(SECTIONS) <= set(entry), name
        for key in ("kind", "parameters", "train_steps", "evals_per_member", "seconds_per_case", "cases", "summary"):
            assert key in entry, (name, key)
    rf, un = metrics["models"]["residual-flow"], metrics["models"]["unet"]
    assert rf["members"] == 3 and rf["ensemble"]["rank_histogram"]["dof"] == 3 and rf["evals_per_member"] == 2
    assert un["members"] == 1 and un["ensemble"] is None and un["train_steps"] == 2 and un["parameters"] > 0
    assert rf["cases"] == un["cases"] == 5 and rf["seconds_per_case"] > 0
    assert rf["fss"]["mean"]["1"]["scales_km"][:6] == [3.0, 6.0, 12.0, 24.0, 48.0, 96.0]
    if tiny["baselines"]:  # CRR slots 11:00 .. 12:45 match 4 of the 5 cases (10:45 has no file)
        assert metrics["models"]["crr"]["cases"] == 4 and metrics["models"]["crr"]["kind"] == "crr"
    assert {c["check"] for c in metrics["expectations"]} == {"fss_24km", "realism", "spectrum", "spread_skill"}

    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    for name in names + ["radar (truth)"]:
        assert f"| {name} |" in md
    assert "FSS 1 mm/h at 24 km" in md and "spread/skill" in md and "within 15%" in md and "within 20%" in md
    assert md.count("**held**") + md.count("**not held**") + md.count("**not checked**") == len(
        metrics["expectations"])
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"](figures/{name}.png)" in md
    with np.load(out / "maps.npz") as z:
        assert z["truth"].shape == (3, 32, 32) and z["model_residual-flow"].shape == (3, 32, 32)


def test_score_ensembles_on_arrays_equals_evaluate(tiny):
    from qpe_core.readers.crr import CRRFiles, read_crr
    from qpe_core.stack import temporal_stack
    from qpe_core.training.checkpoint import load_checkpoint
    from qpe_core.training.inference import ensemble

    arc, metrics = tiny["arc"], tiny["metrics"]
    times = [np.datetime64(t.rstrip("Z")) for t in metrics["times"]]
    ys, xs = slice(WINDOW[0], WINDOW[1]), slice(WINDOW[2], WINDOW[3])
    truth = np.stack([arc.read_rain(t)[ys, xs] for t in times])
    forecasts = {}
    for ck in tiny["cks"]:
        model = load_checkpoint(ck)
        n = 1 if model.card["kind"] == "unet" else 3
        forecasts[ck.name] = np.stack([
            ensemble(model, temporal_stack(arc, t, [0, -15], CH)["bt"].values[..., ys, xs], n,
                     STEPS.get(model.card["kind"]), seed=k, tile=512) for k, t in enumerate(times)])
    if tiny["baselines"]:
        files = CRRFiles(CRR_DIR)
        forecasts["crr"] = np.stack([read_crr(files.nearest(t))["rain"].values[ys, xs] if files.nearest(t)
                                     else np.full((32, 32), np.nan, "float32") for t in times])[:, None]
    assert forecasts["residual-flow"].shape == (5, 3, 32, 32)
    got = score_ensembles(truth, forecasts, times, pixel_km=3.0, area="france-3km", window=WINDOW)
    assert got["times"] == metrics["times"] and list(got["models"]) == list(metrics["models"])
    for name, entry in metrics["models"].items():
        for section in (*SECTIONS, "cases", "members"):
            assert got["models"][name][section] == entry[section], (name, section)
        drop = ("kind", "evals_per_member", "shared_evals", "seconds_per_case")
        assert {k: v for k, v in got["models"][name]["summary"].items() if k not in drop} == pytest.approx(
            {k: v for k, v in entry["summary"].items() if k not in drop}, nan_ok=True)
    assert got["maps"]["times"] == metrics["maps"]["times"]
    np.testing.assert_array_equal(got["maps"]["truth"], metrics["maps"]["truth"])
    assert [c["held"] for c in got["expectations"]] == [c["held"] for c in metrics["expectations"]]

    # the npz layout of GPU-drawn ensembles: times as strings, truth, one (n, m, y, x) array per model
    path = tiny["root"] / "ensembles.npz"
    np.savez_compressed(path, times=np.array([str(t) for t in times]), truth=truth, **forecasts)
    again = score_npz(path, pixel_km=3.0)
    assert again["times"] == metrics["times"]
    for name, entry in metrics["models"].items():
        assert again["models"][name]["fss"] == entry["fss"] and again["models"][name]["ensemble"] == entry["ensemble"]


def test_score_ensembles_rejects_mismatched_shapes():
    with pytest.raises(QpeError, match="has shape"):
        score_ensembles(np.zeros((2, 8, 8)), {"m": np.zeros((3, 2, 8, 8))})


def test_generalisation_france_checkpoint_on_europe_grid(tiny, tmp_path):
    """A france-3km checkpoint on a europe-opera-4km archive (full 1100 x 950 grid): refused without
    --other-grid, evaluated with it through the documented CLI command."""
    url = str(tmp_path / "europe.zarr")
    simulate_to_archive(Archive.create(url, "europe-opera-4km", CH), "2024-06-01T00:00", 3, seed=2)
    unet = tiny["cks"][0]
    with pytest.raises(QpeError, match="grid 'europe-opera-4km' != checkpoint grid 'france-3km'"):
        evaluate(url, [unet], members=2)
    report = tmp_path / "report"
    res = run_qpe("evaluate", "--archive", url, "--checkpoint", str(unet), "--other-grid", "--members", "2",
                  "--max-cases", "1", "--report", str(report))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    entry = metrics["models"]["unet"]
    assert metrics["area"] == "europe-opera-4km" and metrics["pixel_km"] == 4.0 and metrics["cases"] == 1
    assert entry["trained_area"] == "france-3km" and entry["meta"]["pixels"] > 0.9 * 1100 * 950
    assert entry["fss"]["mean"]["1"]["scales_km"][:4] == [4.0, 8.0, 16.0, 24.0]  # 24 km = 6 px exists
    assert "| unet | unet |" in res.stdout and (report / "figures" / "maps.png").is_file()
