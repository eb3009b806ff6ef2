"""Granule cache: downloaded products keyed by collection and slot, on local disk
or an object store (``s3://`` through s3fs / fsspec).

Layout under the cache root::

    <collection-sanitised>/<YYYY>/<MM>/<DD>/<HHMM>/<product>.zip        the granule
    <collection-sanitised>/<YYYY>/<MM>/<DD>/<HHMM>/<product>.zip.json   sidecar: md5, size (bytes),
                                                                        fetched_at (UTC), product
    <collection-sanitised>/<YYYY>/<MM>/<DD>/<HHMM>/_slot.json           slot manifest (products)

``<HHMM>`` is the nominal slot start (UTC).  A granule is *valid* when its size and
MD5 match the sidecar (and the Data Store MD5 when given) and the zip tests clean;
a valid granule is never downloaded again, an invalid one is deleted so that it is
fetched anew.  Downloads are written to ``<final>.part`` and renamed only once
verified.  On ``s3://`` the ``.part`` files and a local copy of each granule live in
a local staging folder (ingest needs local paths); the object store holds the
reference copy, uploaded before its sidecar.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
from filelock import FileLock

from qpe_core.atomic import write_bytes_atomically
from qpe_core.sources.base import SourceError

LOG = logging.getLogger("qpe_core.sources")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
MANIFEST = "_slot.json"


# ----------------------------------------------------------------------------- names and checks

def sanitize_name(name: str, default: str = "product") -> str:
    """A file name safe to join to a folder: the last path component of ``name``
    (``/`` and ``\\`` both separate), characters outside ``[A-Za-z0-9._+-]``
    replaced by ``_``, no leading dots, at most 180 characters; ``default`` if
    nothing is left."""
    base = re.split(r"[\\/]", str(name).replace("\x00", ""))[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")[:180]
    return base if base.strip("_") else default


def product_filename(product_id: str) -> str:
    """Cache file name of a product: the sanitised id with a ``.zip`` suffix."""
    name = sanitize_name(product_id)
    return name if name.lower().endswith(".zip") else f"{name}.zip"


def file_md5(path: Path, chunk: int = 1 << 22) -> str:
    """Hex MD5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_granule(path: Path, md5: str | None = None, size: int | None = None) -> str | None:
    """Why ``path`` is not a valid granule (size in bytes, MD5 hex, zip test), or
    None when it is valid."""
    if not path.is_file():
        return "file missing"
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if md5 is not None:
        got = file_md5(path)
        if got.lower() != md5.lower():
            return f"MD5 {got} differs from the expected {md5.lower()}"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a valid zip archive ({exc})"
    return f"zip member {bad} is corrupt" if bad else None


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- the cache

