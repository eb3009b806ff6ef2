"""Integrity audits of what the operational chain leaves behind, used after every fault.

Each ``*_problems`` function returns a list of human-readable problems: an output that a
reader can see (a slot whose completion marker is set, a COG or PNG under its final name, a
cached granule with its sidecar) and that is not complete and consistent.  An empty list
means nothing half-written is visible.  ``snapshot`` captures a local store (every file with
its size and hash, plus the completion markers) to prove a refused input left it untouched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def archive_problems(url: str, storage_options: dict | None = None) -> list[str]:
    """Every complete slot of an archive reads back and its data match its coverage marker."""
    from qpe_core.archive import Archive

    try:
        arc = Archive.open(str(url), storage_options=storage_options)
    except Exception as exc:  # an archive that cannot even be opened is corrupt
        return [f"{url}: cannot open ({exc})"]
    problems = []
    for kind in ("bt", "rain"):
        for t, cov in arc.coverage(kind).items():
            try:
                data = arc.read_bt(t) if kind == "bt" else arc.read_rain(t)
            except Exception as exc:
                problems.append(f"{url} {kind} {t}: marker set but data unreadable ({exc})")
                continue
            got = float(np.isfinite(data).mean())
            if abs(got - float(cov)) > 1e-6:
                problems.append(f"{url} {kind} {t}: marker says coverage {cov:.4f}, data hold {got:.4f}")
    return problems


def cube_problems(url: str, storage_options: dict | None = None) -> list[str]:
    """Every complete product slot reads back, its statistics match its marker and metadata."""
    from qpe_core.products.cube import ProductCube

    try:
        cube = ProductCube.open(str(url), storage_options=storage_options)
    except Exception as exc:
        return [f"{url}: cannot open ({exc})"]
    problems = []
    for t, cov in cube.coverage().items():
        try:
            ds = cube.read_slot(t)
            meta = cube.slot_metadata(t)
        except Exception as exc:
            problems.append(f"{url} {t}: marker set but slot unreadable ({exc})")
            continue
        got = float(np.isfinite(ds["mean"].values).mean())
        if abs(got - float(cov)) > 1e-6:
            problems.append(f"{url} {t}: marker says coverage {cov:.4f}, mean holds {got:.4f}")
        members = ds["rain"].values
        if np.isfinite(members).mean() + 1e-6 < got:
            problems.append(f"{url} {t}: members less complete than their mean (half-written members)")
        if int(meta.get("members", -1)) != cube.members:
            problems.append(f"{url} {t}: metadata members {meta.get('members')} != {cube.members}")
    return problems


def file_problems(root: str | Path) -> tuple[list[str], list[str]]:
    """(problems, leftovers) of a product tree: every ``.tif`` under its final name must be a
    valid COG that reads back, every ``.png`` a complete PNG.  Leftovers are temporary files
    (``*.tmp``, hidden), which no product reader lists."""
    from PIL import Image
    from rio_cogeo.cogeo import cog_validate

    import rasterio

    problems, leftovers = [], []
    root = Path(root)
    if not root.exists():
        return problems, leftovers
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.name
        if name.endswith(".tmp") or name.startswith("."):
            if path.suffix in (".tif", ".png") or ".tif." in name or ".png." in name:
                leftovers.append(str(path))
            continue
        if path.suffix == ".tif":
            try:
                ok, errors, _ = cog_validate(str(path), quiet=True)
                with rasterio.open(path) as src:
                    src.read(1)
                if not ok:
                    problems.append(f"{path}: not a valid COG ({errors})")
            except Exception as exc:
                problems.append(f"{path}: unreadable GeoTIFF ({exc})")
        elif path.suffix == ".png":
            try:
                with Image.open(path) as im:
                    im.load()
            except Exception as exc:
                problems.append(f"{path}: unreadable PNG ({exc})")
    return problems, leftovers


def cache_problems(root: str | Path) -> list[str]:
    """Every cached granule with a sidecar (what :meth:`GranuleCache.lookup` trusts) is valid."""
    import json

    from qpe_core.sources.cache import check_granule

    problems = []
    for sidecar in sorted(Path(root).rglob("*.zip.json")):
        meta = json.loads(sidecar.read_text())
        granule = sidecar.with_name(sidecar.name.removesuffix(".json"))
        problem = check_granule(granule, meta.get("md5"), meta.get("size"))
        if problem:
            problems.append(f"{granule}: sidecar present but {problem}")
    return problems


def snapshot(*roots: str | Path) -> dict[str, str]:
    """``{path: 'size:sha1'}`` of every file under the roots (missing roots give nothing)."""
    out = {}
    for root in map(Path, roots):
        if not root.exists():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            out[str(path)] = f"{path.stat().st_size}:{hashlib.sha1(path.read_bytes()).hexdigest()}"
    return out


def markers(url: str) -> dict[str, dict[str, float]]:
    """The completion markers of an archive: ``{kind: {time: coverage}}``."""
    from qpe_core.archive import Archive

    arc = Archive.open(str(url))
    return {kind: {str(t): float(v) for t, v in arc.coverage(kind).items()} for kind in ("bt", "rain")}
