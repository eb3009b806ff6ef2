"""Evaluate models against the archive's radar: running models here, scoring in the verification
suite, tables and figures in :mod:`qpe_core.report`.

Two entry points share one accumulator (:class:`Evaluation`), so they give identical metrics on the
same fields:

* :func:`score_ensembles` scores precomputed arrays: ``truth (n, y, x)`` and ``{name: (n, m, y, x)}``
  in mm/h (e.g. ensembles drawn on a GPU and saved as npz, see :func:`load_ensembles`);
* :func:`evaluate` runs checkpoints (and external baselines such as the NWC SAF CRR) over a period of
  an archive and streams each case into the suites; only a few cases are kept for the map panel.

Cases are the valid times with radar (coverage >= ``min_radar_coverage``) and a complete SEVIRI
stack for the *union* of every model's lags, so every checkpoint is scored on the same cases.  A
baseline is scored on the cases whose time has a baseline file within 7 minutes; a model whose field
of a case is missing (``None`` or all NaN) is not updated for that case.  Case ``k`` of the period
draws its ensemble with seed ``seed + k``.  With a ``window`` (rows y0:y1, columns x0:x1) the models
see only that part of the stack (they are convolutional) and only it is scored.

One :class:`~qpe_core.verification.suite.VerificationSuite` per model (thresholds 0.1, 1, 3, 10,
30 mm/h and the truth's wet q90/q99; FSS scales 1..64 px plus the pixels nearest 3, 24 and 96 km).
``metrics["models"][name]`` is the suite's ``compute()`` plus the model's description (``kind``,
``members``, ``cases``, ``parameters``, ``train_steps``, ``evals_per_member``, ``seconds_per_case``,
``sampler_steps``, ``source``) and ``summary`` (headline numbers, :func:`qpe_core.report.summarize`);
``metrics["expectations"]`` holds the expectation checks and ``metrics["maps"]`` the map cases.
"""

from __future__ import annotations

import heapq
import time as _time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qpe_core.archive import Archive
from qpe_core.errors import QpeError
from qpe_core.grids import get_spec
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY
from qpe_core.report import expectations, summarize, write_report
from qpe_core.timeutil import iso, to_utc
from qpe_core.verification.categorical import FIXED_THRESHOLDS_MM_H
from qpe_core.verification.spatial import FSS_SCALES_PX
from qpe_core.verification.suite import WET_MM_H, VerificationSuite

HEADLINE_KM = (3.0, 24.0, 96.0)
MAP_CASES = 3
BASELINE_KINDS = ("crr",)
Progress = Callable[[int, int, str], None]


def pixel_km_of(area: str) -> float:
    """Grid spacing (km) of a named grid."""
    return get_spec(area).resolution_m[0] / 1000.0


def scale_px(km: float, pixel_km: float) -> int:
    """The grid scale (pixels, at least 1) nearest ``km``."""
    return max(1, round(km / pixel_km))


def fss_scales_for(pixel_km: float) -> list[int]:
    """The suite's FSS scales (pixels) plus those nearest the headline 3, 24 and 96 km."""
    return sorted(set(FSS_SCALES_PX) | {scale_px(km, pixel_km) for km in HEADLINE_KM})


