"""A tiny HTTP proxy in front of the moto S3 server that injects S3 errors into chosen requests.

moto's server answers every request correctly; real object stores sometimes do not.  The
proxy forwards each request unchanged to moto (method, path, query, headers, body) and sends
moto's answer back, except for requests matched by a queued :class:`S3Fault`: those get the
fault's status and an S3 XML error body (``InternalError`` 500, ``SlowDown`` 503,
``AccessDenied`` 403...) and never reach moto.  Every request is recorded (method, path,
status sent) in :attr:`S3Proxy.log`.

    with S3Proxy(moto_url) as proxy:
        proxy.inject(S3Fault("PUT", r"/bt/c/", "InternalError", 500, times=2))
        fs = s3fs.S3FileSystem(endpoint_url=proxy.url)
"""

from __future__ import annotations

import http.client
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from local_http import BackgroundHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
        "content-length"}


@dataclass
class S3Fault:
    """Answer the next ``times`` requests whose method is ``method`` (``*``: any) and whose path
    matches the regex ``path`` with ``status`` and the S3 error ``code``."""

    method: str
    path: str
    code: str = "InternalError"
    status: int = 500
    times: int = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and self.method in ("*", method) and re.search(self.path, path) is not None


class S3Proxy(BackgroundHTTPServer):
    """The fault-injecting proxy; a context manager whose :attr:`url` replaces moto's endpoint."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.faults: list[S3Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def inject(self, *faults: S3Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def injected(self) -> int:
        """How many requests were answered with a fault so far."""
        with self._lock:
            return sum(f.hits for f in self.faults)

    def _take(self, method: str, path: str) -> S3Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    @property
    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler



class _Handler(BaseHTTPRequestHandler):
    owner: S3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        path = urlsplit(self.path).path
        fault = self.owner._take(self.command, path)
        if fault is not None:
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                   f"<Message>injected {fault.code}</Message><Resource>{path}</Resource>"
                   f"<RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>").encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            status = fault.status
        else:
            conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "expect"}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            declared = resp.getheader("Content-Length")
            self.send_header("Content-Length", declared if self.command == "HEAD" and declared else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()
            status = resp.status
        with self.owner._lock:
            self.owner.log.append((self.command, path, status))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
