"""Live verification: score past products against radar composites as they arrive, keep rolling scores.

Each 15-minute product slot that has a radar composite in the archive is scored once
(:func:`score_slot`) and the result is kept as one small JSON row per slot.  A row holds **sums and
counts**, never only per-slot ratios, so a window of any length aggregates exactly
(:func:`aggregate`): CSI from the summed contingency table, FSS from the summed FSS numerator and
denominator terms, MAE / CRPS / Brier from summed errors over the summed pixel count.  The
conventions are those of :mod:`qpe_core.verification` (a rolling window equals a
:class:`~qpe_core.verification.suite.VerificationSuite` run over the same slots):

* a pixel is valid where the radar is finite and every member is finite; all pixel scores use the
  valid pixels only; deterministic scores use the ensemble mean computed from the members (float64);
* events are ``R >= 1 mm/h`` (CSI, FSS, Brier); wet is ``R >= 0.1 mm/h``; the forecast wet fraction
  is the member average (the mean field is smoothed, the members are the realistic fields);
* FSS at 8 pixels (24 km on the 3-km grid): NaN radar set to 0 in both fields, slots with more than
  half the grid missing contribute no FSS terms (``fss_used`` false);
* CRPS is the empirical-CDF CRPS of the ensemble (``crps_pixels``), the absolute error for one member;
  spread/skill is ``sqrt(mean variance * (1 + 1/m)) / RMSE(mean)`` (ddof=1).

The store (:class:`ScoreStore`) is one JSON document per slot,
``<products>/verification/<area>/YYYY/MM/DD/scores_YYYYmmddTHHMMZ.json`` next to the product cube.
Why: a row is a few hundred bytes; one file per slot makes each write atomic on its own (temp file +
``os.replace`` on disk, a single PUT on object stores), re-scoring a slot replaces exactly its file
(idempotent, no duplicates by construction), concurrent runs never lose each other's rows (no shared
file is read-modified-written), and a crash can at worst leave a hidden temp file that readers
ignore.  A 7-day window is at most 672 files in 8 day folders.  An unreadable file is treated as
"not scored", so the next run rewrites it.

:func:`update_live_scores` scores every slot of the lookback that has products and radar but no row,
or whose radar (or product) completion marker changed since it was scored, then returns the
aggregates of the last 24 hours and 7 days.  (A radar rewrite with identical coverage is not seen:
pass ``rescore=True``.)
"""

from __future__ import annotations

import json
import os
import time as _time
import warnings

import numpy as np
import pandas as pd

from qpe_core.archive import Archive
from qpe_core.atomic import write_bytes_atomically
from qpe_core.products.cube import MARKER as PRODUCT_MARKER
from qpe_core.products.cube import ProductCube
from qpe_core.readers.radar_qc import MIN_RAIN_QUALITY
from qpe_core.timeutil import iso, to_utc
from qpe_core.verification.ensemble import crps_pixels
from qpe_core.verification.spatial import FSSAccumulator
from qpe_core.verification.suite import json_safe

ROW_VERSION = 1
THRESHOLD_MM_H = 1.0
WET_MM_H = 0.1
FSS_SCALE_PX = 8
MAX_MISSING = 0.5
WINDOWS: dict[str, pd.Timedelta] = {"24h": pd.Timedelta("24h"), "7d": pd.Timedelta("7D")}
SUM_KEYS = ("pixels", "abs_err_sum", "sq_err_sum", "forecast_sum", "truth_sum", "hits", "misses",
            "false_alarms", "correct_negatives", "crps_sum", "brier_sum", "wet_forecast", "wet_truth")