class Evaluation:
    """Suites of several models over the same cases, plus timings and the wettest cases for maps.

    ``add(time, truth, forecasts, seconds)`` once per case: ``truth (y, x)`` mm/h (NaN = no radar),
    ``forecasts`` name -> ``(m, y, x)`` or ``(y, x)`` mm/h (``None`` or all-NaN: no field this case).
    The ``map_cases`` cases with the largest truth wet fraction (earliest first on ties) keep their
    truth and member 0 of each model.
    """

    def __init__(self, names: Sequence[str], pixel_km: float, thresholds=FIXED_THRESHOLDS_MM_H,
                 map_cases: int = MAP_CASES, seed: int = 0):
        self.names = list(names)
        self.pixel_km = float(pixel_km)
        self.suites = {n: VerificationSuite(pixel_km, thresholds, fss_scales=fss_scales_for(pixel_km), seed=seed)
                       for n in self.names}
        self.cases = dict.fromkeys(self.names, 0)
        self.seconds = dict.fromkeys(self.names, 0.0)
        self.timed = dict.fromkeys(self.names, 0)
        self.times: list[pd.Timestamp] = []
        self.map_cases = int(map_cases)
        self._maps: list = []   # heap of (wet fraction, -case index, time, truth, {name: member 0})

    def add(self, time, truth: np.ndarray, forecasts: Mapping[str, np.ndarray | None],
            seconds: Mapping[str, float] | None = None) -> None:
        truth = np.asarray(truth, dtype="float32")
        member0 = {}
        for name in self.names:
            f = forecasts.get(name)
            if f is None:
                continue
            f = np.asarray(f)
            f = f[None] if f.ndim == 2 else f
            if not np.isfinite(f).any():
                continue
            self.suites[name].update(f, truth)
            self.cases[name] += 1
            member0[name] = f[0]
            if seconds and seconds.get(name) is not None:
                self.seconds[name] += float(seconds[name])
                self.timed[name] += 1
        k = len(self.times)
        self.times.append(to_utc(time))
        if self.map_cases > 0:
            valid = np.isfinite(truth)
            wet = float((truth[valid] >= WET_MM_H).mean()) if valid.any() else 0.0
            item = (wet, -k, iso(time), truth.copy(), {n: np.array(v, dtype="float32") for n, v in member0.items()})
            if len(self._maps) < self.map_cases:
                heapq.heappush(self._maps, item)
            elif item[:2] > self._maps[0][:2]:
                heapq.heapreplace(self._maps, item)

    def maps(self) -> dict:
        """The kept map cases in time order: ``{"times", "truth" (k, y, x), "models": {name: (k, y, x)}}``
        (NaN where a model had no field)."""
        kept = sorted(self._maps, key=lambda it: -it[1])
        if not kept:
            return {"times": [], "truth": None, "models": {}}
        truth = np.stack([it[3] for it in kept])
        models = {n: np.stack([it[4].get(n, np.full(truth.shape[1:], np.nan, "float32")) for it in kept])
                  for n in self.names}
        return {"times": [it[2] for it in kept], "truth": truth, "models": models}

    def metrics(self, info: Mapping[str, dict] | None = None, **header) -> dict:
        """The metrics dict (module docstring); ``info``: per-model description, ``header``: top-level keys."""
        if not self.times:
            raise QpeError("no case was scored")
        models = {}
        for name in self.names:
            entry = dict((info or {}).get(name, {}))
            entry.setdefault("kind", name)
            entry["cases"] = self.cases[name]
            entry["seconds_per_case"] = self.seconds[name] / self.timed[name] if self.timed[name] else None
            entry.update(self.suites[name].compute())
            entry["members"] = entry["meta"]["members"]
            entry["summary"] = summarize(entry)
            models[name] = entry
        summaries = {n: e["summary"] for n, e in models.items()}
        full = max(self.names, key=lambda n: self.cases[n]) if self.names else None
        truth = {}
        if full is not None and self.cases[full]:
            s = summaries[full]
            truth = {"model": full, "cases": self.cases[full], "wet_fraction": s["wet_fraction_truth"],
                     "q99": s["q99_truth"]}
        times = sorted(self.times)
        maps = self.maps()
        maps.update(area=header.get("area"), window=header.get("window"))
        return {**header, "pixel_km": self.pixel_km, "period": [iso(times[0]), iso(times[-1])],
                "cases": len(self.times), "times": [iso(t) for t in self.times], "models": models,
                "truth": truth, "expectations": expectations(summaries), "maps": maps}


def score_ensembles(truth: np.ndarray, forecasts: Mapping[str, np.ndarray], times: Sequence | None = None,
                    pixel_km: float = 3.0, info: Mapping[str, dict] | None = None, area: str | None = None,
                    window: Sequence[int] | None = None, thresholds=FIXED_THRESHOLDS_MM_H,
                    map_cases: int = MAP_CASES, seed: int = 0, progress: Progress | None = None) -> dict:
    """Metrics of precomputed fields: ``truth (n, y, x)`` and ``forecasts`` name -> ``(n, m, y, x)`` (or
    ``(n, y, x)`` for a deterministic model), all mm/h, NaN = missing (a case whose forecast is all NaN
    is skipped for that model).  ``times``: n valid times (default: case numbers from 2000-01-01,
    15 minutes apart); ``info``: per-model description (kind, parameters, ...); ``area``/``window``
    only locate the map panel."""
    truth = np.asarray(truth)
    n = truth.shape[0]
    for name, f in forecasts.items():
        if f.shape[0] != n or f.shape[-2:] != truth.shape[-2:]:
            raise QpeError(f"forecast {name!r} has shape {f.shape}, truth has {truth.shape}")
    if times is None:
        times = pd.date_range("2000-01-01", periods=n, freq="15min")
    if len(times) != n:
        raise QpeError(f"{len(times)} times for {n} cases")
    members = max((f.shape[1] if f.ndim == 4 else 1) for f in forecasts.values()) if forecasts else 1
    acc = Evaluation(list(forecasts), pixel_km, thresholds, map_cases, seed)
    for k in range(n):
        acc.add(times[k], truth[k], {name: f[k] for name, f in forecasts.items()})
        if progress:
            progress(k + 1, n, iso(times[k]))
    return acc.metrics(info, archive=None, area=area, window=list(window) if window else None, members=members,
                       seed=seed)


