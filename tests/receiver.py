"""A real HTTP server on localhost that receives what destinations send: it records each
request and answers what the test scripts (500s, 429s with Retry-After, then 200s)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    # Answers to give, in order, before answering 200: (status, headers, body).
    script: deque[tuple[int, dict[str, str], bytes]] = field(default_factory=deque)
    # Answered to every request while set, instead of the script.
    always: tuple[int, dict[str, str], bytes] | None = None
    # Seconds each request takes to answer: a slow receiver.
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Requests being answered now, the most there were at once, and when each arrived
    # (`time.monotonic`).
    in_flight: int = 0
    most_in_flight: int = 0
    arrived: list[float] = field(default_factory=list)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if self.always is not None:
                return self.always
            if self.script:
                return self.script.popleft()
        return 200, {}, b'{"ok": true}'

    def delivered(self) -> list[Received]:
        """The requests answered 200."""
        with self.lock:
            return [r for r in self.received if r.headers.get("x-answered") == "200"]


@contextmanager
def receiving() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    class Handle(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = holder["receiver"]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if len(body) < length:
                # The sender died mid-request (a test's SIGKILL): like any HTTP server,
                # a request cut short is not received.
                self.close_connection = True
                return
            status, headers, reply = receiver.answer()
            with receiver.lock:
                receiver.arrived.append(time.monotonic())
                receiver.in_flight += 1
                receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
            if receiver.delay:
                time.sleep(receiver.delay)
            with receiver.lock:
                receiver.in_flight -= 1
            seen = {k.lower(): v for k, v in self.headers.items()}
            seen["x-answered"] = str(status)
            with receiver.lock:
                receiver.received.append(Received(self.path, seen, body))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
    server.daemon_threads = True
    holder["receiver"] = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["receiver"]
    finally:
        server.shutdown()
        server.server_close()