# ---------------------------------------------------------------------------- scores of one slot
def score_fields(members: np.ndarray, truth: np.ndarray, pixel_km: float = 3.0) -> dict:
    """Sums and counts of one slot: ``members`` (m, y, x) or (y, x), ``truth`` (y, x), mm/h (NaN = none)."""
    members = np.asarray(members, dtype="float64")
    members = members[None] if members.ndim == 2 else members
    truth = np.asarray(truth, dtype="float64")
    if members.ndim != 3 or members.shape[1:] != truth.shape:
        raise ValueError(f"members {members.shape} do not match truth {truth.shape}")
    m = members.shape[0]
    ok = np.isfinite(truth) & np.isfinite(members).all(axis=0)
    mv, o = members[:, ok], truth[ok]
    mean = mv.mean(axis=0)
    f_ev, o_ev = mean >= THRESHOLD_MM_H, o >= THRESHOLD_MM_H
    hits, n_f, n_o = int(np.count_nonzero(f_ev & o_ev)), int(np.count_nonzero(f_ev)), int(np.count_nonzero(o_ev))
    fss = FSSAccumulator(["mean"], ["1"], [FSS_SCALE_PX], MAX_MISSING)
    used = fss.update({"mean": members.mean(axis=0)}, np.where(ok, truth, np.nan), {"1": THRESHOLD_MM_H})
    prob = (mv >= THRESHOLD_MM_H).sum(axis=0) / m
    return {
        "members": m, "pixels": int(ok.sum()),
        "abs_err_sum": float(np.abs(mean - o).sum()), "sq_err_sum": float(((mean - o) ** 2).sum()),
        "forecast_sum": float(mean.sum()), "truth_sum": float(o.sum()),
        "threshold_mm_h": THRESHOLD_MM_H, "hits": hits, "misses": n_o - hits, "false_alarms": n_f - hits,
        "correct_negatives": int(o.size - n_f - n_o + hits),
        "fss_scale_px": FSS_SCALE_PX, "fss_scale_km": FSS_SCALE_PX * pixel_km, "fss_used": bool(used),
        "fss_sum_ff": float(fss.sum_ff["mean"][0, 0]), "fss_sum_fo": float(fss.sum_fo["mean"][0, 0]),
        "fss_sum_oo": float(fss.sum_oo[0, 0]),
        "crps_sum": float(crps_pixels(mv, o).sum()) if o.size else 0.0,
        "brier_sum": float(((prob - o_ev) ** 2).sum()),
        "wet_forecast": float((mv >= WET_MM_H).sum() / m), "wet_truth": float(np.count_nonzero(o >= WET_MM_H)),
        "var_sum": float(mv.var(axis=0, ddof=1).sum()) if m > 1 and o.size else 0.0,
    }


def _marker(cube, name: str, time) -> float:
    return float(cube.group[name][cube.index_of(time)])


def score_slot(products: ProductCube, archive: Archive, time, min_rain_quality: float = MIN_RAIN_QUALITY) -> dict | None:
    """The score row of slot ``time`` (UTC): product ensemble against the radar (pixels of quality below
    ``min_rain_quality`` ignored); None if either is missing."""
    t = to_utc(time)
    if not (products.has_slot(t) and archive.has_slot(t, "rain")):
        return None
    radar_coverage, product_coverage = _marker(archive, "rain_coverage", t), _marker(products, PRODUCT_MARKER, t)
    ens = products.read_slot(t)
    truth = archive.read_truth(t, min_rain_quality)
    pixel_km = abs(float(ens["x"].values[1] - ens["x"].values[0])) / 1000.0
    row = {"version": ROW_VERSION, "time": iso(t), "area": products.area}
    row.update(score_fields(ens["rain"].values, truth, pixel_km))
    row.update({"radar_coverage": radar_coverage, "product_coverage": product_coverage,
                "model_kind": ens.attrs.get("model_kind"), "model_card": ens.attrs.get("model_card"),
                "scored_at": pd.Timestamp.now("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")})
    return row


# ---------------------------------------------------------------------------- aggregation
def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def aggregate(rows: list[dict]) -> dict:
    """Exact scores over ``rows`` from their summed terms (NaN where undefined)."""
    s = {k: sum(r[k] for r in rows) for k in SUM_KEYS}
    n = s["pixels"]
    fss_rows = [r for r in rows if r["fss_used"]]
    ff, fo, oo = (sum(r[k] for r in fss_rows) for k in ("fss_sum_ff", "fss_sum_fo", "fss_sum_oo"))
    ens_rows = [r for r in rows if r["members"] > 1]
    var_term = sum(r["var_sum"] * (1.0 + 1.0 / r["members"]) for r in ens_rows)
    n_ens, sq_ens = sum(r["pixels"] for r in ens_rows), sum(r["sq_err_sum"] for r in ens_rows)
    spread, rmse_ens = np.sqrt(_div(var_term, n_ens)), np.sqrt(_div(sq_ens, n_ens))
    return {
        "slots": len(rows), "pixels": n, "first": min((r["time"] for r in rows if "time" in r), default=None),
        "last": max((r["time"] for r in rows if "time" in r), default=None),
        "MAE": _div(s["abs_err_sum"], n), "RMSE": float(np.sqrt(_div(s["sq_err_sum"], n))),
        "bias": _div(s["forecast_sum"] - s["truth_sum"], n),
        "CSI_1": _div(s["hits"], s["hits"] + s["misses"] + s["false_alarms"]),
        "POD_1": _div(s["hits"], s["hits"] + s["misses"]),
        "FAR_1": _div(s["false_alarms"], s["hits"] + s["false_alarms"]),
        "FSS_1_24km": 1.0 - _div(ff - 2.0 * fo + oo, ff + oo) if fss_rows else float("nan"),
        "fss_slots": len(fss_rows),
        "CRPS": _div(s["crps_sum"], n), "brier_1": _div(s["brier_sum"], n),
        "wet_fraction": _div(s["wet_forecast"], n), "wet_fraction_truth": _div(s["wet_truth"], n),
        "wet_fraction_ratio": _div(s["wet_forecast"], s["wet_truth"]),
        "spread": float(spread), "spread_skill": float(spread / rmse_ens) if rmse_ens > 0 else float("nan"),
    }


