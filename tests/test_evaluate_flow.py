"""The Prefect ``evaluate`` flow on a tiny archive and checkpoint (real Prefect test server): report
files, the table, expectation and figure artifacts, and the metrics path in the return value."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SHARED, prefect_artifacts

from qpe_core.archive import Archive
from qpe_core.report import FIGURES
from qpe_core.simulate_archive import simulate_to_archive
from qpe_core.training.train import TrainConfig, train

CH = ["WV_062", "IR_108", "IR_120"]
TINY = {"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}
CRR_DIR = SHARED / "saf" / "crr-20180601"


def test_evaluate_flow_publishes_table_expectations_and_figures(prefect_server, tmp_path):
    from flows.evaluate import evaluate

    url = str(tmp_path / "sim.zarr")
    simulate_to_archive(Archive.create(url, "france-3km", CH), "2018-06-01T11:00", 4, seed=3)
    ck = tmp_path / "unet"
    train(TrainConfig(archive=url, kind="unet", out=str(ck), max_steps=1, patch=32, batch_size=2, lags=[0, -15],
                      val_block="1h", val_patches=2, val_every=2, save_every=2, backbone=TINY))
    baselines = {"crr": str(CRR_DIR)} if CRR_DIR.is_dir() else None
    res = evaluate(archive=url, checkpoints=[str(ck)], report=str(tmp_path / "report"), members=2,
                   window=[160, 192, 160, 192], baselines=baselines)
    metrics = json.loads(Path(res["metrics"]).read_text())
    models = ["unet"] + (["crr"] if baselines else [])
    assert res["models"] == models and list(metrics["models"]) == models and res["cases"] == 3
    assert Path(res["report"]).is_file() and set(res["figures"]) == set(FIGURES)
    assert res["expectations"]["fss_24km"] is None  # no residual-flow model: not checked
    assert res["expectations"]["realism:unet"] in (True, False)

    table = prefect_artifacts("evaluation-table")
    assert table and table[0].type == "table"
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert [r["model"] for r in rows] == models + ["radar (truth)"]
    assert {"MAE mm/h", "CSI 1", "FSS 24 km", "CRPS mm/h", "spread/skill", "spectrum 10-50 km"} <= set(rows[0])
    checks = prefect_artifacts("evaluation-expectations")
    assert checks and checks[0].type == "markdown" and "unet wet fraction" in checks[0].data
    for name, caption in FIGURES.items():
        art = prefect_artifacts("evaluation-" + name.replace("_", "-"))
        assert art and art[0].type == "markdown", name
        assert art[0].data.startswith(f"### {caption}") and "](data:image/png;base64,iVBORw0KGgo" in art[0].data
