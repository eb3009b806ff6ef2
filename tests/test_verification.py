"""Streaming verification library: hand-computed cases, streaming == batch, cross-checks with pysteps."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from pysteps.utils.spectral import rapsd
from pysteps.verification import detcatscores, detcontscores, ensscores, probscores, spatialscores
from scipy import stats

from qpe_core.verification.categorical import (
    SCORES,
    CategoricalAccumulator,
    Contingency,
    contingency_scores,
    resolve_thresholds,
)
from qpe_core.verification.continuous import ContinuousAccumulator
from qpe_core.verification.ensemble import (
    CRPSAccumulator,
    ProbabilityAccumulator,
    RankHistogram,
    SpreadSkill,
    block_mean,
    crps_pixels,
    probability_scores,
)
from qpe_core.verification.realism import RadialSpectrum, RainRateHistogram, spectral_slope
from qpe_core.verification.spatial import FSSAccumulator, useful_scale
from qpe_core.verification.suite import VerificationSuite

TOL = 1e-6


def rain(rng, shape, wet=0.4, scale=2.0):
    """Intermittent rain (mm/h): gamma-distributed where wet, exactly 0 elsewhere."""
    return rng.gamma(0.6, scale, shape) * (rng.random(shape) < wet)


def smooth_rain(rng, shape=(64, 64), wet=0.3):
    """Spatially coherent rain field (mm/h) from smoothed noise."""
    from scipy.ndimage import gaussian_filter
    z = gaussian_filter(rng.normal(size=shape), 3.0)
    z = (z - z.mean()) / z.std()
    cut = np.quantile(z, 1.0 - wet)
    return np.where(z > cut, np.exp(1.5 * (z - cut)) - 0.9, 0.0)


# ---------------------------------------------------------------- categorical

def test_contingency_hand_case_and_pysteps():
    f = np.array([0.0, 2.0, 2.0, 0.0, 5.0])
    o = np.array([2.0, 2.0, 0.0, 0.0, 0.5])
    table = Contingency()
    table.update(f, o, 1.0)
    res = table.compute()
    assert (res["hits"], res["false_alarms"], res["misses"], res["correct_negatives"]) == (1, 2, 1, 1)
    assert res["POD"] == pytest.approx(0.5) and res["FAR"] == pytest.approx(2 / 3)
    assert res["CSI"] == pytest.approx(0.25) and res["BIAS"] == pytest.approx(1.5)
    ref = detcatscores.det_cat_fct(f, o, 1.0, list(SCORES))
    for name in SCORES:
        assert res[name] == pytest.approx(float(ref[name]), abs=TOL, nan_ok=True)


def test_perfect_and_all_miss_categorical():
    rng = np.random.default_rng(1)
    o = rain(rng, 5000)
    perfect = contingency_scores(*_counts(o, o, 1.0))
    assert perfect["POD"] == 1.0 and perfect["FAR"] == 0.0 and perfect["CSI"] == 1.0 and perfect["BIAS"] == 1.0
    miss = contingency_scores(*_counts(np.zeros_like(o), o, 1.0))
    assert miss["POD"] == 0.0 and miss["CSI"] == 0.0 and miss["BIAS"] == 0.0 and np.isnan(miss["FAR"])


def _counts(f, o, thr):
    t = Contingency()
    t.update(f, o, thr)
    return t.hits, t.misses, t.false_alarms, t.correct_negatives


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_categorical_streaming_equals_pysteps_on_concatenated_and_per_slot_quantiles():
    rng = np.random.default_rng(2)
    labels = ["0.1", "1", "3", "10", "q90", "q99"]
    acc = CategoricalAccumulator(labels)
    fs, os_, ref_q = [], [], {"q90": None, "q99": None}
    for _ in range(4):
        o = rain(rng, 3000)
        f = o * rng.gamma(4.0, 0.25, o.size) + rain(rng, 3000, wet=0.1)
        thr = resolve_thresholds(o, (0.1, 1, 3, 10), (0.9, 0.99))
        acc.update(f, o, thr)
        fs.append(f)
        os_.append(o)
        for q, previous in ref_q.items():   # per-slot quantile thresholds, tables summed (pysteps: >, no ties)
            tab = detcatscores.det_cat_fct_init(thr[q])
            detcatscores.det_cat_fct_accum(tab, f, o)
            if previous is not None:
                for key in ("hits", "misses", "false_alarms", "correct_negatives"):
                    tab[key] += previous[key]
            ref_q[q] = tab
    res = acc.compute()
    f, o = np.concatenate(fs), np.concatenate(os_)
    for label, thr in [("0.1", 0.1), ("1", 1.0), ("3", 3.0), ("10", 10.0)]:
        ref = detcatscores.det_cat_fct(f, o, thr, list(SCORES))
        for name in SCORES:
            assert res[label][name] == pytest.approx(float(ref[name]), abs=TOL)
    for q, tab in ref_q.items():
        ref = detcatscores.det_cat_fct_compute(tab, list(SCORES))
        assert res[q]["hits"] == tab["hits"] and res[q]["slots"] == 4
        for name in SCORES:
            assert res[q][name] == pytest.approx(float(ref[name]), abs=TOL, nan_ok=True)
        assert res[q]["hits"] > 0
    wet = o[o >= 0.1]
    assert res["q90"]["threshold_mm_h"] == pytest.approx(np.quantile(wet, 0.9), rel=0.1)


def test_quantile_threshold_needs_enough_wet_pixels():
    thr = resolve_thresholds(np.array([0.0, 0.0, 5.0]), (1.0,), (0.9,), min_wet_pixels=100)
    assert thr == {"1": 1.0, "q90": None}
    acc = CategoricalAccumulator(["q90"])
    acc.update(np.ones(3), np.ones(3), thr)
    assert acc.compute()["q90"]["slots_skipped"] == 1 and acc.compute()["q90"]["slots"] == 0


# ---------------------------------------------------------------- FSS

def test_fss_hand_case():
    o = np.zeros((5, 5))
    f = np.zeros((5, 5))
    o[2, 2], f[2, 3] = 1.0, 1.0
    acc = FSSAccumulator(["f"], ["0.5"], scales=(1, 3))
    acc.update({"f": f}, o, {"0.5": 0.5})
    fss = acc.fss("f")[0]
    # scale 1: no overlap -> 0; scale 3: 9 + 9 windows of 1/9, 6 overlapping -> 1 - (18 - 12) / 18 = 2/3
    assert fss[0] == pytest.approx(0.0) and fss[1] == pytest.approx(2 / 3)
    assert fss[1] == pytest.approx(spatialscores.fss(f, o, 0.5, 3), abs=TOL)
    out = acc.compute(pixel_km=3.0)["f"]["0.5"]
    assert out["base_rate"] == pytest.approx(1 / 25) and out["useful_target"] == pytest.approx(0.52)
    assert out["smallest_useful_scale_px"] == 3 and out["smallest_useful_scale_km"] == 9.0


def test_useful_scale_criterion():
    assert useful_scale([1, 2, 4], [0.3, 0.6, 0.9], 0.2) == 2    # target 0.6
    assert useful_scale([1, 2, 4], [0.3, 0.59, 0.9], 0.2) == 4
    assert useful_scale([1, 2], [0.1, 0.2], 0.2) is None


def test_fss_streaming_equals_pysteps_with_nan_as_zero():
    rng = np.random.default_rng(3)
    scales, labels = (1, 2, 4, 8, 16, 32, 64), {"1": 1.0, "3": 3.0}
    acc = FSSAccumulator(["a", "b"], list(labels), scales)
    ref = {(n, lab, s): spatialscores.fss_init(t, s) for n in "ab" for lab, t in labels.items() for s in scales}
    for _ in range(3):
        o, a, b = smooth_rain(rng), smooth_rain(rng), smooth_rain(rng)
        o[:10, :20] = np.nan
        acc.update({"a": a, "b": b}, o, labels)
        o0 = np.nan_to_num(o)
        for (n, lab, s), obj in ref.items():
            f = {"a": a, "b": b}[n]
            spatialscores.fss_accum(obj, np.where(np.isnan(o), 0.0, f), o0)
    for n in "ab":
        table = acc.fss(n)
        for i, lab in enumerate(labels):
            for j, s in enumerate(scales):
                assert table[i, j] == pytest.approx(spatialscores.fss_compute(ref[(n, lab, s)]), abs=TOL)


def test_fss_perfect_ignores_rain_under_missing_radar_and_skips_mostly_missing_slots():
    rng = np.random.default_rng(4)
    o = smooth_rain(rng)
    f = o.copy()
    o[:, :8] = np.nan
    f[:, :8] = 50.0                        # rain where there is no radar: not penalised
    acc = FSSAccumulator(["f"], ["1"], max_missing=0.5)
    assert acc.update({"f": f}, o, {"1": 1.0})
    assert np.allclose(acc.fss("f"), 1.0)
    o[:, :40] = np.nan
    assert not acc.update({"f": f}, o, {"1": 1.0}) and acc.slots_skipped == 1


# ---------------------------------------------------------------- continuous

def test_continuous_streaming_matches_numpy_all_and_wet():
    rng = np.random.default_rng(5)
    acc = ContinuousAccumulator()
    fs, os_ = [], []
    for n in (500, 1500, 800):
        o, f = rain(rng, n), rain(rng, n)
        acc.update(f, o)
        fs.append(f)
        os_.append(o)
    f, o = np.concatenate(fs), np.concatenate(os_)
    res = acc.compute()
    wet = (o >= 0.1) | (f >= 0.1)
    for key, sel in (("all", slice(None)), ("wet", wet)):
        e = f[sel] - o[sel]
        assert res[key]["n"] == e.size
        assert res[key]["bias"] == pytest.approx(e.mean(), abs=1e-9)
        assert res[key]["MAE"] == pytest.approx(np.abs(e).mean(), abs=1e-9)
        assert res[key]["RMSE"] == pytest.approx(np.sqrt((e**2).mean()), abs=1e-9)
        assert res[key]["r"] == pytest.approx(np.corrcoef(f[sel], o[sel])[0, 1], abs=1e-9)


# ---------------------------------------------------------------- ensemble

def test_crps_hand_cases_and_pysteps():
    assert crps_pixels(np.array([[0.0], [1.0]]), np.array([0.0]))[0] == pytest.approx(0.25)  # tie at zero
    rng = np.random.default_rng(6)
    o = rng.gamma(0.6, 2.0, 2000)
    f = rng.gamma(0.6, 2.0, (8, 2000))
    assert crps_pixels(f, o).mean() == pytest.approx(probscores.CRPS(f, o), abs=TOL)    # no ties
    assert np.allclose(crps_pixels(f[:1], o), np.abs(f[0] - o))
    assert np.allclose(crps_pixels(np.repeat(o[None], 5, 0), o), 0.0)


def test_fair_crps_is_unbiased_for_the_ensemble_size():
    """Members (0, 1), truth 0: fair CRPS 0.5 - 1/2 = 0 (one pair); and for members drawn from the
    truth's own distribution the fair CRPS of 4 members matches that of 400 while the m^2 form is higher."""
    assert crps_pixels(np.array([[0.0], [1.0]]), np.array([0.0]), fair=True)[0] == pytest.approx(0.0)
    assert np.allclose(crps_pixels(np.array([[2.0]]), np.array([0.5]), fair=True), 1.5)  # one member: abs error
    rng = np.random.default_rng(11)
    o = rng.gamma(0.6, 2.0, 40000)
    small, large = rng.gamma(0.6, 2.0, (4, 40000)), rng.gamma(0.6, 2.0, (400, 40000))
    ref = crps_pixels(large, o, fair=True).mean()
    assert crps_pixels(small, o, fair=True).mean() == pytest.approx(ref, rel=0.02)
    assert crps_pixels(small, o).mean() > 1.1 * ref  # the m^2 estimator penalises 4 members
    acc = CRPSAccumulator((1, 2))
    acc.update(small[:, :10000].reshape(4, 100, 100), o[:10000].reshape(100, 100))
    assert acc.compute()["fair_1x1"] == pytest.approx(crps_pixels(small[:, :10000], o[:10000], fair=True).mean())


