"""The ``qpe`` command line.  Thin: every command calls functions of :mod:`qpe_core`.

User errors (:class:`QpeError`) print one red line and exit 2; ``--debug`` shows the
traceback.  Long work shows a rich progress bar on stderr.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qpe_core.errors import QpeError

app = typer.Typer(help="Satellite rainfall estimation from MSG SEVIRI.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
ingest_app = typer.Typer(help="Ingest real SEVIRI or radar files into an archive cube.", no_args_is_help=True)
archive_app = typer.Typer(help="Inspect archive cubes.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(archive_app, name="archive")

out = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)
_state = {"debug": False, "config": None}

Area = Annotated[Optional[str], typer.Option("--area", help="target grid (see `qpe areas`)")]
ArchiveUrl = Annotated[Optional[str], typer.Option("--archive", help="archive cube path or s3:// URL")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
          config: Annotated[Optional[Path], typer.Option("--config", help="YAML settings file")] = None):
    _state.update(debug=debug, config=config)
    if config is not None:
        settings()  # fail early, naming the file, for every command


def settings(**overrides):
    from qpe_core.config import load_settings

    return load_settings(_state["config"], **overrides)


@contextmanager
def progress_bar(total: int, what: str):
    """A rich progress bar on stderr; yields a callback advancing it by one with a label."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[label]}"), console=err,
                   disable=not err.is_terminal and total < 2)
    with bar:
        task = bar.add_task(what, total=total, label="")
        yield lambda label="": bar.update(task, advance=1, label=label)


def _open_archive(url: str | None, area: str, channels: list[str], slot_minutes: int):
    from qpe_core.archive import Archive

    return Archive.open_or_create(url, area, channels, slot_minutes)


@app.command()
def areas():
    """List the named target grids."""
    from qpe_core.grids import GRIDS

    table = Table("name", "projection", "size (x × y)", "pixel", "description")
    for spec in GRIDS.values():
        res = spec.resolution_m
        table.add_row(spec.name, spec.crs.split(" +x_0")[0], f"{spec.width} × {spec.height}",
                      f"{res[0] / 1000:g} km", spec.description)
    out.print(table)


def _print_report(report) -> None:
    from qpe_core.timeutil import iso

    skipped = [r for r in report.results if r.status == "skipped"]
    for r in report.results:
        when = iso(r.time) if r.time is not None else Path(r.files[0]).name
        if r.status == "written":
            qc = "".join(f", {k} {v}" for k, v in r.qc_removed.items() if v)
            out.print(f"[green]written[/] {r.kind} {when} coverage {r.coverage:.1%} in {r.seconds:.2f} s"
                      + (f" (quality control set to NaN: {qc[2:]})" if qc else ""))
        elif r.status == "failed":
            err.print(f"[red]failed[/] {r.kind} {when}: {r.reason}")
    totals = report.qc_totals()
    if totals:
        out.print("radar quality control, pixels set to NaN: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    if skipped:
        out.print(f"skipped {len(skipped)} slot(s) between the archive's slots: "
                  + ", ".join(iso(r.time) for r in skipped[:12]) + (" ..." if len(skipped) > 12 else ""))
    if report.failed:
        raise typer.Exit(1)


@ingest_app.command("seviri")
def ingest_seviri_cmd(
    files: Annotated[list[Path], typer.Argument(help="native, HRIT, netCDF, zip or Satip .zarr.zip files")],
    area: Area = None, archive: ArchiveUrl = None,
    channels: Annotated[Optional[str], typer.Option(help="comma-separated channels (default: config)")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="resampling look-up table cache")] = None,
):
    """Calibrate SEVIRI granules, resample them to the grid and write them to the archive."""
    from qpe_core.ingest import ingest_seviri, seviri_units

    cfg = settings(area=area, channels=channels, archive_url=archive, cache_dir=cache_dir)
    units = seviri_units(files)
    arc = _open_archive(cfg.resolved_archive_url(), cfg.area, cfg.channels, cfg.slot_minutes)
    with progress_bar(len(units), "ingest seviri") as step:
        report = ingest_seviri(files, arc, cache_dir=cfg.cache_dir, progress=step)
    _print_report(report)


