"""A fault-injecting HTTP proxy on loopback, in front of the S3 test server (moto).

s3fs is pointed at the proxy (`storage.endpoint_url`); every request is forwarded to moto, and
GETs of chosen objects are broken the way object stores break at scale: the connection reset
after N body bytes (SO_LINGER 0), 503 SlowDown, 403 AccessDenied, a body that stalls. Rules
are deterministic (by object key, byte offset and count), so each test knows what happened.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade",
               "expect"}  # the body is read here already: no 100-continue upstream


@dataclass
class Fault:
    """Break GETs whose path contains `key`, after the first `after_gets` of them.

    kind: "reset" (send `after_bytes` of the body, then reset the connection), "slowdown"
    (503 SlowDown), "forbidden" (403 AccessDenied), "stall" (send `after_bytes`, then wait
    `seconds` before closing). times: how many matching GETs it breaks (None: every one until
    the proxy's rules are cleared). seconds (slowdown): how long it lasts from its first hit."""

    key: str
    kind: str
    method: str = "GET"  # PUT: break the writes of matching objects (slowdown, forbidden)
    after_bytes: int = 0
    times: int | None = 1
    seconds: float | None = None
    after_gets: int = 0  # let this many matching GETs through first (e.g. break the 2nd)
    seen: int = 0
    hits: int = 0
    first_hit: float | None = None

    def applies(self, method: str, path: str, offset: int) -> bool:
        if self.key not in path or method != self.method:
            return False
        self.seen += 1
        if self.seen <= self.after_gets:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        now = time.monotonic()
        if self.kind == "slowdown" and self.seconds is not None and self.first_hit is not None:
            return now - self.first_hit < self.seconds
        return True


@dataclass
class FaultProxy:
    """The proxy server; `url` is its endpoint. `gets` counts forwarded or broken GETs per
    path (the requests a read took)."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    gets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        up = urlsplit(self.upstream)
        self._up = (up.hostname, up.port)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.gets.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault_for(self, method: str, path: str, offset: int) -> Fault | None:
        if method not in ("GET", "PUT") or "?" in path:  # object reads and writes only
            return None
        with self._lock:
            if method == "GET":
                self.gets[path] = self.gets.get(path, 0) + 1
            for f in self.faults:
                if f.applies(method, path, offset):
                    f.hits += 1
                    f.first_hit = f.first_hit or time.monotonic()
                    return f
        return None

    @staticmethod
    def _read_body(req: BaseHTTPRequestHandler) -> bytes | None:
        """The request body as sent: Content-Length bytes, or the raw chunked encoding (kept
        as is and forwarded with its Transfer-Encoding, aws-chunked trailers included)."""
        if "chunked" in req.headers.get("Transfer-Encoding", "").lower():
            raw = b""
            while True:
                line = req.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = req.rfile.readline()
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return raw
                raw += req.rfile.read(size + 2)
        length = int(req.headers.get("Content-Length") or 0)
        return req.rfile.read(length) if length else None

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        body = self._read_body(req)
        rng = req.headers.get("Range", "")
        offset = int(rng.split("=")[1].split("-")[0]) if rng.startswith("bytes=") else 0
        fault = self._fault_for(req.command, req.path, offset)
        if fault is not None and fault.kind in ("slowdown", "forbidden"):
            status, payload = (503, SLOW_DOWN) if fault.kind == "slowdown" else (403,
                                                                                  ACCESS_DENIED)
            req.send_response(status)
            req.send_header("Content-Type", "application/xml")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self._up, timeout=60)
        headers = {k: v for k, v in req.headers.items()
                   if k.lower() not in HOP_HEADERS or k.lower() == "transfer-encoding"}
        conn.request(req.command, req.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        req.send_response(resp.status)
        head = req.command == "HEAD"  # no body, but the object's Content-Length
        for k, v in resp.getheaders():
            if k.lower() not in HOP_HEADERS and (head or k.lower() != "content-length"):
                req.send_header(k, v)
        if not head:
            req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if head:
            return
        if fault is None:
            req.wfile.write(data)
            return
        req.wfile.write(data[: fault.after_bytes])
        req.wfile.flush()
        if fault.kind == "stall":
            time.sleep(fault.seconds or 5.0)
        # reset: the peer sees the connection die mid-body
        req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        req.close_connection = True
        req.connection.close()