def slot_scores(row: dict) -> dict:
    """Per-slot ratios of one row (for plots): time, MAE, CSI_1, CRPS, FSS_1_24km, slots = 1."""
    agg = aggregate([row])
    return {"time": row["time"], **{k: agg[k] for k in ("MAE", "CSI_1", "FSS_1_24km", "CRPS",
                                                        "wet_fraction_ratio", "spread_skill")}}


# ---------------------------------------------------------------------------- the store
def default_store_url(products: ProductCube) -> str:
    """``<folder of the cube>/verification/<area>``."""
    url = products.url.rstrip("/")
    parent = url.rsplit("/", 1)[0] if "/" in url else "."
    return f"{parent}/verification/{products.area}"


class ScoreStore:
    """One JSON row per slot under ``url`` (a local path or an fsspec URL such as ``s3://``)."""

    PREFIX, SUFFIX, TEMP_MAX_AGE_S = "scores_", ".json", 3600.0

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, time) -> str:
        t = to_utc(time)
        return f"{self.root}/{t:%Y/%m/%d}/{self.PREFIX}{t:%Y%m%dT%H%M}Z{self.SUFFIX}"

    def write(self, row: dict) -> str:
        """Write (or replace) the row of ``row["time"]`` atomically; returns its path."""
        path = self.path(row["time"])
        data = json.dumps(json_safe(row), sort_keys=True, separators=(",", ":")).encode()
        if not self.local:
            self.fs.pipe_file(path, data)  # one PUT: an object appears whole or not at all
            return path
        write_bytes_atomically(path, data, fsync=True)  # readers see the old row or the new one, never a part
        return path

    def read(self, time) -> dict | None:
        """The row of slot ``time``, or None when absent or unreadable."""
        try:
            return self._parse(self.path(time), self.fs.cat_file(self.path(time)))
        except FileNotFoundError:
            return None

    def _parse(self, path: str, data: bytes) -> dict | None:
        try:
            row = json.loads(data)
            to_utc(row["time"])
            return row
        except (ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"unreadable score row {path} ({exc}); the slot will be scored again", stacklevel=3)
            return None

    def rows(self, start, end) -> list[dict]:
        """Readable rows with ``start < time <= end`` (UTC), sorted by time."""
        start, end = to_utc(start), to_utc(end)
        self.fs.invalidate_cache()
        paths = []
        for day in pd.date_range(start.normalize(), end.normalize(), freq="D"):
            folder = f"{self.root}/{day:%Y/%m/%d}"
            try:
                names = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                continue
            for p in names:
                base = p.rsplit("/", 1)[-1]
                if base.startswith(self.PREFIX) and base.endswith(self.SUFFIX):
                    t = to_utc(base[len(self.PREFIX):-len(self.SUFFIX)])
                    if start < t <= end:
                        paths.append(p)
                elif self.local and base.endswith(".tmp"):
                    self._sweep(p)
        found = self.fs.cat(paths, on_error="omit") if paths else {}
        rows = [r for p in paths if p in found and (r := self._parse(p, found[p])) is not None]
        return sorted(rows, key=lambda r: to_utc(r["time"]))

    def _sweep(self, path: str) -> None:
        """Remove a temp file left by a crashed writer (only when older than an hour)."""
        try:
            if _time.time() - os.path.getmtime(path) > self.TEMP_MAX_AGE_S:
                os.remove(path)
        except OSError:
            pass


