"""Evaluation: Scorer CRPS, the CRR reader on real files, score_ensembles / evaluate / write_report on
tiny archives and checkpoints, and the generalisation check on europe-opera-4km."""

from __future__ import annotations

import numpy as np
import pytest

from qpe_core.verification import Scorer
from qpe_core.verification.ensemble import crps_pixels


# ---------------------------------------------------------------- Scorer CRPS

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
