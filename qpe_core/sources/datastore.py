"""EUMETSAT Data Store source through ``eumdac``.

Collections: ``EO:EUM:DAT:MSG:MSG15-RSS`` (Rapid Scan, 5-minute scans) first, then
``EO:EUM:DAT:MSG:HRSEVIRI`` (0-degree service, 15-minute scans) when the Rapid Scan
has no product for the slot.  A product belongs to the slot when its sensing start
floored to the collection cadence is the slot start (UTC); the search window is
``[slot, slot + cadence]`` (``dtstart``/``dtend``).

Downloads go through ``eumdac.product.Product.open``, wrapped with:

* a timeout (s) per request: eumdac sets none, so each eumdac call runs in a helper
  thread abandoned after ``timeout`` s without activity (eumdac's logged internal
  retries count as activity); the open stream's socket gets it as read timeout;
* ``<name>.part`` then rename; size (``Content-Length`` / ``Content-Range``, the Data
  Store size in KB), MD5 (``product.md5``) and ``zipfile.testzip`` checked;
* resume with ``Range: bytes=<part size>-`` when a ``.part`` exists;
* the process-wide limit :data:`~qpe_core.sources.base.DOWNLOADS` (default 3); an
  abandoned request keeps its slot until its connection is closed;
* bounded retries: 429 waits ``Retry-After`` (s or HTTP date); 500/502/503/504,
  connection errors, stalls and short reads back off exponentially with jitter;
  a 401 renews the token.  eumdac's urllib3 layer already retries 5xx three
  times and honours ``Retry-After`` inside each attempt.

Credentials come from :class:`qpe_core.config.Settings` (``SecretStr``, env
``EUMETSAT_CONSUMER_KEY`` / ``EUMETSAT_CONSUMER_SECRET``) or, when absent there, from
the Prefect Secret blocks named by ``eumetsat_key_block`` / ``eumetsat_secret_block``;
they (also base64-encoded) and the access tokens are redacted from the logs
(:data:`~qpe_core.sources.base.REDACTOR`) and never put in messages.  ``api_url``
(eumdac's ``[DEFAULT] api`` root, default setting ``eumetsat_api_url``) or ``urls_ini``
(a complete eumdac ``endpoints.ini``) point eumdac at another server.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import requests
import urllib3
from eumdac.datastore import DataStore
from eumdac.errors import EumdacError
from eumdac.token import URLs
from pydantic import SecretStr

from qpe_core.config import Settings, load_settings
from qpe_core.errors import ConfigError
from qpe_core.sources.base import (DOWNLOADS, DownloadError, DownloadTimeout, GranuleRef, GranuleSource,
                                   SourceError, content_range, set_read_timeout)
from qpe_core.sources.cache import GranuleCache, as_cache, check_granule, file_md5
from qpe_core.sources.eumdac_io import (Token, Transient, block_secret, bounded, classify, redact_credentials,
                                        secret_value)
from qpe_core.timeutil import iso

LOG = logging.getLogger("qpe_core.sources")
ZERO_DEG = "EO:EUM:DAT:MSG:HRSEVIRI"
RSS = "EO:EUM:DAT:MSG:MSG15-RSS"
#: Scan cadence of each collection, minutes.
CADENCE = {ZERO_DEG: 15, RSS: 5}


# ----------------------------------------------------------------------------- the source

class DataStoreSource(GranuleSource):
    """SEVIRI granules from the EUMETSAT Data Store (see the module docstring).

    ``consumer_key``/``consumer_secret`` (str or SecretStr) default to ``settings``
    (or :func:`load_settings`: the environment), then to its Prefect Secret blocks.
    ``api_url``: API root (default ``settings.eumetsat_api_url``, else
    ``https://api.eumetsat.int``); ``urls_ini``: an eumdac endpoints file.
    ``collections``: by preference.  ``slot_minutes``: slot grid (min, default
    ``settings.slot_minutes``).  ``cache``: path, ``s3://`` URL or :class:`GranuleCache`
    (default ``<settings.cache_dir>/granules``).  ``timeout``: per request (s);
    ``max_attempts``: tries per request; ``backoff_s``/``backoff_max_s``: first and
    largest jittered back-off (s); ``max_retry_after_s``: longest ``Retry-After`` (s)."""

    name = "eumdac"

    def __init__(self, consumer_key: str | SecretStr | None = None, consumer_secret: str | SecretStr | None = None,
                 settings: Settings | None = None, api_url: str | None = None, urls_ini: str | Path | None = None,
                 collections: Sequence[str] = (RSS, ZERO_DEG), slot_minutes: int | None = None,
                 cache: GranuleCache | str | Path | None = None, storage_options: dict | None = None,
                 timeout: float = 60.0, max_attempts: int = 5, backoff_s: float = 2.0,
                 backoff_max_s: float = 60.0, max_retry_after_s: float = 900.0):
        need = None in (consumer_key, consumer_secret, slot_minutes, cache)
        cfg = settings if settings is not None else (load_settings() if need else None)
        key = secret_value(consumer_key if consumer_key is not None else cfg.eumetsat_consumer_key)
        secret = secret_value(consumer_secret if consumer_secret is not None else cfg.eumetsat_consumer_secret)
        if not key and cfg is not None and cfg.eumetsat_key_block:
            key = block_secret(cfg.eumetsat_key_block)
        if not secret and cfg is not None and cfg.eumetsat_secret_block:
            secret = block_secret(cfg.eumetsat_secret_block)
        if not key or not secret:
            raise ConfigError("EUMETSAT Data Store credentials missing: set EUMETSAT_CONSUMER_KEY and "
                              "EUMETSAT_CONSUMER_SECRET (or QPE_EUMETSAT_CONSUMER_KEY / _SECRET), or name "
                              "Prefect Secret blocks (QPE_EUMETSAT_KEY_BLOCK / QPE_EUMETSAT_SECRET_BLOCK)")
        redact_credentials(key, secret)
        api_url = api_url or (cfg.eumetsat_api_url if cfg is not None and urls_ini is None else None)
        if urls_ini is not None and not Path(urls_ini).is_file():
            raise ConfigError(f"eumdac endpoints file {urls_ini} does not exist")
        urls = URLs(str(urls_ini)) if urls_ini is not None else URLs()
        if api_url:
            urls.set("DEFAULT", "api", api_url.rstrip("/"))
        if not collections or max_attempts < 1 or timeout <= 0:
            raise ConfigError("need at least one collection, max_attempts >= 1 and timeout > 0")
        self.api_url = urls.get("DEFAULT", "api")
        self.collections = list(collections)
        self.slot_minutes = int(slot_minutes or cfg.slot_minutes)
        self._cache_spec = (cache if cache is not None else Path(cfg.cache_dir) / "granules", storage_options)
        self._cache: GranuleCache | None = None
        self.timeout, self.max_attempts = float(timeout), int(max_attempts)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self._token = Token((key, secret), urls=urls)
        self._datastore = DataStore(self._token)

    def __repr__(self) -> str:
        return f"<DataStoreSource {self.api_url} {', '.join(self.collections)}>"

    @property
    def cache(self) -> GranuleCache:
        """The default granule cache (created on first use)."""
        if self._cache is None:
            self._cache = as_cache(*self._cache_spec)
        return self._cache

    # -- public
    def available(self, slot) -> list[GranuleRef]:
        """The slot's product in the first collection that has one (a search per
        collection tried); ``[]`` if none has."""
        slot = self.check_slot(slot)
        for collection in self.collections:
            refs = self._search(collection, slot)
            if refs:
                return refs
        return []

    def fetch(self, slot, dest_cache: GranuleCache | str | Path | None = None) -> list[Path]:
        """Local zip(s) of the slot: a complete valid cached slot of any collection
        (preference order) is returned without network access; else the first
        collection with a product is searched and downloaded into the cache.  A cache
        that cannot be read or written (disk full, object store refusing) raises
        :class:`DownloadError` naming the slot, the cache and the cause."""
        slot = self.check_slot(slot)
        cache = as_cache(dest_cache) if dest_cache is not None else self.cache
        try:
            return self._fetch(slot, cache)
        except OSError as exc:  # download failures are classified inside; these are the cache's
            raise DownloadError(f"slot {iso(slot)}: granule cache {cache.url} failed: "
                                f"{type(exc).__name__}: {str(exc)[:300]}") from exc

    def _fetch(self, slot: pd.Timestamp, cache: GranuleCache) -> list[Path]:
        for collection in self.collections:
            hit = cache.slot_hit(collection, slot)
            if hit:
                LOG.info("slot %s: cached %s granule(s) %s", iso(slot), collection, [p.name for p in hit])
                return hit
        for collection in self.collections:
            refs = self._search(collection, slot)
            if refs:
                paths = [self._get(ref, cache) for ref in refs]
                cache.write_manifest(collection, slot, [ref.product_id for ref in refs])
                return paths
            LOG.info("slot %s: no product in %s", iso(slot), collection)
        LOG.warning("slot %s: no product in %s", iso(slot), " nor ".join(self.collections))
        return []

    # -- search
    def _search(self, collection: str, slot: pd.Timestamp) -> list[GranuleRef]:
        cadence = CADENCE.get(collection, self.slot_minutes)
        start, end = slot.to_pydatetime(), (slot + pd.Timedelta(minutes=cadence)).to_pydatetime()

        def run() -> list[GranuleRef]:
            found = self._datastore.get_collection(collection).search(dtstart=start, dtend=end)
            return [self._ref(collection, slot, p) for p in found]

        what = f"search of {collection} for slot {iso(slot)}"
        refs = self._with_retries(lambda: bounded(run, self.timeout), what, SourceError)
        refs = [r for r in refs if r.sensing_start is not None and r.sensing_start.floor(f"{cadence}min") == slot]
        return sorted(refs, key=lambda r: r.sensing_start)[:1]

    def _ref(self, collection: str, slot: pd.Timestamp, product) -> GranuleRef:
        def prop(name):  # metadata a product may lack (md5, size) -> None
            try:
                return getattr(product, name)
            except (KeyError, TypeError):
                return None

        return GranuleRef(self.name, collection, str(product), slot, pd.Timestamp(product.sensing_start),
                          pd.Timestamp(product.sensing_end), prop("md5") or None, prop("size"))

    # -- retries
    def _with_retries(self, attempt: Callable, what: str, fail: type[SourceError]):
        """``attempt()`` up to ``max_attempts`` times while it fails transiently."""
        last: Transient | None = None
        for n in range(1, self.max_attempts + 1):
            try:
                return attempt()
            except Transient as exc:
                last = exc
                LOG.warning("%s: attempt %d/%d failed: %s", what, n, self.max_attempts, exc)
                if n < self.max_attempts:
                    self._pause(exc, n, what, fail)
        cls = DownloadTimeout if last.timeout and issubclass(fail, DownloadError) else fail
        raise cls(f"{what}: gave up after {self.max_attempts} attempt(s): {last}")

    def _pause(self, exc: Transient, n: int, what: str, fail: type[SourceError]) -> None:
        if exc.auth:
            self._token.invalidate()  # a fresh token on the next request, no wait
            return
        if exc.retry_after is not None:
            if exc.retry_after > self.max_retry_after_s:
                raise fail(f"{what}: the server asks to retry after {exc.retry_after:.0f} s "
                           f"(more than {self.max_retry_after_s:g} s): {exc}")
            wait = exc.retry_after
        else:
            wait = min(self.backoff_max_s, self.backoff_s * 2 ** (n - 1)) * random.uniform(0.5, 1.0)
        LOG.info("%s: retrying in %.2f s", what, wait)
        time.sleep(wait)

    # -- download
    def _get(self, ref: GranuleRef, cache: GranuleCache) -> Path:
        """The product in the cache: a valid cached copy, else a verified download."""
        with cache.lock(ref.collection, ref.slot, ref.product_id):
            hit = cache.lookup(ref.collection, ref.slot, ref.product_id, md5=ref.md5)
            if hit is not None:
                return hit
            part = cache.part_path(ref.collection, ref.slot, ref.product_id)
            problem = None
            for again in (False, True):  # one clean download more after an integrity failure
                size = self._with_retries(lambda: self._download_once(ref, part), ref.label, DownloadError)
                problem = self._verify(ref, part, size)
                if problem is None:
                    md5 = ref.md5 or file_md5(part)
                    path = cache.commit(part, ref.collection, ref.slot, ref.product_id, md5, size,
                                        source=self.name)
                    LOG.info("downloaded %s (%d bytes)", ref.label, size)
                    return path
                part.unlink(missing_ok=True)
                LOG.warning("%s failed its checks: %s%s", ref.label, problem, "" if again else "; downloading again")
            raise DownloadError(f"{ref.label} rejected: {problem}")

    @staticmethod
    def _verify(ref: GranuleRef, part: Path, size: int) -> str | None:
        if ref.size_kb is not None and abs(size / 1024 - float(ref.size_kb)) > 1.0:
            return f"size {size} bytes, the Data Store announces {ref.size_kb} KB"
        return check_granule(part, ref.md5, size)

    def _download_once(self, ref: GranuleRef, part: Path) -> int:
        """One download request into ``part`` (resumed with Range when it holds bytes);
        returns the size (bytes).  Raises :class:`Transient` on retryable failures."""
        offset = part.stat().st_size if part.exists() else 0
        cm, raw = self._open(ref, part, offset)  # holds a download slot
        total = None
        try:
            total, offset = self._start(raw, part, offset, ref)
            set_read_timeout(raw, self.timeout)
            read = getattr(raw, "read1", raw.read)  # read1 keeps what arrived before a failure
            with open(part, "ab" if offset else "wb") as fh:
                while chunk := read(1 << 20):
                    try:  # a local write failure (disk full, file size limit) is no network fault
                        fh.write(chunk)
                        fh.flush()
                    except OSError as exc:
                        raise DownloadError(f"{ref.label}: cannot write {part}: {exc.strerror or exc} "
                                            "(local disk full or file size limit); the bytes written "
                                            "so far are kept to resume") from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            failure = classify(exc, None)
            if total is not None and not failure.timeout:
                size = part.stat().st_size if part.exists() else 0
                failure = Transient(f"truncated download: {size} of {total} bytes ({type(exc).__name__})")
            raise failure from None
        finally:
            cm.__exit__(None, None, None)
            DOWNLOADS.release()
        size = part.stat().st_size
        if total is not None and size != total:
            raise Transient(f"truncated download: {size} of {total} bytes")
        return size

    def _open(self, ref: GranuleRef, part: Path, offset: int):
        """``(context manager, stream)`` of ``Product.open`` under a download slot,
        which the caller releases; an abandoned request releases it when it ends."""
        product = self._datastore.get_product(ref.collection, ref.product_id)
        headers = {"Range": f"bytes={offset}-"} if offset else None

        def open_stream():
            cm = product.open(custom_headers=headers)
            try:
                return cm, cm.__enter__()
            except EumdacError as exc:
                if offset and (exc.extra_info or {}).get("status") == 416:
                    return None  # the .part is not a prefix the server can resume
                raise

        def late(opened):  # an abandoned request ended: close it, free its slot
            if opened:
                opened[0].__exit__(None, None, None)
            DOWNLOADS.release()

        DOWNLOADS.acquire()
        try:
            opened = bounded(open_stream, self.timeout, late)
        except BaseException as exc:
            if not getattr(exc, "abandoned", False):
                DOWNLOADS.release()
            raise
        if opened is None:
            DOWNLOADS.release()
            part.unlink(missing_ok=True)
            raise Transient(f"the server cannot resume from byte {offset}; starting over")
        return opened

    @staticmethod
    def _start(raw, part: Path, offset: int, ref: GranuleRef) -> tuple[int | None, int]:
        """(expected total size in bytes or None, offset to write at) from the response."""
        if offset and raw.status == 206:
            start, total = content_range(raw.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise Transient(f"server resumed at byte {start}, asked {offset}; starting over")
            LOG.info("%s: resuming at byte %d of %s", ref.label, offset, total)
            return total, offset
        if offset:
            LOG.info("%s: the server ignored the Range request; downloading from the start", ref.label)
        length = raw.headers.get("Content-Length")
        return (int(length) if length else None), 0