# ---------------------------------------------------------------------------- the update
def update_live_scores(products: ProductCube, archive: Archive, now=None, lookback="7D",
                       store: ScoreStore | None = None, rescore: bool = False,
                       windows: dict[str, pd.Timedelta] | None = None) -> dict:
    """Score the new (or changed) slots of the lookback, then aggregate the rolling windows.

    Returns ``{"now", "lookback", "store", "scored", "rescored", "pending", "windows": {name: aggregate
    + from/to}, "series": per-slot scores of the longest window}`` (JSON-safe: NaN -> None).
    ``pending``: product slots of the lookback still without radar.
    """
    now = to_utc(now) if now is not None else pd.Timestamp.now("UTC").tz_localize(None)
    lookback, windows = pd.Timedelta(lookback), dict(windows or WINDOWS)
    store = store or ScoreStore(default_store_url(products), products.storage_options)
    product_cov, radar_cov = products.coverage(), archive.coverage("rain")
    span = max([lookback, *windows.values()])
    rows = {to_utc(r["time"]): r for r in store.rows(now - span, now)}
    scored, rescored, pending = [], [], []
    for t in product_cov.index[(product_cov.index > now - lookback) & (product_cov.index <= now)]:
        if t not in radar_cov.index:
            pending.append(iso(t))
            continue
        old = rows.get(t)
        if (old is not None and not rescore and old.get("version") == ROW_VERSION
                and old.get("radar_coverage") == float(radar_cov[t])
                and old.get("product_coverage") == float(product_cov[t])):
            continue
        row = score_slot(products, archive, t)
        if row is None:  # hidden meanwhile (being rewritten): next run
            pending.append(iso(t))
            continue
        store.write(row)
        rows[t] = row
        (rescored if old is not None else scored).append(iso(t))
    ordered = [rows[t] for t in sorted(rows)]
    out_windows = {}
    for name, width in windows.items():
        inside = [r for r in ordered if now - width < to_utc(r["time"]) <= now]
        out_windows[name] = {"from": iso(now - width), "to": iso(now), **aggregate(inside)}
    longest = max(windows.values())
    series = [slot_scores(r) for r in ordered if now - longest < to_utc(r["time"]) <= now]
    return json_safe({"now": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "lookback": str(lookback), "store": store.url,
                      "scored": scored, "rescored": rescored, "pending": pending, "windows": out_windows,
                      "series": series})


# ---------------------------------------------------------------------------- plot
def render_series_png(series: list[dict], title: str = "live verification") -> bytes:
    """PNG (matplotlib Agg) of per-slot CRPS and CSI at 1 mm/h against valid time."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2), dpi=90, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    times = pd.DatetimeIndex([to_utc(s["time"]) for s in series])
    gap = np.r_[False, np.diff(times.asi8) > pd.Timedelta("1h").value]  # no line across gaps over an hour
    for ax, key, label in zip(axes, ("CRPS", "CSI_1"), ("CRPS (mm/h)", "CSI 1 mm/h")):
        values = np.array([np.nan if s[key] is None else s[key] for s in series], dtype=float)
        if gap.any():
            idx = np.flatnonzero(gap)
            times_g = pd.DatetimeIndex(np.insert(times.values, idx, times.values[idx - 1]))
            values = np.insert(values, idx, np.nan)
        else:
            times_g = times
        ax.plot(times_g, values, marker=".", linewidth=0.8, markersize=3)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[1].set_ylim(0, 1)
    axes[0].set_title(title, fontsize=9)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------- events (alerts)
VERIFICATION_SCORED = "qpe.verification.scored"
VERIFICATION_DEGRADED = "qpe.verification.degraded"


def verification_events(result: dict, area: str, min_csi: float, max_crps: float | None = None,
                        min_slots: int = 8) -> list[dict]:
    """Events of one run (keyword arguments of ``prefect.events.emit_event``): ``qpe.verification.scored``
    always (24 h CSI / CRPS / slots as resource labels, the windows in the payload), and
    ``qpe.verification.degraded`` when the last 24 h holds at least ``min_slots`` scored slots and its
    CSI 1 mm/h is below ``min_csi`` or its CRPS above ``max_crps`` (undefined scores never degrade).
    Prefect's triggers match labels as strings, never numbers: the threshold is decided here."""
    day = result["windows"].get("24h", {})
    csi, crps, slots = day.get("CSI_1"), day.get("CRPS"), int(day.get("slots") or 0)
    def label(v):
        return "none" if v is None else f"{v:.4f}"

    resource = {"prefect.resource.id": f"qpe.verification.{area}", "prefect.resource.name": f"QPE verification {area}",
                "qpe.area": area, "qpe.window": "24h", "qpe.slots": str(slots), "qpe.csi_1": label(csi),
                "qpe.crps": label(crps)}
    payload = {"now": result["now"], "slots": slots, "csi_1": csi, "crps": crps, "windows": result["windows"],
               "min_csi": min_csi, "max_crps": max_crps, "min_slots": min_slots}
    events = [{"event": VERIFICATION_SCORED, "resource": resource, "payload": payload}]
    reasons = []
    if slots >= min_slots and csi is not None and csi < min_csi:
        reasons.append(f"CSI 1 mm/h {csi:.3f} < {min_csi:g}")
    if slots >= min_slots and crps is not None and max_crps is not None and crps > max_crps:
        reasons.append(f"CRPS {crps:.3f} mm/h > {max_crps:g}")
    if reasons:
        events.append({"event": VERIFICATION_DEGRADED, "resource": resource, "payload": payload | {"reasons": reasons}})
    return events
