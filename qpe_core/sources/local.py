"""Replay of SEVIRI granules from a directory on disk (HRIT segments, native or
netCDF files, or Data Store zips).

Files are matched to slots by the slot time in their names, through
:func:`qpe_core.readers.seviri.group_slots` (which also checks each file's content
is SEVIRI); files that are not SEVIRI granules are skipped (Satip ``.zarr.zip``
files too: give those to :func:`qpe_core.ingest.ingest_seviri` directly).  The
files are used in place: :meth:`LocalSource.fetch` copies nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from qpe_core.errors import ConfigError, InputFileError
from qpe_core.sources.base import GranuleRef, GranuleSource
from qpe_core.timeutil import iso

LOG = logging.getLogger("qpe_core.sources")


class LocalSource(GranuleSource):
    """Granules from ``directory`` (files matching ``pattern``; subfolders too when
    ``recursive``).  ``slot_minutes``: slot grid (min)."""

    name = "local"

    def __init__(self, directory: str | Path, pattern: str = "*", recursive: bool = False,
                 slot_minutes: int = 15):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(f"local granule directory {self.directory} does not exist")
        self.pattern, self.recursive, self.slot_minutes = pattern, bool(recursive), int(slot_minutes)
        self._known: dict[tuple[str, int, int], pd.Timestamp | None] = {}  # (path, size, mtime) -> slot

    def __repr__(self) -> str:
        return f"<LocalSource {self.directory}>"

    def _slot_of(self, path: Path) -> pd.Timestamp | None:
        """Slot start (UTC) of one file from its name, or None if it is no SEVIRI granule."""
        from qpe_core.readers.seviri import group_slots

        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._known:
            try:
                self._known[key] = next(iter(group_slots([path], self.slot_minutes)))
            except (InputFileError, StopIteration) as exc:
                LOG.debug("skipping %s: %s", path, exc)
                self._known[key] = None
        return self._known[key]

    def slots(self) -> dict[pd.Timestamp, list[Path]]:
        """Every slot found in the directory with its files, sorted by time."""
        found: dict[pd.Timestamp, list[Path]] = {}
        files = self.directory.rglob(self.pattern) if self.recursive else self.directory.glob(self.pattern)
        for path in sorted(p for p in files if p.is_file()):
            slot = self._slot_of(path)
            if slot is not None:
                found.setdefault(slot, []).append(path)
        return dict(sorted(found.items()))

    def available(self, slot) -> list[GranuleRef]:
        """One reference per file of the slot (``paths`` holds the file)."""
        slot = self.check_slot(slot)
        return [GranuleRef(self.name, str(self.directory), p.name, slot, paths=(p,))
                for p in self.slots().get(slot, [])]

    def fetch(self, slot, dest_cache=None) -> list[Path]:
        """The slot's files in place (``dest_cache`` is not used); ``[]`` if none."""
        slot = self.check_slot(slot)
        paths = self.slots().get(slot, [])
        if not paths:
            LOG.info("slot %s: no granule in %s", iso(slot), self.directory)
        return paths
