"""Workers killed with SIGKILL in the middle of a write: an archive region write, a product-cube
region write, the completion marker itself, and COG writing.

The writer is a subprocess writing a series of slots; the test process watches the store and
sends SIGKILL at the moment the evidence says a write is under way (data chunks of a slot exist
but its completion marker does not; a COG's temporary file has bytes).  Then: every slot a
reader can see is complete (audit), the interrupted one is invisible, and re-running the same
writes completes every slot with the bytes of an undisturbed run."""

from __future__ import annotations

import os
import queue
import random
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from faults.audit import archive_problems, cube_problems, file_problems, snapshot
from faults.scenes import SIM_CHANNELS, child_result, ensemble, run_child, sim_slot, start_child

TIMES = [t.strftime("%Y-%m-%dT%H:%M") for t in pd.date_range("2024-06-01T00:15", periods=6, freq="15min")]


def _ints(folder: Path) -> set[int]:
    try:
        return {int(e.name) for e in os.scandir(folder) if e.name.isdigit()}
    except FileNotFoundError:
        return set()


def _kill_when(proc, ready: str, predicate, timeout: float = 60.0):
    """Wait for the child to print ``ready``, then poll ``predicate()`` every millisecond and
    SIGKILL the child as soon as it returns something truthy, which is returned (None: the
    child ended first)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if lines.get(timeout=0.5).startswith(ready):
                break
        except queue.Empty:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"child never got ready: {proc.stderr.read()[-3000:]}")
    while proc.poll() is None and time.monotonic() < deadline:
        found = predicate()
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return found
        time.sleep(0.001)
    proc.kill()
    proc.wait(30)
    return None


def _mid_write(root: Path, data: str, marker: str, known: set[int]):
    """Time indices whose data chunks exist while their marker chunk does not (new slots only)."""
    def check():
        started = _ints(root / data / "c") - known
        return sorted(started - _ints(root / marker / "c"))
    return check


def _partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.partial")]


def _chunks(store: Path, *arrays: str) -> dict[str, str]:
    """Chunk files of ``arrays`` (relative path -> size:sha1), without killed writers' temp files."""
    return {k[len(str(store)):]: v for k, v in snapshot(*(store / a for a in arrays)).items()
            if not k.endswith(".partial")}


# ----------------------------------------------------------------------------- archive

def _archive_with_first_slot(url: str):
    from qpe_core.archive import Archive

    arc = Archive.create(url, "france-3km", SIM_CHANNELS)
    arc.ensure_range("2024-06-01T00:00", "2024-06-01T23:45")
    arc.write_seviri(sim_slot("2024-06-01T00:00")[0])
    return arc


_WRITE_ARCHIVE = """
    from faults.scenes import sim_slot
    from qpe_core.archive import Archive
    arc = Archive.open({url!r}, "a")
    slots = [sim_slot(t) for t in {times!r}]
    print("READY", flush=True)
    for sev, radar in slots:
        arc.write_seviri(sev)
        arc.write_radar(radar)
"""


def _kill_archive_writer(tmp_path, delay: float = 0.0):
    url = tmp_path / "archive.zarr"
    _archive_with_first_slot(str(url))
    proc = start_child(_WRITE_ARCHIVE.format(url=str(url), times=TIMES))
    check = _mid_write(url, "bt", "bt_coverage", {0})
    if delay:
        check0 = check
        t_ready = []

        def check():
            if not t_ready:
                t_ready.append(time.monotonic())
            return check0() if time.monotonic() - t_ready[0] > delay else None
    return url, _kill_when(proc, "READY", check)


def _rerun_archive(url: Path, reference: Path) -> None:
    from qpe_core.archive import Archive

    arc = Archive.open(str(url), "a")
    for t in TIMES:
        sev, radar = sim_slot(t)
        arc.write_seviri(sev)
        arc.write_radar(radar)
    assert list(arc.times("bt")) == [pd.Timestamp("2024-06-01T00:00")] + [pd.Timestamp(t) for t in TIMES]
    if reference is not None:  # chunks byte-identical to an undisturbed run
        ref = _archive_with_first_slot(str(reference))
        for t in TIMES:
            sev, radar = sim_slot(t)
            ref.write_seviri(sev)
            ref.write_radar(radar)
        assert _chunks(url, "bt", "rain") == _chunks(reference, "bt", "rain")


