"""PNG figures of an evaluation (matplotlib, Agg canvas: no pyplot state, no display).

Every function takes the ``metrics`` dict of :mod:`qpe_core.evaluation` and writes one PNG; a
figure whose data are absent (e.g. rank histograms without any ensemble model) is still written,
with a note, so a report always has the same set of files.  :data:`FIGURES` lists them with
the captions used in ``report.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qpe_core.errors import QpeError

DPI = 100
TRUTH_COLOUR = "black"
CATEGORICAL_SCORES = ("POD", "FAR", "CSI", "ETS")

FIGURES: dict[str, str] = {
    "categorical": "POD, FAR, CSI and ETS of the ensemble mean vs threshold",
    "fss": "Fractions skill score of the ensemble mean vs scale",
    "rank_histograms": "Rank histograms (values < 0.1 mm/h as 0, all-dry pairs left out)",
    "spread_skill": "Spread/skill ratio (1 = calibrated; 0.8-1.2 shaded)",
    "reliability": "Reliability diagrams (probability = fraction of members >= threshold)",
    "spectra": "Radially averaged power spectra (member 0) and their ratio to the truth",
    "distributions": "Rain-rate distributions (all members pooled)",
    "maps": "Truth and member 0 of each model for a few cases",
}


def _new(width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white", layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _colours(names) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _ensembles(metrics: dict) -> list[str]:
    return [n for n, e in metrics["models"].items() if e.get("ensemble")]


def categorical(metrics: dict, path: Path) -> Path:
    models = metrics["models"]
    col = _colours(models)
    fig = _new(10, 7)
    axes = fig.subplots(2, 2).ravel()
    for ax, score in zip(axes, CATEGORICAL_SCORES):
        for name, e in models.items():
            cat = e["categorical"]["mean"]
            labels = [lb for lb in cat if not lb.startswith("q")]
            thr = _arr([cat[lb]["threshold_mm_h"] for lb in labels])
            ax.plot(thr, _arr([cat[lb][score] for lb in labels]), "o-", color=col[name], label=name)
        ax.set_xscale("log")
        ax.set_xlabel("threshold (mm/h)")
        ax.set_title(score)
        ax.set_ylim(-0.05 if score == "ETS" else 0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def fss(metrics: dict, path: Path, labels=("1", "q90")) -> Path:
    models = metrics["models"]
    col = _colours(models)
    fig = _new(10, 4)
    axes = fig.subplots(1, len(labels))
    for ax, label in zip(np.atleast_1d(axes), labels):
        drawn = False
        for name, e in models.items():
            table = e["fss"]["mean"].get(label)
            if not table or not table.get("slots"):
                continue
            ax.plot(table["scales_km"], _arr(table["fss"]), "o-", color=col[name], label=name)
            ax.axhline(table["useful_target"], color=col[name], ls=":", lw=0.8)
            drawn = True
        if not drawn:
            _note(ax, f"no slot scored at {label}")
            continue
        ax.set_xscale("log")
        ax.set_xlabel("scale (km)")
        ax.set_ylim(0, 1)
        ax.set_title(f"FSS at {label} mm/h" if not label.startswith("q") else f"FSS at the truth's wet {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def rank_histograms(metrics: dict, path: Path) -> Path:
    names = _ensembles(metrics)
    col = _colours(metrics["models"])
    fig = _new(max(4.0, 3.2 * len(names)), 3.4)
    if not names:
        _note(fig.subplots(), "no ensemble model")
        return _save(fig, path)
    for ax, name in zip(np.atleast_1d(fig.subplots(1, len(names))), names):
        rank = metrics["models"][name]["ensemble"]["rank_histogram"]
        freq = _arr(rank["frequencies"])
        ax.bar(np.arange(len(freq)), freq, color=col[name], width=0.9)
        ax.axhline(1.0 / len(freq), color="k", lw=1, ls="--")
        chi = rank["chi2"] / rank["dof"] if rank.get("chi2") is not None and rank["dof"] else float("nan")
        ax.set_title(f"{name}\nchi2/dof {chi:.3g}, {rank['pairs']} pairs", fontsize=9)
        ax.set_xlabel("rank of the truth")
    fig.tight_layout()
    return _save(fig, path)


def spread_skill(metrics: dict, path: Path) -> Path:
    names = _ensembles(metrics)
    col = _colours(metrics["models"])
    fig = _new(max(4.0, 1.2 * len(names) + 2), 3.6)
    ax = fig.subplots()
    if not names:
        _note(ax, "no ensemble model")
        return _save(fig, path)
    ratios = [metrics["models"][n]["ensemble"]["spread_skill"]["ratio"] for n in names]
    ax.axhspan(0.8, 1.2, color="0.9")
    ax.axhline(1.0, color="k", lw=1)
    ax.bar(names, _arr(ratios), color=[col[n] for n in names])
    for i, r in enumerate(ratios):
        if r is not None:
            ax.text(i, r, f"{r:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("spread / RMSE of the mean")
    fig.tight_layout()
    return _save(fig, path)


def reliability(metrics: dict, path: Path, labels=("1", "10")) -> Path:
    names = _ensembles(metrics)
    col = _colours(metrics["models"])
    fig = _new(4.2 * len(labels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(labels)))
    for ax, label in zip(axes, labels):
        if not names:
            _note(ax, "no ensemble model")
            continue
        ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--")
        for name in names:
            prob = metrics["models"][name]["ensemble"]["probabilistic"].get(label)
            if not prob:
                continue
            rel = prob["reliability"]
            fp, of = _arr(rel["forecast_probability"]), _arr(rel["observed_frequency"])
            ok = np.isfinite(fp) & np.isfinite(of)
            ax.plot(fp[ok], of[ok], "o-", color=col[name],
                    label=f"{name} (Brier {prob['brier'] if prob['brier'] is not None else float('nan'):.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("forecast probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"R >= {label} mm/h")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def spectra(metrics: dict, path: Path, band_km=(10.0, 50.0)) -> Path:
    models = metrics["models"]
    col = _colours(models)
    fig = _new(10, 4)
    ax_psd, ax_ratio = fig.subplots(1, 2)
    truth_drawn = False
    for name, e in models.items():
        spec = e["realism"].get("spectrum")
        if not spec or not spec.get("slots"):
            continue
        wl = np.array(spec["wavelength_km"], dtype=float)
        truth, f = _arr(spec["psd"]["truth"]), _arr(spec["psd"]["member0"])
        if not truth_drawn:
            ax_psd.loglog(wl, truth, color=TRUTH_COLOUR, lw=2, label="truth")
            truth_drawn = True
        ax_psd.loglog(wl, f, color=col[name], label=name)
        with np.errstate(divide="ignore", invalid="ignore"):
            ax_ratio.semilogx(wl, f / truth, color=col[name], label=name)
    if not truth_drawn:
        _note(ax_psd, "no spectrum (every slot skipped)")
        _note(ax_ratio, "")
        return _save(fig, path)
    for ax in (ax_psd, ax_ratio):
        ax.axvspan(*band_km, color="0.92")
        ax.set_xlabel("wavelength (km)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax_ratio.axhspan(0.8, 1.2, color="0.8", alpha=0.5)
    ax_ratio.axhline(1.0, color="k", lw=1)
    ax_ratio.set_yscale("log")
    ax_psd.set_ylabel("PSD ((mm/h)^2)")
    ax_ratio.set_ylabel("member 0 / truth")
    fig.tight_layout()
    return _save(fig, path)


def distributions(metrics: dict, path: Path) -> Path:
    models = metrics["models"]
    col = _colours(models)
    fig = _new(6.5, 4.5)
    ax = fig.subplots()
    truth_drawn = False
    for name, e in models.items():
        dist = e["realism"]["distribution"]
        for key, colour, label, lw in (("truth", TRUTH_COLOUR, "truth", 2.0),
                                       ("members" if "members" in dist else "member0", col[name], name, 1.2)):
            if key == "truth" and truth_drawn:
                continue
            d = dist[key]
            edges = np.array(d["edges_mm_h"], dtype=float)
            frac = _arr(d["fraction"])
            centres = np.sqrt(edges[:-1] * edges[1:])[: len(frac)]
            ax.loglog(centres, np.where(frac > 0, frac, np.nan), color=colour, lw=lw,
                      label=f"{label} (dry {d['dry_fraction']:.2f})")
            truth_drawn = truth_drawn or key == "truth"
    ax.set_xlabel("rain rate (mm/h)")
    ax.set_ylabel("fraction of valid pixels per bin")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def maps(metrics: dict, path: Path) -> Path:
    from matplotlib.colors import BoundaryNorm

    from qpe_core.products.quicklook import NODATA_COLOUR, RAIN_LEVELS

    m = metrics.get("maps") or {}
    truth = m.get("truth")
    if truth is None or len(truth) == 0:
        fig = _new(5, 3)
        _note(fig.subplots(), "no map case kept")
        return _save(fig, path)
    names = list(m["models"])
    rows, cols = len(truth), 1 + len(names)
    ny, nx = truth.shape[-2:]
    panel = 3.2
    fig = _new(panel * cols + 1.0, (panel * ny / nx + 0.4) * rows, layout="constrained")
    import matplotlib

    cmap = matplotlib.colormaps["YlGnBu"].resampled(len(RAIN_LEVELS)).with_extremes(under="white",
                                                                                     bad=NODATA_COLOUR)
    norm = BoundaryNorm(RAIN_LEVELS, cmap.N, extend="max")
    extent, coast = _map_geometry(m.get("area"), m.get("window"), (ny, nx))
    axes = np.array(fig.subplots(rows, cols, squeeze=False))
    im = None
    for i in range(rows):
        fields = [("truth", truth[i])] + [(n, m["models"][n][i]) for n in names]
        for j, (name, field) in enumerate(fields):
            ax = axes[i, j]
            im = ax.imshow(np.ma.masked_invalid(field), cmap=cmap, norm=norm, extent=extent, origin="upper",
                           interpolation="nearest")
            if coast is not None:
                ax.plot(*coast, color="#111111", lw=0.6)
                ax.set_xlim(extent[0], extent[1])
                ax.set_ylim(extent[2], extent[3])
            ax.set_xticks([])
            ax.set_yticks([])
            if not np.isfinite(field).any():
                ax.text(0.5, 0.5, "no field", ha="center", va="center", transform=ax.transAxes, color="0.3")
            title = name if name == "truth" else f"{name} (member 0)"
            ax.set_title(f"{m['times'][i]}\n{title}" if j == 0 else title, fontsize=8)
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, extend="max")
    cb.set_ticks(list(RAIN_LEVELS))
    cb.set_ticklabels([f"{v:g}" for v in RAIN_LEVELS])
    cb.set_label("mm/h")
    return _save(fig, path)


def _map_geometry(area: str | None, window, shape) -> tuple[tuple, tuple | None]:
    """Extent (grid metres) of the mapped window and the coastline in it; pixel extent when no grid."""
    ny, nx = shape
    if not area:
        return (0, nx, ny, 0), None
    try:
        from qpe_core.grids import grid_xy
        from qpe_core.products.quicklook import projected_coastlines

        x, y = grid_xy(area)
        y0, y1, x0, x1 = window if window else (0, len(y), 0, len(x))
        x, y = x[x0:x1], y[y0:y1]
        if (len(y), len(x)) != (ny, nx):
            return (0, nx, ny, 0), None
        dx, dy = abs(x[1] - x[0]) if len(x) > 1 else 1.0, abs(y[1] - y[0]) if len(y) > 1 else 1.0
        extent = (x.min() - dx / 2, x.max() + dx / 2, y.min() - dy / 2, y.max() + dy / 2)
        cx, cy = projected_coastlines(area)
        return extent, (cx, cy)
    except (QpeError, OSError, ValueError, KeyError):  # no coastline file or unknown grid: plain pixel maps
        return (0, nx, ny, 0), None


WRITERS = {"categorical": categorical, "fss": fss, "rank_histograms": rank_histograms,
           "spread_skill": spread_skill, "reliability": reliability, "spectra": spectra,
           "distributions": distributions, "maps": maps}


def write_figures(metrics: dict, out_dir: str | Path) -> dict[str, Path]:
    """Every figure of :data:`FIGURES` as ``<out_dir>/<name>.png``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {name: WRITERS[name](metrics, out / f"{name}.png") for name in FIGURES}


__all__ = ["FIGURES", "WRITERS", "write_figures"]