def test_crps_pooled_streaming():
    rng = np.random.default_rng(7)
    acc = CRPSAccumulator((1, 2, 4))
    ref = {b: probscores.CRPS_init() for b in (1, 2, 4)}
    for _ in range(2):
        o, f = rng.gamma(0.6, 2.0, (16, 16)), rng.gamma(0.6, 2.0, (6, 16, 16))
        o[0, 0] = np.nan
        acc.update(f, o)
        for b, obj in ref.items():
            probscores.CRPS_accum(obj, block_mean(f, b), block_mean(o, b))
    res = acc.compute()
    assert res["n_1x1"] == 2 * 255 and res["n_2x2"] == 2 * 63 and res["n_4x4"] == 2 * 15
    for b in (1, 2, 4):
        assert res[f"{b}x{b}"] == pytest.approx(probscores.CRPS_compute(ref[b]), abs=TOL)


def test_rank_histogram_matches_pysteps_without_ties():
    rng = np.random.default_rng(8)
    f, o = rng.normal(size=(7, 3000)), rng.normal(size=3000)
    rh = RankHistogram(7, wet_mm_h=None)
    rh.update(f[:, :1000], o[:1000])
    rh.update(f[:, 1000:], o[1000:])
    ref = ensscores.rankhist(f, o, normalize=False)
    assert rh.compute()["counts"] == [int(c) for c in ref]


