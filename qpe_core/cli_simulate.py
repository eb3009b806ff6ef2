"""``qpe simulate``: simulated SEVIRI (K) and radar (mm/h) slots into an archive, or, with
``--rain-from``, SEVIRI synthesised by the simulator for the real radar rain of another archive
(:mod:`qpe_core.simulate_archive`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from qpe_core.errors import QpeError


def simulate_cmd(
    start: Annotated[Optional[str], typer.Option(
        help="first slot, ISO UTC, e.g. 2024-06-01T00:00Z (with --rain-from: default the source's first radar slot)")]
    = None,
    periods: Annotated[Optional[int], typer.Option(
        help="number of slots (default 96; with --rain-from: through the source's last radar slot)", min=1)] = None,
    area: Annotated[Optional[str], typer.Option("--area", help="target grid (see `qpe areas`)")] = None,
    archive: Annotated[Optional[str], typer.Option("--archive", help="archive cube path or s3:// URL")] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same data)")] = 0,
    rain_from: Annotated[Optional[str], typer.Option(
        "--rain-from", help="archive whose radar rain drives the simulator: synthesise SEVIRI for it "
                            "(the rain is copied unchanged; the output is on the source's grid)")] = None,
):
    """Simulate co-located SEVIRI and radar slots and write them to the archive (--rain-from: SEVIRI
    synthesised for real radar rain)."""
    from qpe_core.cli import _open_archive, out, progress_bar, settings

    if rain_from is not None:
        _rain_from(rain_from, archive, area, start, periods, seed)
        return
    from qpe_core.simulate_archive import simulate_to_archive

    if start is None:
        raise QpeError("--start is required (or --rain-from ARCHIVE to follow real radar rain)")
    periods = 96 if periods is None else periods
    cfg = settings(area=area, archive_url=archive)
    arc = _open_archive(cfg.resolved_archive_url(), cfg.area, cfg.channels, cfg.slot_minutes)
    with progress_bar(periods, "simulate") as step:
        stats = simulate_to_archive(arc, start, periods, seed, progress=step)
    out.print(f"simulated {stats['slots']} slots into {arc.url} "
              f"({stats['slots_per_s']:.1f} slots/s, mean wet fraction {stats['wet_fraction']:.1%})")


def _rain_from(source_url: str, archive: str | None, area: str | None, start, periods, seed: int) -> None:
    from qpe_core.cli import out, progress_bar
    from qpe_core.simulate_archive import open_rain_pair, rain_from_archive, rain_slots

    if archive is None:
        raise QpeError("--rain-from needs --archive OUT: where the synthesised slots go (a new archive, or one "
                       "on the source's grid to append to)")
    source, arc = open_rain_pair(source_url, archive, area, start, periods)
    n = len(rain_slots(source, start, periods))
    with progress_bar(n, "simulate --rain-from") as step:
        stats = rain_from_archive(source, arc, start, periods, seed, progress=step)
    k = lambda v: "-" if v is None else f"{v:.1f} K"  # noqa: E731
    out.print(f"synthesised SEVIRI for {stats['slots']} radar slot(s) {stats['first']} .. {stats['last']} of "
              f"{source.url} into {arc.url} ({stats['slots_per_s']:.1f} slots/s, seed {seed}); mean wet fraction "
              f"{stats['wet_fraction']:.1%}; IR_108 median {k(stats['ir108_heavy_median_k'])} where R >= 10 mm/h, "
              f"{k(stats['ir108_dry_median_k'])} where dry", markup=False)
    if stats["skipped"]:
        out.print(f"no radar in the source at {len(stats['skipped'])} slot(s) in between (nothing written): "
                  + ", ".join(stats["skipped"][:12]) + (" ..." if len(stats["skipped"]) > 12 else ""), markup=False)