class GranuleCache:
    """Granules on local disk (``url`` a path) or on an object store (``s3://...``,
    ``storage_options`` for s3fs).  ``staging_dir``: local folder for ``.part``
    files and local copies when the cache is remote (default: a folder under the
    system temp dir)."""

    def __init__(self, url: str | Path, storage_options: dict | None = None,
                 staging_dir: str | Path | None = None):
        self.url = str(url)
        self.remote = "://" in self.url and not self.url.startswith("file://")
        self.fs = None
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
            self.root = self.root.rstrip("/")
            tag = hashlib.sha1(self.url.encode()).hexdigest()[:12]
            self.local_root = Path(staging_dir or Path(tempfile.gettempdir()) / "qpe-granules" / tag)
        else:
            self.local_root = Path(self.url.removeprefix("file://"))
        self.local_root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"GranuleCache({self.url!r})"

    # -- keys
    def slot_key(self, collection: str, slot: pd.Timestamp) -> str:
        """``<collection>/<YYYY>/<MM>/<DD>/<HHMM>`` (slot start, UTC)."""
        return f"{sanitize_name(collection, 'collection')}/{slot.strftime('%Y/%m/%d/%H%M')}"

    def local_path(self, collection: str, slot: pd.Timestamp, product_id: str) -> Path:
        """Local final path of a product; never outside the local cache root."""
        path = self.local_root / self.slot_key(collection, slot) / product_filename(product_id)
        root = self.local_root.resolve()
        if not path.resolve().is_relative_to(root):  # defence in depth: names are sanitised
            raise SourceError(f"refusing cache path {path} outside {root}")
        return path

    def part_path(self, collection: str, slot: pd.Timestamp, product_id: str) -> Path:
        """Where a download in progress is written (``<final>.part``, local)."""
        final = self.local_path(collection, slot, product_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(final.name + ".part")

    def lock(self, collection: str, slot: pd.Timestamp, product_id: str, timeout: float = 3600.0) -> FileLock:
        """A file lock guarding one product (threads and processes on this machine)."""
        final = self.local_path(collection, slot, product_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(final.with_name(final.name + ".lock")), timeout=timeout)

    def _remote(self, collection: str, slot: pd.Timestamp, name: str) -> str:
        return f"{self.root}/{self.slot_key(collection, slot)}/{name}"

    # -- metadata files
    def _read_json(self, collection: str, slot: pd.Timestamp, name: str) -> dict | None:
        try:
            if self.remote:
                raw = self.fs.cat_file(self._remote(collection, slot, name))
            else:
                raw = (self.local_root / self.slot_key(collection, slot) / name).read_bytes()
            return json.loads(raw)
        except (FileNotFoundError, ValueError):
            return None

    def _write_json(self, collection: str, slot: pd.Timestamp, name: str, data: dict) -> None:
        raw = json.dumps(data, indent=1).encode()
        # a temporary name of its own: threads of one process may write the same manifest at once
        write_bytes_atomically(self.local_root / self.slot_key(collection, slot) / name, raw)
        if self.remote:
            self.fs.pipe_file(self._remote(collection, slot, name), raw)

    def _remove(self, collection: str, slot: pd.Timestamp, *names: str) -> None:
        for name in names:
            (self.local_root / self.slot_key(collection, slot) / name).unlink(missing_ok=True)
            if self.remote:
                try:
                    self.fs.rm_file(self._remote(collection, slot, name))
                except FileNotFoundError:
                    pass

    # -- granules
    def lookup(self, collection: str, slot: pd.Timestamp, product_id: str, md5: str | None = None) -> Path | None:
        """Local path of a valid cached granule, or None.  An invalid one (size, MD5,
        zip, or an MD5 other than ``md5`` from the Data Store) is deleted."""
        name = product_filename(product_id)
        meta = self._read_json(collection, slot, name + ".json")
        final = self.local_path(collection, slot, product_id)
        if meta is None:
            if final.exists():
                LOG.warning("cached granule %s has no sidecar; discarding it", final)
                self._remove(collection, slot, name)
            return None
        problem = None
        if md5 and meta.get("md5") and md5.lower() != str(meta["md5"]).lower():
            problem = f"cached MD5 {meta['md5']} differs from the Data Store's {md5}"
        elif self.remote:
            problem = self._materialise(collection, slot, name, final, meta)
        else:
            problem = check_granule(final, meta.get("md5"), meta.get("size"))
        if problem:
            LOG.warning("corrupt cached granule %s (%s); it will be fetched again", final, problem)
            self._remove(collection, slot, name, name + ".json", MANIFEST)
            return None
        return final

    def _materialise(self, collection: str, slot: pd.Timestamp, name: str, final: Path, meta: dict) -> str | None:
        """Make sure the local copy of a remote granule is there and valid."""
        if check_granule(final, meta.get("md5"), meta.get("size")) is None:
            return None
        remote = self._remote(collection, slot, name)
        try:
            info = self.fs.info(remote)
        except FileNotFoundError:
            return "object missing from the store"
        if meta.get("size") is not None and int(info.get("size", -1)) != int(meta["size"]):
            return f"object size {info.get('size')} bytes, sidecar says {meta['size']}"
        part = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(remote, str(part))
        problem = check_granule(part, meta.get("md5"), meta.get("size"))
        if problem:
            part.unlink(missing_ok=True)
            return problem
        part.replace(final)
        return None

    def commit(self, part: Path, collection: str, slot: pd.Timestamp, product_id: str, md5: str,
               size: int, **extra) -> Path:
        """Move a verified ``.part`` download to its final name (and upload it when
        remote), then write its sidecar; returns the local final path."""
        final = self.local_path(collection, slot, product_id)
        name = final.name
        part.replace(final)
        if self.remote:
            self.fs.put_file(str(final), self._remote(collection, slot, name))
        sidecar = {"product": product_id, "collection": collection, "slot": slot.strftime("%Y-%m-%dT%H:%MZ"),
                   "md5": md5, "size": int(size), "fetched_at": _utc_now(), **extra}
        self._write_json(collection, slot, name + ".json", sidecar)
        return final

    # -- slots
    def write_manifest(self, collection: str, slot: pd.Timestamp, product_ids: list[str]) -> None:
        """Record that the slot is complete with these products."""
        self._write_json(collection, slot, MANIFEST, {"products": list(product_ids), "written_at": _utc_now()})

    def slot_hit(self, collection: str, slot: pd.Timestamp) -> list[Path] | None:
        """Local paths of a complete, valid cached slot, or None (missing or invalid)."""
        manifest = self._read_json(collection, slot, MANIFEST)
        if not manifest or not manifest.get("products"):
            return None
        paths = []
        for pid in manifest["products"]:
            path = self.lookup(collection, slot, pid)
            if path is None:
                self._remove(collection, slot, MANIFEST)
                return None
            paths.append(path)
        return paths


def as_cache(cache: GranuleCache | str | Path, storage_options: dict | None = None) -> GranuleCache:
    """``cache`` as a :class:`GranuleCache` (paths and URLs are wrapped)."""
    return cache if isinstance(cache, GranuleCache) else GranuleCache(cache, storage_options)