@ingest_app.command("radar")
def ingest_radar_cmd(
    files: Annotated[list[Path], typer.Argument(help="OPERA ODIM HDF5 or MeteoNet npz files")],
    area: Area = None, archive: ArchiveUrl = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="regridding look-up table cache")] = None,
):
    """Convert radar composites to rain rate (mm/h) on the grid and write them to the archive."""
    from qpe_core.ingest import ingest_radar

    cfg = settings(area=area, archive_url=archive, cache_dir=cache_dir)
    if not files:
        raise QpeError("no radar files given")
    arc = _open_archive(cfg.resolved_archive_url(), cfg.area, cfg.channels, cfg.slot_minutes)
    with progress_bar(len(files), "ingest radar") as step:
        report = ingest_radar(files, arc, cache_dir=cfg.cache_dir, progress=step)
    _print_report(report)


@archive_app.command("info")
def archive_info(url: Annotated[str, typer.Argument(help="archive cube path or s3:// URL")],
                 as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Print times, channels, coverage and gaps of an archive."""
    from qpe_core.archive import Archive, summarize

    info = summarize(Archive.open(url))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out.print(f"[bold]{info['url']}[/]  area {info['area']}  slot {info['slot_minutes']} min  "
              f"origin {info['time_origin']}  allocated {info['allocated_slots']} slots")
    out.print(f"channels: {', '.join(info['channels'])}")
    table = Table("kind", "slots", "first", "last", "mean coverage", "min coverage", "gaps", "missing")
    for kind in ("bt", "rain"):
        k = info[kind]
        cov = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        table.add_row(kind, str(k["slots"]), k["first"] or "-", k["last"] or "-", cov(k["mean_coverage"]),
                      cov(k["min_coverage"]), str(len(k["gaps"])), str(k["missing_slots"]))
    out.print(table)
    for kind in ("bt", "rain"):
        for g in info[kind]["gaps"][:20]:
            out.print(f"  gap in {kind}: {g['from']} .. {g['to']} ({g['slots']} slots)")
    out.print(f"slots with both SEVIRI and radar: {info['paired_slots']}")


@archive_app.command("stack")
def archive_stack(url: Annotated[str, typer.Argument(help="archive cube path or s3:// URL")],
                  time: Annotated[str, typer.Option(help="valid time, ISO UTC")],
                  lags: Annotated[Optional[str], typer.Option(help="comma-separated minutes")] = None,
                  gaps: Annotated[Optional[str], typer.Option(help="'error' or 'mask'")] = None):
    """Assemble the temporal stack for one valid time and print a summary."""
    from qpe_core.archive import Archive
    from qpe_core.stack import temporal_stack

    cfg = settings(lags=lags, stack_gaps=gaps)
    st = temporal_stack(Archive.open(url), time, cfg.lags, gaps=cfg.stack_gaps)
    for k, lag in enumerate(st["lag"].values):
        bt = st["bt"].isel(lag=k)
        out.print(f"lag {int(lag):4d} min  slot {str(st['slot_time'].values[k])[:16]}  "
                  f"available {int(st['available'][k])}  valid {float(st['valid'][k].mean()):.1%}  "
                  f"mean bt {float(bt.mean()):.1f} K")


@app.command("train")
def train_cmd(
    archive: Annotated[str, typer.Option(help="archive cube path or s3:// URL")],
    model: Annotated[str, typer.Option(help="cascade-flow (the product: a U-Net first, then a flow on its residual) | unet | ddpm | flow | residual-flow")] = "cascade-flow",
    out_dir: Annotated[Path, typer.Option("--out", help="checkpoint directory")] = Path("data/checkpoints/model"),
    max_steps: Annotated[int, typer.Option(help="optimiser steps")] = 2000,
    patch: Annotated[int, typer.Option(help="training patch side, pixels")] = 128,
    batch_size: Annotated[int, typer.Option(help="patches per step (per process)")] = 8,
    lags: Annotated[Optional[str], typer.Option(help="comma-separated minutes")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 2e-4,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the weights")] = 0.999,
    start: Annotated[Optional[str], typer.Option(help="first valid time used, ISO UTC")] = None,
    end: Annotated[Optional[str], typer.Option(help="last valid time used, ISO UTC")] = None,
    mean_checkpoint: Annotated[Optional[str], typer.Option(
        help="cascade-flow: the trained unet checkpoint to freeze (default: train one first into OUT/mean)")] = None,
):
    """Train a model on the archive (resumes from OUT if it holds a checkpoint)."""
    from qpe_core.training.train import TrainConfig, train

    cfg = settings(lags=lags)
    tcfg = TrainConfig(archive=archive, kind=model, out=str(out_dir), max_steps=max_steps, patch=patch,
                       batch_size=batch_size, lags=cfg.lags, device=device, seed=seed, start=start, end=end,
                       lr=lr, ema_decay=ema_decay, mean_checkpoint=mean_checkpoint,
                       min_radar_coverage=cfg.min_radar_coverage)
    bar = Progress(TextColumn("[bold]train " + model), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[label]}"), console=err)
    with bar:
        task = bar.add_task("train", total=max_steps, label="")

        def step(n: int, rec: dict) -> None:
            label = f"loss {rec['loss']:.4f}  {rec['samples_per_s']:.1f} samples/s"
            if "val_loss" in rec:
                label += f"  val {rec['val_loss']:.4f}"
            bar.update(task, completed=n, label=label)

        card = train(tcfg, progress=step)
    out.print(f"checkpoint {tcfg.out}: {card['kind']}, {card['parameters']:,} parameters, "
              f"{card['training_period']['train_slots']} training slots, validation {card.get('validation')}")


@app.command()
def predict(
    archive: Annotated[str, typer.Option(help="archive cube path or s3:// URL")],
    time: Annotated[str, typer.Option(help="valid time, ISO UTC")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory")],
    members: Annotated[int, typer.Option(help="ensemble members")] = 16,
    steps: Annotated[Optional[int], typer.Option(help="sampler steps (default: the model's)")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="the kind's samplers: euler | heun | midpoint (flows), stochastic | heun (ddpm), ddim | ancestral (ddpm param=vp)")] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same ensemble)")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("data/predictions"),
    fmt: Annotated[str, typer.Option("--format", help="zarr | netcdf")] = "zarr",
):
    """Ensemble rain-rate estimate (mm/h) for one slot, written as rain(member, y, x)."""
    from qpe_core.archive import Archive
    from qpe_core.training.inference import predict as run_predict
    from qpe_core.training.inference import write_prediction

    cfg = settings()
    ds = run_predict(Archive.open(archive), time, checkpoint, members, steps, seed, sampler, device,
                     gaps=cfg.stack_gaps)
    path = write_prediction(ds, out_dir, fmt)
    rain = ds["rain"].values
    out.print(f"{path}: {ds.attrs['members']} member(s) of {ds.attrs['model_kind']} in {ds.attrs['seconds']} s; "
              f"mean {float(np.nanmean(rain)):.3f} mm/h, wet {float(np.nanmean(rain > 0.1)):.1%}, "
              f"max {float(np.nanmax(rain)):.1f} mm/h")


@app.command()
def evaluate(
    archive: Annotated[str, typer.Option(help="archive cube path or s3:// URL")],
    checkpoint: Annotated[list[Path], typer.Option(help="checkpoint directory (repeat for several)")],
    start: Annotated[Optional[str], typer.Option(help="first valid time, ISO UTC")] = None,
    end: Annotated[Optional[str], typer.Option(help="last valid time, ISO UTC")] = None,
    members: Annotated[int, typer.Option(help="ensemble members of generative models")] = 8,
    every: Annotated[int, typer.Option(help="use every N-th valid time")] = 1,
    max_cases: Annotated[Optional[int], typer.Option(help="at most this many cases, spread over the period")] = None,
    steps: Annotated[Optional[list[str]], typer.Option(
        help="sampler steps per kind, e.g. residual-flow=4 (repeat, or comma-separated)")] = None,
    baseline: Annotated[Optional[list[str]], typer.Option(
        help="external baseline NAME=PATH, e.g. crr=DIR of NWC SAF CRR netCDF files (repeat for several)")] = None,
    other_grid: Annotated[bool, typer.Option(
        "--other-grid", help="allow checkpoints trained on another grid (generalisation check)")] = False,
    window: Annotated[Optional[str], typer.Option(help="score only rows Y0:Y1 and columns X0:X1, e.g. 300:556,"
                                                       "400:656 (the models see only that window)")] = None,
    seed: Annotated[int, typer.Option(help="random seed (case k uses seed + k)")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    report: Annotated[Path, typer.Option(help="report directory")] = Path("data/report"),
):
    """Score checkpoints and baselines against the archive's radar over a period; writes metrics.json,
    report.md and figures under --report."""
    from qpe_core.evaluation import evaluate as run_evaluate
    from qpe_core.evaluation import write_report

    try:
        kind_steps = {k.strip(): int(v) for k, v in (kv.split("=") for item in steps or [] for kv in item.split(","))}
    except ValueError:
        raise QpeError(f"--steps must look like residual-flow=4 or ddpm=20,flow=8, got {steps!r}") from None
    baselines = {}
    for item in baseline or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise QpeError(f"--baseline must look like crr=PATH, got {item!r}")
        baselines[name.strip()] = path
    win = None
    if window:
        try:
            (y0, y1), (x0, x1) = (tuple(int(v) for v in part.split(":")) for part in window.split(","))
            win = (y0, y1, x0, x1)
        except ValueError:
            raise QpeError(f"--window must look like Y0:Y1,X0:X1, got {window!r}") from None
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[label]}"), console=err, disable=not err.is_terminal)
    with bar:
        task = bar.add_task("evaluate", total=None, label="")
        metrics = run_evaluate(archive, checkpoint, start, end, members, every, max_cases, kind_steps or None,
                               seed, progress=lambda done, total, label: bar.update(
                                   task, completed=done, total=total, label=label),
                               baselines=baselines, other_grid=other_grid, window=win, device=device)
    path = write_report(metrics, report)
    text = (path / "report.md").read_text()
    out.print(text.split("\n## Figures")[0], markup=False)
    out.print(f"{path / 'metrics.json'}, {path / 'report.md'} and {len(list((path / 'figures').glob('*.png')))} "
              f"figures in {path / 'figures'}", markup=False)


@app.command()
def bench(what: Annotated[str, typer.Option(help="comma-separated: simulator,archive,ingest,models,train,load")]
          = "simulator,archive,models",
          slots: Annotated[int, typer.Option(help="simulator slots")] = 1000,
          members: Annotated[int, typer.Option(help="ensemble members for the model timings")] = 16,
          checkpoint: Annotated[Optional[str], typer.Option(
              help="residual-flow checkpoint: CRPS vs steps (load: the nowcast's, default the demo one)")] = None,
          archive: Annotated[Optional[str], typer.Option(
              help="archive with radar for the CRPS study (train: the archive to train on)")] = None,
          train_steps: Annotated[int, typer.Option(help="train: optimiser steps each way")] = 100,
          days: Annotated[float, typer.Option(help="load: days of 15-minute slots to backfill")] = 7.0,
          load_dir: Annotated[Optional[str], typer.Option(
              help="load: keep the archive and products here (default: a temporary folder)")] = None):
    """Measure throughput and model cost; prints JSON on stdout."""
    from qpe_core.benchmarks import run_benchmarks

    print(json.dumps(run_benchmarks(what.split(","), n_slots=slots, members=members, checkpoint=checkpoint,
                                    archive=archive, days=days, load_dir=load_dir, train_steps=train_steps),
                     indent=2))


@app.command()
def catalog(products: Annotated[str, typer.Argument(help="products folder or s3:// URL (holds <area>.zarr)")]):
    """Rebuild the STAC catalogue (<products>/stac) from the products already there."""
    from qpe_core.products.stac import rebuild

    for area, n in rebuild(products).items():
        out.print(f"{area}: {n} items -> {products.rstrip('/')}/stac/{area}/collection.json")


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="where the demo archive and products go")] = Path("data/demo"),
         members: Annotated[int, typer.Option(help="ensemble members")] = 16):
    """The embedded default end to end: one nowcast cycle (simulated source, shipped checkpoint,
    local Prefect) writing the archive, the product cube, COGs and a quick-look."""
    from qpe_core.demo import run_demo

    run_demo(workdir, members, console=out)


@app.command()
def deploy(
    file: Annotated[Path, typer.Option("--file", help="Prefect deployment file")] = Path("deployments/prefect.yaml"),
    name: Annotated[Optional[list[str]], typer.Option(help="only this deployment (repeat for several)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be registered, send nothing")] = False,
):
    """Create the work pools and register every deployment of FILE on the Prefect API (PREFECT_API_URL),
    then the alert automations of the automations.yaml next to FILE."""
    from prefect.settings import PREFECT_API_URL

    from qpe_core import automations as alerts
    from qpe_core.deploy import deploy as run_deploy
    from qpe_core.deploy import load_project, plan, safe_url

    if dry_run:
        spec, alerts_file = load_project(file, name), alerts.automations_file(file)
        rows, pools = plan(spec, file), [(p.name, p.type, "created if missing") for p in spec.pools()]
        autos = alerts.plan(alerts.load_automations(alerts_file)) if alerts_file else []
        warning = None
    else:
        result = run_deploy(file, name)
        rows, pools, autos, warning = result.deployments, result.pools, result.automations, result.warning
    out.print(f"Prefect API: {safe_url(PREFECT_API_URL.value())}" + ("  [bold](dry run)[/]" if dry_run else ""))
    table = Table("work pool", "type", "status")
    for p in pools:
        table.add_row(*p)
    out.print(table)
    table = Table("deployment", "entrypoint", "work pool", "schedule", "concurrency", "parameters",
                  *(() if dry_run else ("action",)))
    for r in rows:
        table.add_row(r["deployment"], r["entrypoint"], r["work_pool"], "\n".join(r["schedules"]) or "-",
                      r["concurrency"], "\n".join(f"{k}={v}" for k, v in r["parameters"].items()) or "-",
                      *(() if dry_run else (r["action"],)))
    out.print(table)
    if autos:
        table = Table("automation", "trigger", "action", *(() if dry_run else ("status",)))
        for a in autos:
            table.add_row(a["automation"], a["trigger"] + ("" if a["enabled"] else " (disabled)"), a["action"],
                          *(() if dry_run else (a["status"],)))
        out.print(table)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


from qpe_core.cli_study import recalibrate_cmd, study_cmd  # noqa: E402  (its own module: cli.py stays short)

from qpe_core.cli_realism import realism_cmd  # noqa: E402
from qpe_core.cli_simulate import simulate_cmd  # noqa: E402

app.command("study")(study_cmd)
app.command("recalibrate")(recalibrate_cmd)
app.command("realism")(realism_cmd)
app.command("simulate")(simulate_cmd)


def main() -> None:
    """Console-script entry point: usage errors are click's; user errors one red line, exit 2."""
    try:
        app()
    except QpeError as exc:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
