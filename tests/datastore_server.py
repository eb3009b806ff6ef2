"""A local EUMETSAT Data Store for tests: a threaded ``http.server`` on 127.0.0.1
speaking the protocol as ``eumdac`` uses it (API root ``http://127.0.0.1:<port>``).

Endpoints (paths of eumdac's ``endpoints.ini`` under the API root):

* ``POST /token`` - client credentials (HTTP Basic), answers ``access_token`` and
  ``expires_in`` (s); ``401`` for wrong credentials;
* ``GET /data/search-products/1.0.0/osdd?pi=`` - OpenSearch description (XML) with the
  search parameters eumdac validates queries against;
* ``GET /data/search-products/1.0.0/os`` - search: ``pi``, ``dtstart``/``dtend``
  (products whose sensing period overlaps the window), ``si``/``c`` paging, JSON
  features with the full property set eumdac parses (date, md5, size in KB...);
* ``GET /data/browse/1.0.0/collections/<c>[/products/<p>]`` - collection / product;
* ``GET /data/download/1.0.0/collections/<c>/products/<p>[/metadata]`` - the zip,
  streamed with ``Content-Length``, ``Content-Disposition`` and ``Range`` (206 with
  ``Content-Range``, 416 past the end), or its download metadata.

Every endpoint but the token needs a valid ``Bearer`` token (else 401).  Faults
(:class:`Fault`) are queued per endpoint and consumed one per request
(:meth:`DataStoreServer.inject`) or applied to every request
(:meth:`DataStoreServer.always`): an HTTP status (500/502/503/429, optionally with
``Retry-After``), a stall before the headers or in the middle of the body, a
truncated body (connection closed before ``Content-Length`` bytes), a slow body.
:meth:`DataStoreServer.expire_tokens` invalidates the tokens issued so far; an MD5
mismatch is a product advertised with a wrong ``md5``.  Every request is recorded
(:attr:`DataStoreServer.log`) with the simultaneous downloads in progress.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from local_http import BackgroundHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SEARCH_PARAMS = ["pi", "format", "si", "c", "id", "pw", "dtstart", "dtend", "publication", "sort", "set",
                 "type", "title", "timeliness", "bbox", "geo", "sat"]


@dataclass
class FakeProduct:
    """A product of the fake Data Store: ``data`` is the zip served; ``md5`` and
    ``size_kb`` are what the metadata announce (default: the true values)."""

    collection: str
    product_id: str
    sensing_start: dt.datetime  # naive UTC
    sensing_end: dt.datetime
    data: bytes
    md5: str | None = None
    size_kb: float | None = None
    filename: str | None = None  # Content-Disposition name, default <product_id>.zip
    satellite: str = "MSG2"

    def __post_init__(self):
        self.md5 = self.md5 or hashlib.md5(self.data).hexdigest()
        self.size_kb = self.size_kb if self.size_kb is not None else round(len(self.data) / 1024)
        self.filename = self.filename or f"{self.product_id}.zip"


def zip_files(paths) -> bytes:
    """The files zipped flat (stored), as the Data Store ships SEVIRI products."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in paths:
            zf.write(path, path.name)
    return buf.getvalue()


def scan(collection: str, slot: dt.datetime, data: bytes, pid: str | None = None, minutes: float = 12,
         **kw) -> FakeProduct:
    """A product whose scan starts 9 s after ``slot`` (naive UTC) and lasts ``minutes``."""
    start = slot + dt.timedelta(seconds=9)
    pid = pid or f"MSG2-SEVI-MSG15-0100-NA-{start:%Y%m%d%H%M%S}.713000000Z-NA"
    return FakeProduct(collection, pid, start, start + dt.timedelta(minutes=minutes), data, **kw)


@dataclass
class Fault:
    """One injected fault: ``status`` (with a JSON body and ``retry_after`` as the
    ``Retry-After`` header); ``stall_s`` seconds of silence before the headers
    (``where="headers"``) or after half of the body (``where="body"``);
    ``truncate``: body bytes sent before the connection is closed; ``slow_s``:
    the body is spread over that many seconds."""

    status: int | None = None
    retry_after: str | None = None
    stall_s: float = 0.0
    where: str = "headers"
    truncate: int | None = None
    slow_s: float = 0.0


@dataclass
class Record:
    t: float
    method: str
    endpoint: str
    path: str
    status: int = 0
    range: str | None = None
    sent: int = 0
    params: dict = field(default_factory=dict)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


