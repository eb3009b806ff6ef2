"""The granule-source interface and its factory.

A *granule source* answers two questions for one nominal slot start (naive UTC,
on the slot grid): which granules exist (:meth:`GranuleSource.available`) and
where they are on local disk (:meth:`GranuleSource.fetch`, downloading them into
a cache first when needed).  The paths :meth:`~GranuleSource.fetch` returns go
straight to :func:`qpe_core.ingest.ingest_seviri`.

Kinds (:func:`make_source`):

* ``"eumdac"`` - the EUMETSAT Data Store through ``eumdac``
  (:class:`qpe_core.sources.datastore.DataStoreSource`);
* ``"local"`` - replay of granules from a directory
  (:class:`qpe_core.sources.local.LocalSource`);
* ``"simulated"`` - no files; slots come from the embedded simulator
  (:class:`qpe_core.sources.simulated.SimulatedSource`).

Shared by the sources: HTTP helpers (:func:`bounded_call`, a call abandoned after
a timeout without activity; :func:`set_read_timeout`; :func:`retry_after_seconds`;
:func:`content_range`) and two process-wide policies: :data:`DOWNLOADS` limits
simultaneous downloads (:func:`set_download_limit`, default 3: the Data Store
suspends accounts above ~4 parallel connections) and :data:`REDACTOR` removes
registered secrets (credentials, access tokens) from the ``eumdac``,
``qpe_core.sources``, ``urllib3.connectionpool`` and Prefect run-logger records
(:data:`REDACTED_LOGGERS`).
"""

from __future__ import annotations

import abc
import contextlib
import email.utils
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from qpe_core.errors import ConfigError, QpeError
from qpe_core.timeutil import check_on_grid

if TYPE_CHECKING:
    from qpe_core.sources.cache import GranuleCache

LOG = logging.getLogger("qpe_core.sources")
#: Source kinds understood by :func:`make_source`.
SOURCE_KINDS = ("eumdac", "local", "simulated")


class SourceError(QpeError):
    """A granule source cannot answer (search failed, refused credentials...)."""


class DownloadError(SourceError):
    """A granule could not be downloaded or failed its integrity checks.  The message
    names the product and the slot."""


class DownloadTimeout(DownloadError):
    """No byte arrived from the server within the per-request timeout."""


@dataclass(frozen=True)
class GranuleRef:
    """One granule of one slot, as a source announces it.

    ``slot``: nominal slot start (naive UTC).  ``sensing_start``/``sensing_end``:
    scan times (naive UTC) when known.  ``md5``: checksum of the product file
    (Data Store zip) when known; ``size_kb``: its size as the Data Store reports
    it (kilobytes).  ``paths``: local files for sources that already have them."""

    source: str
    collection: str
    product_id: str
    slot: pd.Timestamp
    sensing_start: pd.Timestamp | None = None
    sensing_end: pd.Timestamp | None = None
    md5: str | None = None
    size_kb: float | None = None
    paths: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        """``<product> (<collection>) for slot <YYYY-mm-ddTHH:MMZ>``, for messages."""
        return f"product {self.product_id} ({self.collection}) for slot {self.slot.strftime('%Y-%m-%dT%H:%MZ')}"


class GranuleSource(abc.ABC):
    """Where SEVIRI granules come from.  ``slot_minutes`` is the slot grid (min)."""

    name: str = "abstract"
    slot_minutes: int = 15

    def check_slot(self, slot) -> pd.Timestamp:
        """``slot`` as a naive UTC Timestamp; raises if it is off the slot grid."""
        return check_on_grid(slot, self.slot_minutes, "slot")

    @abc.abstractmethod
    def available(self, slot) -> list[GranuleRef]:
        """Granules of the slot starting at ``slot`` (UTC); ``[]`` if there is none."""

    @abc.abstractmethod
    def fetch(self, slot, dest_cache: GranuleCache | str | Path | None = None) -> list[Path]:
        """Local paths (files or zips) of the slot's granules, ready for
        :func:`qpe_core.ingest.ingest_seviri`; ``[]`` if the slot has none.
        Sources that download put the files into ``dest_cache``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# ----------------------------------------------------------------------------- process-wide policies

class DownloadLimiter:
    """At most ``limit`` simultaneous downloads in this process (resizable)."""

    def __init__(self, limit: int = 3):
        self._cond = threading.Condition()
        self.limit, self.active = int(limit), 0

    def resize(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"download limit must be >= 1, got {limit}")
        with self._cond:
            self.limit = int(limit)
            self._cond.notify_all()

    def acquire(self) -> None:
        """Wait for a free download slot and take it."""
        with self._cond:
            self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1

    def release(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def slot(self):
        """``with DOWNLOADS.slot():`` one download."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


#: The process-wide download limiter (default 3 simultaneous downloads).
DOWNLOADS = DownloadLimiter(3)


