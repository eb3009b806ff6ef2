"""scripts/same_scores.py: a changed figure is reported, wall times are not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from same_scores import main  # noqa: E402


def test_a_changed_figure_fails_and_wall_times_do_not(tmp_path, capsys):
    base = {"models": {"m": {"seconds_per_case": 0.9, "objective": {"k": 1},
                             "summary": {"fss": [0.8, 0.9], "seconds_per_case": 0.9}}}}
    timing = json.loads(json.dumps(base))
    timing["models"]["m"]["seconds_per_case"] = 1.2
    timing["models"]["m"]["summary"]["seconds_per_case"] = 1.2
    timing["models"]["m"]["objective"]["new_option"] = True  # an option the older card lacks
    changed = json.loads(json.dumps(timing))
    changed["models"]["m"]["summary"]["fss"][1] = 0.91
    files = {}
    for name, d in (("a", base), ("b", timing), ("c", changed)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(d))
    assert main([str(files["a"]), str(files["b"])]) == 0
    assert "0 figures differ; apart: 2 wall times, 1 objective options one card lacks (new_option)" in capsys.readouterr().out
    assert main([str(files["a"]), str(files["c"])]) == 1
    assert ".models.m.summary.fss[1]: 0.9 | 0.91" in capsys.readouterr().out
