"""How sure a mission check is: per-case sums rebuild the report's figures, the block bootstrap, dFSS."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qpe_core.evaluation import score_ensembles
from qpe_core.report import summarize
from qpe_core.report.mission import crps_of, member_scores, mission_checks
from qpe_core.report.uncertainty import block_weights, bootstrap, case_sums, figures, uncertainty_markdown


def _rain(rng, shape, scale=6.0):
    """Blobby rain (mm/h): smoothed noise, exponentiated, about a third of the pixels wet."""
    from scipy.ndimage import gaussian_filter

    z = gaussian_filter(rng.standard_normal(shape), sigma=(0,) * (len(shape) - 2) + (3, 3))
    z /= z.std()
    return np.where(z > 0.4, scale * (np.exp(z - 0.4) - 1.0), 0.0)


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(3)
    n, m, size = 6, 4, 48
    truth = _rain(rng, (n, size, size))
    truth[0, :5, :7] = np.nan  # a radar gap
    members = 0.5 * truth[:, None] + 0.7 * _rain(rng, (n, m, size, size))
    unet = 0.8 * np.nan_to_num(truth) + 0.3 * _rain(rng, (n, size, size))
    times = pd.date_range("2024-06-26 06:00", periods=n, freq="6h", tz="UTC")  # two UTC days
    return truth, members, unet, times


def test_all_ones_rebuild_the_reports_figures_and_verdicts(cases):
    truth, members, unet, times = cases
    metrics = score_ensembles(truth, {"cf": members, "unet": unet[:, None]}, times, 3.0)
    s, u = summarize(metrics["models"]["cf"]), summarize(metrics["models"]["unet"])
    extra = member_scores(truth, members, 8)
    fig = figures(case_sums(truth, members, unet, 8, 3.0), np.ones(len(times)))
    assert fig["fss_mean"] == pytest.approx(s["FSS_1_24km"] - u["FSS_1_24km"], abs=1e-12)
    assert fig["fss_member"] == pytest.approx(min(extra["fss_member0"], extra["fss_member_mean"]) - u["FSS_1_24km"],
                                              abs=1e-12)
    assert fig["wet_ratio"] == pytest.approx(s["wet_fraction_ratio"], rel=1e-12)
    assert fig["q99_ratio"] == pytest.approx(s["q99_ratio"], rel=1e-7)
    assert fig["spectrum"] == pytest.approx(s["spectrum_ratio_10_50km"], rel=1e-7)  # psd kept to 9 digits
    assert fig["spread_skill"] == pytest.approx(s["spread_skill"], rel=1e-7)
    assert fig["crps_vs_mae"] == pytest.approx(crps_of(truth, members) / u["MAE"], rel=1e-7)
    assert fig["cases_over"] == sum(r > 2 for r in extra["max_ratio"])
    unc = bootstrap(case_sums(truth, members, unet, 8, 3.0), times, resamples=50)
    verdicts = {c["check"]: c["held"] for c in mission_checks(s, u, extra, None)}
    assert unc["point_holds"] == {k: v for k, v in verdicts.items() if k != "cost"}


def test_a_days_weights_give_that_days_figures(cases):
    truth, members, unet, times = cases
    sums = case_sums(truth, members, unet, 8, 3.0)
    unc = bootstrap(sums, times, resamples=20)
    assert list(unc["by_day"]) == ["2024-06-26", "2024-06-27"] and unc["by_day"]["2024-06-26"]["cases"] == 3
    first = figures(case_sums(truth[:3], members[:3], unet[:3], 8, 3.0), np.ones(3))
    assert {k: v for k, v in unc["by_day"]["2024-06-26"].items() if k != "cases"} == pytest.approx(first)
    low, high = unc["interval_5_95"]["spread_skill"]
    assert low <= high and all(0.0 <= v <= 1.0 for v in unc["held_share"].values())
    md = uncertainty_markdown(unc, "cf")
    assert "| 2024-06-27 | 3 |" in md and "blocks of 2 consecutive cases (20 resamples, seed 0)" in md


def test_circular_blocks_use_every_case_equally_and_keep_neighbours_together():
    w = block_weights(7, 3, 4000, seed=1)
    assert w.shape == (4000, 7) and (w.sum(axis=1) == 7).all()
    assert np.allclose(w.mean(axis=0), 1.0, atol=0.05)  # circular: no case favoured
    one = block_weights(7, 7, 1, seed=2)[0]  # one block of every case (wrapping round)
    assert (one == 1).all()


def test_dfss_is_one_for_identical_members_and_near_efss_when_truth_is_one_more_member():
    rng = np.random.default_rng(5)
    n, m, size = 8, 5, 48
    same = np.repeat(_rain(rng, (n, 1, size, size)), m, axis=1)
    fig = figures(case_sums(same[:, 0], same, same[:, 0], 8, 3.0), np.ones(n))
    assert fig["dfss"] == pytest.approx(1.0) and fig["efss"] == pytest.approx(1.0)
    base = _rain(rng, (n, size, size))
    draws = base[:, None] + _rain(rng, (n, m + 1, size, size), scale=3.0)  # truth exchangeable with members
    exch = figures(case_sums(draws[:, -1], draws[:, :m], base, 8, 3.0), np.ones(n))
    assert abs(exch["efss"] - exch["dfss"]) < 0.03
    narrow = base[:, None] + 0.2 * _rain(rng, (n, m, size, size), scale=3.0)  # too little spread
    under = figures(case_sums(draws[:, -1], narrow, base, 8, 3.0), np.ones(n))
    assert under["efss"] < under["dfss"] - 0.05
