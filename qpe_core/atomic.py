"""One way to write a local file so that readers see the old file or the new one, never a part.

:func:`write_atomically` writes through a temporary file of its own beside the target (a unique
name: threads and processes writing the same target at once never share one), then renames it over
the target (``os.replace``, atomic on POSIX file systems). A failed write leaves the target as it was
and removes the temporary file. Object stores need none of this: one PUT is already whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, write: Callable[[Path], object], mode: int | None = 0o644,
                     fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    The temporary name is hidden and ends in ``.tmp`` (``.<stem>.<random><suffix>.tmp``), which no
    reader of the package lists; a writer that appends an extension to a name it does not
    recognise (``numpy.save``) should write to an open file instead. ``mode``: the file's
    permissions (``mkstemp`` makes 0600; None keeps them); ``fsync`` flushes the file to disk before
    the rename. Returns ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f"{final.suffix}.tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_stream_atomically(path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = False) -> Path:
    """Call ``write(fh)`` on the temporary file opened for binary writing (writers that append an
    extension to a name, as ``numpy.save`` and ``numpy.savez`` do, take an open file), through
    :func:`write_atomically`."""
    def to(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return write_atomically(path, to, fsync=fsync)


def write_bytes_atomically(path: str | Path, data: bytes, fsync: bool = False) -> Path:
    """``data`` to ``path`` through :func:`write_atomically`."""
    return write_stream_atomically(path, lambda fh: fh.write(data), fsync=fsync)


def write_json_atomically(path: str | Path, obj, indent: int | None = None, default=None) -> Path:
    """``obj`` as JSON to ``path`` through :func:`write_atomically`."""
    return write_atomically(path, lambda p: p.write_text(json.dumps(obj, indent=indent, default=default)))


def write_dir_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a new temporary directory beside ``path`` (a Zarr store), then put it
    in place: a directory cannot be renamed over another, so an existing ``path`` is first renamed
    aside and removed after the new one is in. Readers see the old store or the new one, never a
    part of one; between the two renames ``path`` is briefly absent. A failed write leaves ``path``
    as it was and removes the temporary directory. Returns ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    old = None
    try:
        write(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final