def load_ensembles(path: str | Path) -> tuple[pd.DatetimeIndex, np.ndarray, dict[str, np.ndarray]]:
    """Read an npz of precomputed ensembles: ``times`` (ISO strings or datetime64), ``truth (n, y, x)`` and
    one ``(n, m, y, x)`` array per model (any other key)."""
    with np.load(path, allow_pickle=False) as z:
        if "truth" not in z.files:
            raise QpeError(f"{path}: no 'truth' array (keys {z.files})")
        times = pd.DatetimeIndex([to_utc(t) for t in z["times"]]) if "times" in z.files else None
        return times, z["truth"], {k: z[k] for k in z.files if k not in ("times", "truth")}


def score_npz(path: str | Path, pixel_km: float = 3.0, **kwargs) -> dict:
    """:func:`score_ensembles` of an npz written as :func:`load_ensembles` reads it."""
    times, truth, forecasts = load_ensembles(path)
    return score_ensembles(truth, forecasts, times, pixel_km, **kwargs)


# ------------------------------------------------------------------ running models over an archive


def window_slices(window, shape) -> tuple[slice, slice]:
    """Row and column slices of ``window`` (y0, y1, x0, x1 pixels; None = the whole ``shape``)."""
    if window is None:
        return slice(None), slice(None)
    y0, y1, x0, x1 = (int(v) for v in window)
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise QpeError(f"window rows {y0}:{y1}, cols {x0}:{x1} is not inside the {shape[0]} x {shape[1]} grid")
    return slice(y0, y1), slice(x0, x1)


def case_stack(arc: Archive, t, lags: Sequence[int], channels: Sequence[str], ys: slice, xs: slice
               ) -> tuple[np.ndarray, np.ndarray]:
    """BT stack ``(lag, channel, y, x)`` K of the window at case ``t`` (UTC) and the current slot's
    validity ``(y, x)`` bool."""
    from qpe_core.stack import temporal_stack

    st = temporal_stack(arc, t, list(lags), list(channels))
    return np.ascontiguousarray(st["bt"].values[..., ys, xs]), st["valid"].values[0, ys, xs].astype(bool)


def case_ensemble(model, bt: np.ndarray, valid: np.ndarray, members: int, steps: int | None, seed: int,
                  device: str = "cpu", tile: int | None = 512, sampler: str | None = None) -> np.ndarray:
    """One model's ensemble ``(member, y, x)`` mm/h on one case's stack; NaN where the current slot has
    no data (as ``predict`` does)."""
    from qpe_core.training.inference import ensemble

    rain = ensemble(model, bt, members, steps, seed, device=device, tile=tile, sampler=sampler)
    rain[:, ~valid] = np.nan
    return rain


def central_window(area: str, size: int) -> tuple[int, int, int, int]:
    """A ``size`` x ``size`` window in the middle of a named grid (rows y0:y1, cols x0:x1)."""
    spec = get_spec(area)
    y0, x0 = (spec.height - size) // 2, (spec.width - size) // 2
    return y0, y0 + size, x0, x0 + size


