"""An inter-process lock on an object store: a lock object created with an exclusive write.

Local cubes lock with files (:mod:`filelock`); on S3 there is no file to lock, but a PUT with
``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``) succeeds for one writer only and
refuses the others (HTTP 412, ``FileExistsError``).  The lock object holds its owner and the UTC
time its lease ends: a holder that died (a killed worker) blocks the others for at most
``lease`` seconds, after which the next waiter deletes the stale object and takes the lock.

Limits, stated: a holder that outlives its lease (a slot write of more than ``lease`` seconds)
can lose the lock to a waiter; the release deletes the object only if it is still this
holder's, but that check and the delete are two requests.  S3 (AWS since 2024-08, MinIO) and
moto honour the exclusive write; a store that ignores it gives no exclusion.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid

from qpe_core.errors import ArchiveError

LEASE_S = 900.0  # a slot write takes seconds; a lock older than this is a dead holder's


def _read(fs, path: str) -> dict | None:
    """The lock object's content, or None if it is gone (or unreadable: treated as stale)."""
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {}


@contextlib.contextmanager
def object_lock(url: str, storage_options: dict | None = None, timeout: float = 600.0,
                lease: float = LEASE_S, what: str = "lock", poll: float = 0.25):
    """Hold the lock object at ``url`` (e.g. ``s3://bucket/cube.zarr.locks/20240601T1200.lock``).

    Waits up to ``timeout`` seconds for another holder, then raises :class:`ArchiveError` naming
    ``what`` and the lock object.  Removes the object on exit if it is still this holder's.
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **(storage_options or {}))
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout
    while True:
        body = json.dumps({"owner": owner, "expires": time.time() + lease}).encode()
        try:
            fs.pipe_file(path, body, mode="create")
            break
        except FileExistsError:
            held = _read(fs, path)
            if held is not None and held.get("expires", 0) < time.time():  # dead holder's lease ended
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)
                continue
            if time.monotonic() > deadline:
                raise ArchiveError(f"{what}: still held by {(held or {}).get('owner', '?')} after {timeout:.0f} s "
                                   f"(lock object {url}; it expires by itself after its lease)") from None
            time.sleep(poll)
    try:
        yield
    finally:
        if (_read(fs, path) or {}).get("owner") == owner:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)