def test_sigkill_during_an_archive_region_write(record, tmp_path):
    rec = record("SIGKILL of a worker during an archive region write")
    url, killed = _kill_archive_writer(tmp_path)
    assert killed, "the writer finished before it could be killed"
    rec.injected = 1
    from qpe_core.archive import Archive

    arc = Archive.open(str(url))
    hidden = [arc.time_of(i) for i in killed]
    assert not any(arc.has_slot(t) for t in hidden)  # the interrupted slot is invisible
    problems = archive_problems(url)
    assert problems == [], problems
    rec.leftovers = len(_partials(url))
    _rerun_archive(url, tmp_path / "reference.zarr")
    rec.recover(note=f"killed while writing slot(s) {[str(t) for t in hidden]}: hidden, then completed by "
                     "the re-run")
    rec.corrupt = len(archive_problems(url))


def test_sigkill_while_the_completion_marker_is_written(record, tmp_path):
    """Killed after the marker's temporary file is written, before its rename: a leftover
    ``<index>.<uuid>.partial`` file sits among the marker chunks.  Listing the markers used to
    fail on it (int() of the name), which made the whole archive unreadable."""
    rec = record("SIGKILL while the completion marker is being written (zarr temp file left)")
    url = tmp_path / "archive.zarr"
    _archive_with_first_slot(str(url))
    proc = run_child(f"""
        import os, signal
        import zarr.storage._local as local
        from faults.scenes import sim_slot
        from qpe_core.archive import Archive
        real = local._atomic_write
        import contextlib

        @contextlib.contextmanager
        def dying(path, mode, exclusive=False):
            with real(path, mode, exclusive) as fh:
                yield fh
                if "bt_coverage" in str(path) and path.name == "1":
                    fh.flush()
                    os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written, not renamed

        local._atomic_write = dying
        arc = Archive.open({str(url)!r}, "a")
        arc.write_seviri(sim_slot({TIMES[0]!r})[0])
        report(ok=True)
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = list((url / "bt_coverage" / "c").glob("*.partial"))
    assert leftovers, "no temporary marker file was left"
    rec.injected = 1
    rec.leftovers = len(leftovers)
    from qpe_core.archive import Archive, summarize

    arc = Archive.open(str(url))
    assert not arc.has_slot(TIMES[0]) and list(arc.times()) == [pd.Timestamp("2024-06-01T00:00")]
    assert summarize(arc)["bt"]["slots"] == 1
    assert archive_problems(url) == []
    Archive.open(str(url), "a").write_seviri(sim_slot(TIMES[0])[0])
    assert Archive.open(str(url)).has_slot(TIMES[0])
    rec.recover(note="slot hidden, archive readable; the re-run completed it")
    rec.corrupt = len(archive_problems(url))


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_of_archive_writes(record, tmp_path):
    rec = record("SIGKILL x6 at random moments of archive writes")
    rng = random.Random(7)
    for k in range(6):
        url, killed = _kill_archive_writer(tmp_path / f"run{k}", delay=rng.uniform(0.0, 0.3))
        assert archive_problems(url) == []
        rec.leftovers += len(_partials(url))
        _rerun_archive(url, None)
        if killed:  # else the writer had finished: no fault injected
            rec.injected += 1
            rec.recover()
        rec.corrupt += len(archive_problems(url))


# ----------------------------------------------------------------------------- product cube

_WRITE_CUBE = """
    from faults.scenes import ensemble
    from qpe_core.products.cube import ProductCube
    cube = ProductCube.open({url!r}, "a")
    enss = [ensemble(t, members=8, seed=i) for i, t in enumerate({times!r})]
    print("READY", flush=True)
    for ens in enss:
        cube.write_slot(ens)
"""


def _cube_with_first_slot(url: str):
    from qpe_core.products.cube import ProductCube

    cube = ProductCube.create(url, "france-3km", 8)
    cube.ensure_range("2024-06-01T00:00", "2024-06-01T23:45")
    cube.write_slot(ensemble("2024-06-01T00:00", members=8, seed=99))
    return cube


@pytest.mark.parametrize("times", [TIMES[:4]])
def test_sigkill_during_a_product_cube_region_write(record, tmp_path, times):
    from qpe_core.products.cube import MARKER, ProductCube

    rec = record("SIGKILL of a worker during a product cube region write")
    url = tmp_path / "france-3km.zarr"
    _cube_with_first_slot(str(url))
    proc = start_child(_WRITE_CUBE.format(url=str(url), times=times))
    killed = _kill_when(proc, "READY", _mid_write(url, "qpe", "qpe_coverage", {0}))
    assert killed, "the writer finished before it could be killed"
    rec.injected = 1
    cube = ProductCube.open(str(url))
    assert not any(cube.has_slot(cube.time_of(i)) for i in killed)
    assert cube_problems(url) == []
    rec.leftovers = len(_partials(url))
    cube = ProductCube.open(str(url), "a")
    for i, t in enumerate(times):  # the re-run
        cube.write_slot(ensemble(t, members=8, seed=i))
    assert len(cube.times()) == len(times) + 1
    ref = _cube_with_first_slot(str(tmp_path / "ref.zarr"))
    for i, t in enumerate(times):
        ref.write_slot(ensemble(t, members=8, seed=i))
    assert _chunks(url, "qpe", "mean", MARKER) == _chunks(tmp_path / "ref.zarr", "qpe", "mean", MARKER)
    rec.recover()
    rec.corrupt = len(cube_problems(url))


# ----------------------------------------------------------------------------- COGs

_WRITE_COGS = """
    from faults.scenes import ensemble
    from qpe_core.products.cog import write_cogs
    from qpe_core.products.ensemble_stats import ensemble_stats
    stats = [ensemble_stats(ensemble(t, members=4, seed=i)) for i, t in enumerate({times!r})]
    print("READY", flush=True)
    for s in stats:
        write_cogs(s, {root!r})
"""


def _tmp_with_bytes(root: Path):
    def check():
        for folder, _, names in os.walk(root):
            for name in names:
                if name.endswith(".tif.tmp"):
                    try:
                        if os.stat(os.path.join(folder, name)).st_size > 0:
                            return name
                    except FileNotFoundError:
                        pass
        return None
    return check


def _cog_kill_run(tmp_path, times, record_rec, reference: Path | None):
    from qpe_core.products.cog import write_cogs
    from qpe_core.products.ensemble_stats import ensemble_stats

    root = tmp_path / "products"
    proc = start_child(_WRITE_COGS.format(root=str(root), times=times))
    killed = _kill_when(proc, "READY", _tmp_with_bytes(root))
    assert killed, "the writer finished before it could be killed"
    record_rec.injected += 1
    problems, leftovers = file_problems(root)
    assert problems == [], problems  # every COG under its final name is complete
    assert leftovers  # the interrupted one: a hidden temporary file only
    record_rec.leftovers += len(leftovers)
    final = killed.split(".", 2)[1] + ".tif"  # .<stem>.<random>.tif.tmp
    assert not list(root.rglob(final)), f"{final} visible after the kill"
    for i, t in enumerate(times):  # the re-run
        write_cogs(ensemble_stats(ensemble(t, members=4, seed=i)), root)
    problems, _ = file_problems(root)
    assert problems == [] and len(list(root.rglob("*.tif"))) == 6 * len(times)
    if reference is not None:
        for i, t in enumerate(times):
            write_cogs(ensemble_stats(ensemble(t, members=4, seed=i)), reference)
        got = {p.name: p.read_bytes() for p in root.rglob("*.tif")}
        want = {p.name: p.read_bytes() for p in reference.rglob("*.tif")}
        assert got == want  # byte-identical to an undisturbed run
    record_rec.recover()


def test_sigkill_during_cog_writing(record, tmp_path):
    rec = record("SIGKILL of a worker while a COG is being written")
    _cog_kill_run(tmp_path, TIMES[:3], rec, tmp_path / "reference")


@pytest.mark.slow
def test_repeated_sigkills_during_cog_and_cube_writes(record, tmp_path):
    rec = record("SIGKILL x4 during COG writing + x4 during cube writes (random moments)")
    rng = random.Random(3)
    for k in range(4):
        _cog_kill_run(tmp_path / f"cog{k}", TIMES[k:k + 3], rec, None)
    for k in range(4):
        url = tmp_path / f"cube{k}" / "france-3km.zarr"
        url.parent.mkdir()
        _cube_with_first_slot(str(url))
        proc = start_child(_WRITE_CUBE.format(url=str(url), times=TIMES[:6]))
        wait = rng.uniform(0.0, 0.5)
        t0 = []

        def late_mid_write(check=_mid_write(url, "qpe", "qpe_coverage", {0})):
            t0.append(t0[0] if t0 else time.monotonic())
            return check() if time.monotonic() - t0[0] > wait else None

        if _kill_when(proc, "READY", late_mid_write):
            rec.injected += 1
            rec.recover()
        assert cube_problems(url) == []
    assert rec.corrupt == 0


def test_child_helper_reports(tmp_path):
    """The subprocess helper itself: a result comes back (guards the other tests' plumbing)."""
    assert child_result(run_child("report(ok=True, value=41 + 1)"))["value"] == 42