class DataStoreServer(BackgroundHTTPServer):
    """The fake Data Store.  Use as a context manager; :attr:`url` is the API root."""

    def __init__(self, key: str, secret: str, token_validity_s: int = 3600):
        self._basic = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
        self.token_validity_s = token_validity_s
        self.products: dict[tuple[str, str], FakeProduct] = {}
        self.tokens: dict[str, float] = {}
        self.tokens_issued: list[str] = []
        self.log: list[Record] = []
        self.active_downloads = self.max_active_downloads = 0
        self._queued: dict[str, list[Fault]] = {}
        self._always: dict[str, Fault] = {}
        self._lock = threading.Lock()

    # -- control
    def add(self, product: FakeProduct) -> FakeProduct:
        self.products[(product.collection, product.product_id)] = product
        return product

    def inject(self, endpoint: str, *faults: Fault) -> None:
        """Queue faults for the next requests of ``endpoint`` (token, osdd, search,
        browse, metadata, download)."""
        with self._lock:
            self._queued.setdefault(endpoint, []).extend(faults)

    def always(self, endpoint: str, fault: Fault | None) -> None:
        """Apply ``fault`` to every request of ``endpoint`` (None: stop)."""
        with self._lock:
            if fault is None:
                self._always.pop(endpoint, None)
            else:
                self._always[endpoint] = fault

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def requests(self, endpoint: str) -> list[Record]:
        with self._lock:
            return [r for r in self.log if r.endpoint == endpoint]

    def _next_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._queued.get(endpoint)
            return queue.pop(0) if queue else self._always.get(endpoint)

    # -- life cycle
    @property
    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler


    # -- documents
    def feature(self, p: FakeProduct) -> dict:
        href = f"{self.url}/data/download/1.0.0/collections/{p.collection}/products/{p.product_id}"
        props = {
            "parentIdentifier": p.collection, "identifier": p.product_id, "title": p.product_id,
            "date": f"{_iso(p.sensing_start)}/{_iso(p.sensing_end)}", "updated": _iso(p.sensing_end),
            "extraInformation": {"md5": p.md5},
            "productInformation": {"productType": "HRSEVIRI", "size": p.size_kb, "timeliness": "NT"},
            "acquisitionInformation": [{"platform": {"platformShortName": p.satellite, "orbitType": "GEO"},
                                        "instrument": {"instrumentShortName": "SEVIRI"}}],
            "links": {"data": [{"href": href, "title": "Product download", "mediaType": "application/zip"}],
                      "sip-entries": [{"title": p.filename, "href": href, "mediaType": "application/zip"}]},
        }
        return {"type": "Feature", "id": p.product_id, "geometry": None, "properties": props}

    def search(self, q: dict) -> dict:
        start = _parse_time(q["dtstart"]) if q.get("dtstart") else dt.datetime.min
        end = _parse_time(q["dtend"]) if q.get("dtend") else dt.datetime.max
        hits = sorted((p for (c, _), p in self.products.items()
                       if c == q.get("pi") and p.sensing_start < end and p.sensing_end > start),
                      key=lambda p: p.sensing_start, reverse=True)
        si, count = int(q.get("si", 0)), int(q.get("c", 100))
        page = hits[si:si + count]
        return {"type": "FeatureCollection", "totalResults": len(hits), "itemsPerPage": count,
                "features": [self.feature(p) for p in page]}

    @staticmethod
    def osdd() -> str:
        params = "".join(f'<parameters:Parameter name="{n}" value="{{{n}}}"/>' for n in SEARCH_PARAMS)
        return ('<?xml version="1.0" encoding="UTF-8"?>'
                '<OpenSearchDescription xmlns="http://a9.com/-/spec/opensearch/1.1/" '
                'xmlns:parameters="http://a9.com/-/spec/opensearch/extensions/parameters/1.0/">'
                '<ShortName>EUMETSAT Data Store (test)</ShortName>'
                f'<Url type="application/json" template="os?format=json">{params}</Url>'
                f'<Url type="application/atom+xml" template="os?format=atom">{params}</Url>'
                '</OpenSearchDescription>')