def set_download_limit(limit: int) -> None:
    """Change the process-wide limit of simultaneous Data Store downloads."""
    DOWNLOADS.resize(limit)


class SecretRedactor(logging.Filter):
    """Replaces registered secrets by ``***`` in the log records it filters."""

    def __init__(self, keep: int = 256):
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: dict[str, None] = {}  # insertion-ordered; the oldest are dropped past ``keep``
        self._keep = keep

    def add(self, *secrets: str | None) -> None:
        """Register secrets (strings shorter than 4 characters are ignored)."""
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= 4:
                    self._secrets[secret] = None
            while len(self._secrets) > self._keep:
                self._secrets.pop(next(iter(self._secrets)))

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            secrets = list(self._secrets)
        if secrets:
            try:
                msg = record.getMessage()
            except Exception:  # a malformed record: leave it to the handler
                return True
            clean = self.redact(msg, secrets)
            if clean != msg:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:  # the traceback text, formatted once here
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info), secrets)
        return True

    def redact(self, text: str, secrets: list[str] | None = None) -> str:
        """``text`` with every registered secret replaced by ``***`` (longest first)."""
        if secrets is None:
            with self._lock:
                secrets = list(self._secrets)
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


REDACTOR = SecretRedactor()
#: Loggers whose records pass through :data:`REDACTOR`: the Data Store client and its HTTP
#: layer, the sources, and Prefect's flow- and task-run loggers (what goes to the Prefect API).
REDACTED_LOGGERS = ("eumdac", "qpe_core.sources", "urllib3.connectionpool", "prefect.flow_runs",
                    "prefect.task_runs")
for _logger in REDACTED_LOGGERS:
    logging.getLogger(_logger).addFilter(REDACTOR)


# ----------------------------------------------------------------------------- HTTP helpers

def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP ``Retry-After`` header (seconds or HTTP date) as seconds (>= 0), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size in bytes) of a ``Content-Range: bytes a-b/N`` header."""
    try:
        span, total = value.split()[1].split("/")
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except (AttributeError, IndexError, ValueError):
        return None, None


def set_read_timeout(raw, timeout: float) -> None:
    """Give the socket behind an open urllib3 response a read timeout (s): the
    connection's, or (``Connection: close``: http.client hands it over) the body's."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:  # HTTPResponse.fp = socket.makefile(): BufferedReader -> SocketIO
        sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    if sock is None:
        LOG.warning("cannot set a read timeout on the download stream; a stall would hang")
    else:
        sock.settimeout(timeout)


def bounded_call(fn: Callable, timeout: float, on_late: Callable | None = None,
                 activity: dict[int, float] | None = None, timeout_error: Callable | None = None):
    """``fn()`` in a daemon helper thread, waited for while it shows signs of life:
    it is abandoned after ``timeout`` s since its start or its last activity
    (``activity[thread id]``, monotonic s, updated by whoever watches it).  Then
    ``timeout_error()`` (default :class:`TimeoutError`) is raised here and, when the
    abandoned call ends, ``on_late(result or None)`` runs in its thread.  Returns
    ``fn()``'s result or raises its exception."""
    box: dict = {}
    lock, done = threading.Lock(), threading.Event()

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        with lock:
            done.set()
            late = box.get("abandoned")
        if late and on_late:
            on_late(box.get("value"))

    worker = threading.Thread(target=run, name="qpe-bounded-call", daemon=True)
    started = time.monotonic()
    worker.start()
    while not done.wait(0.05):
        if time.monotonic() - max(started, (activity or {}).get(worker.ident, 0.0)) > timeout:
            with lock:
                if not done.is_set():
                    box["abandoned"] = True
                    raise (timeout_error or (lambda: TimeoutError(f"no answer within {timeout:g} s")))()
    if "error" in box:
        raise box["error"]
    return box["value"]


# ----------------------------------------------------------------------------- factory

def _source_class(kind: str) -> type[GranuleSource]:
    if kind == "eumdac":
        from qpe_core.sources.datastore import DataStoreSource
        return DataStoreSource
    if kind == "local":
        from qpe_core.sources.local import LocalSource
        return LocalSource
    if kind == "simulated":
        from qpe_core.sources.simulated import SimulatedSource
        return SimulatedSource
    raise ConfigError(f"unknown granule source kind {kind!r}; known: {', '.join(SOURCE_KINDS)}")


def make_source(kind: str, **settings) -> GranuleSource:
    """Build the granule source ``kind`` (one of :data:`SOURCE_KINDS`) from keyword
    settings (the constructor arguments of its class).  Unknown kinds or settings
    raise :class:`ConfigError`."""
    cls = _source_class(kind)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(settings) - set(params) - {"self"})
    if unknown:
        known = ", ".join(p for p in params if p != "self")
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for source {kind!r}; known: {known}")
    return cls(**settings)
