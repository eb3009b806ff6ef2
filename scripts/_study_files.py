"""What the study scripts share: a study's held-out cases as its draw stage saved them, and the
``STUDY/validation/NAME.json`` files they write (atomically)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def held_out(study: Path) -> tuple[str, pd.DatetimeIndex, np.ndarray]:
    """The study's archive URL, held-out case times (UTC) and truth ``(case, y, x)`` mm/h."""
    archive = json.loads((study / "study.json").read_text())["archive"]
    with np.load(study / "ensembles" / "truth.npz") as z:
        return archive, pd.DatetimeIndex(z["times"]), z["truth"]


def save_validation(study: Path, name: str, payload: dict) -> Path:
    """Write ``payload`` as ``STUDY/validation/NAME.json`` (atomically); returns the path."""
    from qpe_core.atomic import write_json_atomically

    return write_json_atomically(study / "validation" / f"{name}.json", payload, indent=1)