class _Handler(BaseHTTPRequestHandler):
    owner: DataStoreServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers
    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.rec.status, self.rec.sent = status, len(body)

    def _json(self, status: int, doc, headers: dict | None = None):
        self._send(status, json.dumps(doc).encode(), headers=headers)

    def _route(self) -> tuple[str, list[str]]:
        parts = [unquote(s) for s in self.url.path.split("/")[1:]]
        if parts[:1] == ["token"]:
            return "token", parts
        if parts[:3] == ["data", "search-products", "1.0.0"]:
            return ("osdd" if parts[3:4] == ["osdd"] else "search"), parts
        if parts[:2] == ["data", "browse"]:
            return "browse", parts
        if parts[:2] == ["data", "download"]:
            return ("metadata" if parts[-1] == "metadata" else "download"), parts
        return "unknown", parts

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        with self.owner._lock:
            expiry = self.owner.tokens.get(auth.removeprefix("Bearer "))
        return auth.startswith("Bearer ") and expiry is not None and expiry > time.time()

    # -- entry points
    def do_POST(self):
        self._handle("POST")

    def do_GET(self):
        self._handle("GET")

    def _handle(self, method: str):
        self.url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(self.url.query).items()}
        endpoint, parts = self._route()
        self.rec = Record(time.monotonic(), method, endpoint, self.url.path, range=self.headers.get("Range"),
                          params=dict(self.query))
        with self.owner._lock:
            self.owner.log.append(self.rec)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else {}
        try:
            fault = self.owner._next_fault(endpoint)
            if fault and fault.stall_s and fault.where == "headers":
                time.sleep(fault.stall_s)
            if fault and fault.status:
                reason = "Too many requests" if fault.status == 429 else "injected fault"
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
                return self._json(fault.status, {"message": {"reason": reason, "code": fault.status},
                                                 "title": reason, "description": "test server"}, extra)
            if endpoint == "token":
                return self._token(form)
            if not self._authorised():
                return self._json(401, {"title": "Unauthorised", "description": "invalid or expired token"})
            return self._dispatch(endpoint, parts, fault)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _token(self, form: dict):
        if self.headers.get("Authorization") != self.owner._basic or form.get("grant_type") != ["client_credentials"]:
            return self._json(401, {"error": "invalid_client", "error_description": "wrong credentials"})
        token = uuid.uuid4().hex
        with self.owner._lock:
            self.owner.tokens[token] = time.time() + self.owner.token_validity_s
            self.owner.tokens_issued.append(token)
        return self._json(200, {"access_token": token, "scope": "am_application_scope default",
                                "token_type": "Bearer", "expires_in": self.owner.token_validity_s})

    def _dispatch(self, endpoint: str, parts: list[str], fault: Fault | None):
        if endpoint == "osdd":
            return self._send(200, self.owner.osdd().encode(), "application/opensearchdescription+xml")
        if endpoint == "search":
            return self._json(200, self.owner.search(self.query))
        coll = parts[4] if len(parts) > 4 else None
        pid = parts[6] if len(parts) > 6 and parts[5] == "products" else None
        product = self.owner.products.get((coll, pid))
        if endpoint == "browse" and pid is None and coll:
            props = {"title": coll, "abstract": "test collection", "links": []}
            return self._json(200, {"collection": {"geometry": None, "properties": props}})
        if product is None:
            return self._json(404, {"title": "Not found", "description": f"no product {pid} in {coll}"})
        if endpoint == "browse":
            feature = self.owner.feature(product)
            return self._json(200, {"properties": feature["properties"], "geometry": None})
        if endpoint == "metadata":
            props = {"identifier": pid, "productInformation": {"size": product.size_kb, "timeliness": "NT"}}
            return self._json(200, {"properties": props})
        return self._download(product, fault)

    def _download(self, product: FakeProduct, fault: Fault | None):
        with self.owner._lock:
            self.owner.active_downloads += 1
            self.owner.max_active_downloads = max(self.owner.max_active_downloads, self.owner.active_downloads)
        self._counted = True
        try:
            self._stream(product, fault)
        finally:
            self._uncount()

    def _uncount(self):
        """The download is over for the count: called before the last bytes go out,
        so a client can never see a download end that is still counted."""
        if self._counted:
            self._counted = False
            with self.owner._lock:
                self.owner.active_downloads -= 1

    def _stream(self, product: FakeProduct, fault: Fault | None):
        data, size = product.data, len(product.data)
        status, headers = 200, {"Content-Disposition": f'attachment; filename="{product.filename}"',
                                "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            first, last = int(first), min(int(last) if last else size - 1, size - 1)
            if first >= size:
                return self._json(416, {"title": "Range not satisfiable"}, {"Content-Range": f"bytes */{size}"})
            status, data = 206, data[first:last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.rec.status = status
        body = data[:fault.truncate] if fault and fault.truncate is not None else data
        self._write_body(body, fault)
        self.close_connection = True

    def _write_body(self, body: bytes, fault: Fault | None):
        if fault and fault.stall_s and fault.where == "body":
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            self.rec.sent = half
            time.sleep(fault.stall_s)
            body = body[half:]
        pieces = 10 if fault and fault.slow_s else 1
        step = -(-len(body) // pieces) or 1
        for i in range(0, len(body), step):
            if i + step >= len(body):
                self._uncount()
            self.wfile.write(body[i:i + step])
            self.wfile.flush()
            self.rec.sent += len(body[i:i + step])
            if pieces > 1 and i + step < len(body):
                time.sleep(fault.slow_s / pieces)