def _unique_names(paths: Sequence[str | Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p).name or str(p)
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _open_baselines(baselines: Mapping[str, str | Path] | None) -> dict:
    from qpe_core.readers.crr import CRRFiles

    out = {}
    for name, path in (baselines or {}).items():
        kind = name.split("-")[0].split(":")[0].lower()
        if kind not in BASELINE_KINDS:
            raise QpeError(f"unknown baseline {name!r}: known kinds {', '.join(BASELINE_KINDS)} "
                           "(give --baseline crr=PATH)")
        out[name] = (kind, path, CRRFiles(path))
    return out


def plan_cases(archive: Archive, lags: Sequence[int], start=None, end=None, every: int = 1,
               max_cases: int | None = None, min_radar_coverage: float = 0.5) -> pd.DatetimeIndex:
    """The cases of :func:`evaluate`: valid times with radar and a complete stack for ``lags``, every
    ``every``-th, at most ``max_cases`` spread evenly over the period."""
    from qpe_core.training.dataset import valid_times

    times = valid_times(archive, sorted({int(v) for v in lags}, reverse=True), min_radar_coverage, start,
                        end)[::max(int(every), 1)]
    if max_cases and len(times) > max_cases:
        times = times[np.linspace(0, len(times) - 1, max_cases).astype(int)]
    if len(times) == 0:
        raise QpeError(f"no valid time with radar and a complete stack for lags {sorted(set(lags))} in "
                       f"{archive.url} between {start} and {end}")
    return times


def evaluate(archive: Archive | str, checkpoints: Sequence[str | Path], start=None, end=None, members: int = 8,
             every: int = 1, max_cases: int | None = None, steps: Mapping[str, int] | None = None, seed: int = 0,
             min_radar_coverage: float = 0.5, progress: Progress | None = None,
             baselines: Mapping[str, str | Path] | None = None, other_grid: bool = False,
             window: Sequence[int] | None = None, device: str = "cpu", tile: int | None = 512,
             map_cases: int = MAP_CASES, thresholds=FIXED_THRESHOLDS_MM_H, cache_dir: str | None = None,
             min_rain_quality: float = MIN_RAIN_QUALITY) -> dict:
    """Run checkpoints (and baselines, e.g. ``{"crr": directory}``) over the period (UTC) of the archive and
    score them against its radar; returns the metrics dict (module docstring).

    ``steps``: sampler steps per model kind (e.g. ``{"residual-flow": 4}``); ``members``: ensemble size of
    generative models (a U-Net gives 1); ``other_grid``: allow checkpoints trained on another grid;
    ``progress(done, total, label)`` after each case.
    """
    from qpe_core.readers.crr import read_crr
    from qpe_core.training.checkpoint import check_card, load_checkpoint

    arc = Archive.open(archive) if isinstance(archive, str) else archive
    models = {n: load_checkpoint(c, device) for n, c in zip(_unique_names(checkpoints), checkpoints)}
    sources = dict(zip(models, (str(c) for c in checkpoints)))
    base = _open_baselines(baselines)
    if not models and not base:
        raise QpeError("nothing to evaluate: give at least one checkpoint or baseline")
    for m in models.values():
        check_card(m.card, arc.area, arc.channels, None, other_grid)
    lags = sorted({int(v) for m in models.values() for v in m.card["lags"]} | {0}, reverse=True)
    times = plan_cases(arc, lags, start, end, every, max_cases, min_radar_coverage)
    spec = get_spec(arc.area)
    ys, xs = window_slices(window, (spec.height, spec.width))
    info, n_members, kind_steps = {}, {}, {}
    for name, m in models.items():
        kind = m.card["kind"]
        n_members[name] = 1 if kind == "unet" else int(members)
        kind_steps[name] = (steps or {}).get(kind)
        info[name] = {"kind": kind, "source": sources[name], "parameters": m.card.get("parameters"),
                      "train_steps": m.card.get("steps"), "trained_area": m.card.get("area"),
                      "lags": m.card["lags"], "sampler_steps": kind_steps[name],
                      "evals_per_member": m.objective.evals_per_member(kind_steps[name]),
                      "shared_evals": m.objective.shared_evals()}
    for name, (kind, path, files) in base.items():
        info[name] = {"kind": kind, "source": str(path), "files": len(files), "parameters": None,
                      "train_steps": None, "evals_per_member": None, "match_minutes": 7}
    acc = Evaluation([*models, *base], pixel_km_of(arc.area), thresholds, map_cases, seed)
    if progress:
        progress(0, len(times), "")
    for k, t in enumerate(times):
        truth = np.asarray(arc.read_truth(t, min_rain_quality), dtype="float32")[ys, xs]
        stacks: dict = {}
        fields, seconds = {}, {}
        for name, m in models.items():
            key = (tuple(m.card["lags"]), tuple(m.card["channels"]))
            if key not in stacks:
                stacks[key] = case_stack(arc, t, *key, ys, xs)
            t0 = _time.perf_counter()
            fields[name] = case_ensemble(m, *stacks[key], n_members[name], kind_steps[name], seed + k, device, tile)
            seconds[name] = _time.perf_counter() - t0
        for name, (kind, _, files) in base.items():
            path = files.nearest(t)
            fields[name] = None if path is None else read_crr(path, arc.area, cache_dir)["rain"].values[ys, xs]
        acc.add(t, truth, fields, seconds)
        del fields, stacks
        if progress:
            progress(k + 1, len(times), iso(t))
    return acc.metrics(info, archive=arc.url, area=arc.area, window=list(window) if window else None,
                       members=int(members), seed=seed, lags=lags, min_radar_coverage=min_radar_coverage)


__all__ = ["Evaluation", "case_ensemble", "case_stack", "central_window", "evaluate", "load_ensembles",
           "plan_cases", "score_ensembles", "score_npz", "window_slices", "write_report"]
