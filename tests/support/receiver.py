"""A webhook receiver for tests: a loopback HTTP server that verifies every delivery's
Standard Webhooks signature with the `standardwebhooks` library (not exitgate's code).

`answer` sets the status it replies with (200, 503, 410, ...); `stop()` closes the port and
`start()` listens on the same port again, so a test can take the receiver down for a while.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.payload.get("type", ""))

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.payload.get("data", {}))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified = False
        if owner.secret:
            try:
                Webhook(owner.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        owner.record(Received(headers, body, verified, payload))
        status = owner.answer
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: Receiver


class Receiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.secret = ""
        self.answer = 200
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def start(self) -> None:
        server = _Server((self.host, self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def of_type(self, event_type: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.type == event_type]

    def wait_for(self, event_type: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of_type(event_type)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        seen = [r.type for r in self.received]
        raise AssertionError(f"no {count}x {event_type} within {timeout}s; got {seen}")