def test_rank_histogram_flat_and_seeded_for_exchangeable_ensemble_with_zeros():
    rng = np.random.default_rng(9)
    m, n = 9, 60_000
    values = rain(rng, (m + 1, n), wet=0.35)      # truth and members from the same distribution
    res = []
    for _ in range(2):
        rh = RankHistogram(m, wet_mm_h=0.1, seed=11)
        rh.update(values[1:, : n // 2], values[0, : n // 2])
        rh.update(values[1:, n // 2:], values[0, n // 2:])
        res.append(rh.compute())
    assert res[0]["counts"] == res[1]["counts"]
    assert stats.chi2.sf(res[0]["chi2"], res[0]["dof"]) > 1e-3
    assert max(abs(v - 1 / (m + 1)) for v in res[0]["frequencies"]) < 0.01
    # pysteps (X_min rule, unseeded ties) gives the same histogram up to sampling noise
    ref = ensscores.rankhist(values[1:], values[0], X_min=0.1, normalize=False)
    assert int(ref.sum()) == res[0]["pairs"]


def test_spread_skill_is_one_for_calibrated_ensemble():
    rng = np.random.default_rng(10)
    mu = rng.gamma(2.0, 2.0, 40_000)
    sigma = 1.5
    m = 6
    obs = mu + sigma * rng.normal(size=mu.size)
    members = mu + sigma * rng.normal(size=(m, mu.size))
    ss = SpreadSkill()
    ss.update(members[:, :20_000], obs[:20_000])
    ss.update(members[:, 20_000:], obs[20_000:])
    assert ss.compute()["ratio"] == pytest.approx(1.0, abs=0.03)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_probability_scores_match_pysteps_and_stream():
    rng = np.random.default_rng(12)
    m, thr = 8, 1.0
    acc = ProbabilityAccumulator(["1"], m, n_bins=10, min_count=1)
    fs, os_ = [], []
    for n in (3000, 5000):
        signal = rng.gamma(0.8, 2.0, n)
        o = signal * rng.gamma(4, 0.25, n)
        f = signal * rng.gamma(4, 0.25, (m, n))
        acc.update(f, o, {"1": thr})
        fs.append(f)
        os_.append(o)
    f, o = np.concatenate(fs, axis=1), np.concatenate(os_)
    res = acc.compute()["1"]
    prob, event = (f >= thr).mean(axis=0), (o >= thr).astype(float)
    assert res["brier"] == pytest.approx(float(detcontscores.det_cont_fct(prob, event, ["MSE"])["MSE"]), abs=TOL)
    r, fr = probscores.reldiag(prob, o, thr, n_bins=10, min_count=0)
    assert np.allclose(res["reliability"]["forecast_probability"], r, atol=TOL, equal_nan=True)
    assert np.allclose(res["reliability"]["observed_frequency"], fr, atol=TOL, equal_nan=True)
    assert sum(res["reliability"]["counts"]) == o.size
    roc = probscores.ROC_curve_init(thr, n_prob_thrs=m)
    roc["prob_thrs"] = (np.arange(1, m + 1) - 0.5) / m         # P >= k/m, k = 1..m
    probscores.ROC_curve_accum(roc, prob, o)
    pofd, pod, area = probscores.ROC_curve_compute(roc, compute_area=True)   # (POFD, POD): not as documented
    assert np.allclose(res["roc"]["pod"], pod, atol=TOL) and np.allclose(res["roc"]["pofd"], pofd, atol=TOL)
    assert res["roc"]["area"] == pytest.approx(area, abs=TOL) and res["roc"]["area"] > 0.7


def test_probability_scores_perfect_ensemble():
    table = np.zeros((5, 2), dtype=int)
    table[0, 0], table[4, 1] = 70, 30           # all members agree with the truth
    res = probability_scores(table)
    assert res["brier"] == 0.0 and res["roc"]["area"] == pytest.approx(1.0) and res["base_rate"] == 0.3


# ---------------------------------------------------------------- realism

def test_spectrum_matches_pysteps_rapsd_and_identical_ratio():
    rng = np.random.default_rng(13)
    field = smooth_rain(rng)
    spec = RadialSpectrum(field.shape, ["f"], pixel_km=3.0)
    ref = rapsd(field, fft_method=np.fft)
    assert np.allclose(spec.rapsd(field), ref, rtol=TOL, atol=0.0)
    spec.update({"f": field}, field)
    res = spec.compute()
    assert np.allclose(res["band_ratio"]["f"], 1.0)
    assert res["wavelength_km"][0] == pytest.approx(64 * 3.0) and res["bands_km"][0] == [6.0, 12.0]


def test_spectrum_slope_of_power_law_field():
    rng = np.random.default_rng(14)
    n, beta = 128, 3.0
    k = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2)
    amp = np.divide(1.0, k ** (beta / 2), out=np.zeros_like(k), where=k > 0)
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * amp))
    spec = RadialSpectrum(field.shape, [], pixel_km=1.0)
    spec.update({}, field)
    res = spec.compute()
    assert res["slope"]["truth"] == pytest.approx(-beta, abs=0.2)
    wl, psd = np.array(res["wavelength_km"]), np.array(res["psd"]["truth"])
    assert spectral_slope(wl, psd, 2.0, 64.0) == pytest.approx(-beta, abs=0.2)


def test_rain_rate_histogram_quantiles_within_one_bin():
    rng = np.random.default_rng(15)
    values = rain(rng, 100_000, wet=0.3, scale=4.0)
    hist = RainRateHistogram()
    for part in np.array_split(values, 5):
        hist.update(part)
    st = hist.statistics()
    assert st["wet_fraction"] == pytest.approx(np.mean(values >= 0.1), abs=1e-12)
    assert st["max"] == values.max()
    for key, q in (("q99", 0.99), ("q99.9", 0.999)):
        assert st[key] == pytest.approx(np.quantile(values, q), rel=0.025)
    assert hist.quantile(0.5) == 0.0


# ---------------------------------------------------------------- suite

def _slot(rng, m, shape=(64, 64)):
    truth = smooth_rain(rng, shape)
    members = np.stack([np.clip(truth + rain(rng, shape, wet=0.2), 0, None) for _ in range(m)])
    truth[:4, :] = np.nan
    return members, truth


def test_suite_perfect_forecast():
    rng = np.random.default_rng(16)
    suite = VerificationSuite(pixel_km=3.0, thresholds=(0.1, 1.0, 3.0), members=4, min_wet_pixels=10)
    for _ in range(2):
        truth = smooth_rain(rng)
        suite.update(np.repeat(truth[None], 4, axis=0), truth)
    res = suite.compute()
    for name in ("mean", "member0"):
        for label in ("0.1", "1", "3", "q90", "q99"):
            cat = res["categorical"][name][label]
            assert (cat["POD"], cat["FAR"], cat["CSI"], cat["BIAS"]) == (1.0, 0.0, 1.0, 1.0)
            assert res["fss"][name][label]["fss"] == pytest.approx([1.0] * 7)
            assert res["fss"][name][label]["smallest_useful_scale_px"] == 1
        assert res["continuous"][name]["all"]["MAE"] == 0.0
        assert res["continuous"][name]["all"]["r"] == pytest.approx(1.0, abs=1e-12)
        assert res["realism"]["spectrum"]["band_ratio"][name] == pytest.approx([1.0] * 5)
        assert res["realism"]["statistics"][name]["ratio_to_truth"]["q99"] == 1.0
    assert res["ensemble"]["crps"]["1x1"] == 0.0 and res["ensemble"]["crps"]["4x4"] == 0.0
    assert res["ensemble"]["probabilistic"]["1"]["brier"] == 0.0


def test_suite_streaming_equals_batch_for_pixel_scores():
    rng = np.random.default_rng(17)
    slots = [_slot(rng, 5) for _ in range(2)]
    streamed, batch = VerificationSuite(quantiles=()), VerificationSuite(quantiles=())
    for members, truth in slots:
        streamed.update(members, truth)
    batch.update(np.concatenate([s[0] for s in slots], axis=1), np.concatenate([s[1] for s in slots], axis=0))
    a, b = streamed.compute(), batch.compute()
    assert a["categorical"] == b["categorical"] | {n: _with_slots(b["categorical"][n]) for n in ("mean", "member0")}
    for name in ("mean", "member0"):
        for key in ("all", "wet"):
            for score, value in a["continuous"][name][key].items():
                assert value == pytest.approx(b["continuous"][name][key][score], abs=1e-9)
    assert a["ensemble"]["crps"]["1x1"] == pytest.approx(b["ensemble"]["crps"]["1x1"], abs=1e-12)
    assert a["ensemble"]["probabilistic"] == b["ensemble"]["probabilistic"]
    assert a["ensemble"]["spread_skill"]["ratio"] == pytest.approx(b["ensemble"]["spread_skill"]["ratio"])
    assert a["realism"]["statistics"] == b["realism"]["statistics"]
    assert a["ensemble"]["rank_histogram"]["pairs"] == b["ensemble"]["rank_histogram"]["pairs"]


def _with_slots(tables: dict) -> dict:
    """Batch tables with the slot count of the streamed run (2 slots instead of 1)."""
    return {label: {**t, "slots": 2} for label, t in tables.items()}


def test_suite_json_single_member_and_fixed_memory():
    rng = np.random.default_rng(18)
    suite = VerificationSuite(members=3)
    sizes = []
    for i in range(6):
        suite.update(*_slot(rng, 3))
        if i in (1, 5):
            sizes.append(len(pickle.dumps(suite)))
    assert abs(sizes[1] - sizes[0]) < 2000       # state does not grow with the number of slots
    text = json.dumps(suite.compute(), allow_nan=False)
    res = json.loads(text)
    assert set(res) >= {"categorical", "fss", "continuous", "ensemble", "realism"}
    assert res["meta"]["slots"] == 6 and len(res["ensemble"]["rank_histogram"]["counts"]) == 4
    single = VerificationSuite()
    members, truth = _slot(rng, 1)
    single.update(members[0], truth)
    out = single.compute()
    json.dumps(out, allow_nan=False)
    assert out["ensemble"] is None and out["meta"]["members"] == 1
    assert out["continuous"]["mean"] == out["continuous"]["member0"]
    with pytest.raises(ValueError):
        single.update(np.zeros((2, 64, 64)), truth)
