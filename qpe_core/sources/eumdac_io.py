"""The eumdac plumbing of :class:`~qpe_core.sources.datastore.DataStoreSource`: bounded calls,
retry classification, the token, credentials.

* :func:`bounded` runs one eumdac call in a helper thread abandoned after ``timeout`` s without
  activity (eumdac logs each of its internal retries, which count as activity) and classifies its
  failure: :class:`Transient` (429/5xx, connection errors, stalls, a rejected token) or
  :class:`~qpe_core.sources.base.SourceError`;
* eumdac's urllib3 retry policy is replaced so that a ``Retry-After`` longer than half the
  per-request timeout goes back to the caller instead of being slept inside an abandoned request;
* :class:`Token` registers its values with the log redactor and can be invalidated after a 401;
  :func:`block_secret` and :func:`redact_credentials` read and redact the credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import eumdac.request
import requests
import urllib3
from eumdac.errors import EumdacError
from eumdac.token import AccessToken, HTTPBearerAuth
from pydantic import SecretStr

from qpe_core.errors import ConfigError
from qpe_core.sources.base import REDACTOR, SourceError, bounded_call, retry_after_seconds

_RETRY_STATUS = {429, 500, 502, 503, 504}


_LAST = threading.local()  # Retry-After of the last response seen by this thread


class _RetryWithinTimeout(eumdac.request.RetryAndLog):
    """eumdac's urllib3 retry policy, except that a ``Retry-After`` longer than half the
    per-request timeout of the calling thread is not slept inside eumdac: the response goes
    back to :class:`DataStoreSource`, which waits (or gives up beyond ``max_retry_after_s``)
    itself.  Without this, urllib3 sleeps whatever the server asks (up to 6 h) in a request
    that :func:`bounded_call` has abandoned, and that keeps a download slot meanwhile."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None and self.respect_retry_after_header:
            header = response.headers.get("Retry-After")
            wait = retry_after_seconds(header)
            if wait is not None and wait > getattr(_LAST, "inline_retry_after_s", 30.0):
                raise urllib3.exceptions.MaxRetryError(_pool, url, f"Retry-After {header} left to the caller")
        return super().increment(method, url, response, error, _pool, _stacktrace)


eumdac.request.RetryAndLog = _RetryWithinTimeout  # what eumdac.request._get_adapter builds per request


class _HookedBearer(HTTPBearerAuth):
    """Bearer auth that also records ``Retry-After`` of the final response (per thread)."""

    def __call__(self, request):
        request.register_hook("response", lambda r, *a, **k: setattr(
            _LAST, "retry_after", retry_after_seconds(r.headers.get("Retry-After"))))
        return super().__call__(request)


class Token(AccessToken):
    """eumdac token whose values go to the log redactor, that can be invalidated
    (after a 401) and whose requests record ``Retry-After``."""

    def _update_token_data(self) -> None:
        try:
            super()._update_token_data()
        except requests.HTTPError as exc:
            status, url = exc.response.status_code, self.urls.get("token", "token")
            if status in _RETRY_STATUS:
                raise Transient(f"token request to {url}: HTTP {status}",
                                 retry_after_seconds(exc.response.headers.get("Retry-After"))) from None
            raise SourceError(f"token request to {url} refused (HTTP {status}): check "
                              "EUMETSAT_CONSUMER_KEY / EUMETSAT_CONSUMER_SECRET") from None
        REDACTOR.add(self._access_token)

    def invalidate(self) -> None:
        self._expiration = 0

    @property
    def auth(self):
        return _HookedBearer(self.access_token)


class Transient(Exception):
    """A failure worth retrying; ``retry_after`` (s) when the server said so."""

    def __init__(self, reason: str, retry_after: float | None = None, auth: bool = False,
                 timeout: bool = False, abandoned: bool = False):
        super().__init__(reason)
        self.retry_after, self.auth, self.timeout, self.abandoned = retry_after, auth, timeout, abandoned


def classify(exc: BaseException, retry_after: float | None) -> BaseException:
    """A :class:`Transient` for retryable failures, else a :class:`SourceError`."""
    if isinstance(exc, EumdacError):
        status, reason = (exc.extra_info or {}).get("status"), str(exc).splitlines()[0][:300]
        if status == 401:
            return Transient(f"{reason} (token rejected)", auth=True)
        return Transient(f"HTTP {status}: {reason}", retry_after) if status in _RETRY_STATUS else SourceError(reason)
    if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError, OSError)):
        timeout = isinstance(exc, (TimeoutError, urllib3.exceptions.TimeoutError, requests.Timeout))
        return Transient(f"{type(exc).__name__}: {str(exc)[:300]}", timeout=timeout)
    return exc  # Transient, SourceError and bugs as they are


#: thread id -> monotonic time (s) of its last eumdac log record: eumdac logs each of
#: its internal retries, which therefore do not count as a stall.
_ACTIVE: dict[int, float] = {}
logging.getLogger("eumdac").addFilter(lambda record: _ACTIVE.__setitem__(record.thread, time.monotonic()) or True)


def bounded(fn: Callable, timeout: float, on_late: Callable | None = None):
    """:func:`bounded_call` of an eumdac call: failures come back classified,
    ``timeout`` s without activity (eumdac logs its own retries) abandon it."""
    def run():
        _LAST.retry_after = None
        _LAST.inline_retry_after_s = timeout / 2
        try:
            return fn()
        except BaseException as exc:
            raise classify(exc, getattr(_LAST, "retry_after", None)) from None
        finally:
            _ACTIVE.pop(threading.get_ident(), None)

    return bounded_call(run, timeout, on_late, _ACTIVE,
                        lambda: Transient(f"no answer within {timeout:g} s", timeout=True, abandoned=True))


def secret_value(value) -> str | None:
    return value.get_secret_value() if isinstance(value, SecretStr) else (None if value is None else str(value))


def block_secret(name: str) -> str:
    """The value of the Prefect Secret block ``name`` (registered with the log redactor);
    :class:`ConfigError` naming the block, never the value, when it cannot be read."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except Exception as exc:  # not found, no API, wrong block type
        raise ConfigError(f"Prefect Secret block {name!r} cannot be read ({type(exc).__name__}): create it "
                          "(prefect.blocks.system.Secret) or set the credential in the environment") from None
    value = value if isinstance(value, str) else str(value)
    REDACTOR.add(value)
    return value


def redact_credentials(key: str, secret: str) -> None:
    """Register the credentials and their encoded forms (HTTP Basic: base64 of key:secret)."""
    import base64

    encoded = [base64.b64encode(s.encode()).decode() for s in (key, secret, f"{key}:{secret}")]
    REDACTOR.add(key, secret, *encoded, *(e.rstrip("=") for e in encoded))
