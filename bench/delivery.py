"""Delivery latency on an idle server: a committed change to its handler, and an event
accepted by the tracking API to the webhook that tells a receiver.

Starts `ariane serve --workers 2` on SQLite and on PostgreSQL (the requests in the
workers; the bus, with its handlers, in the process that supervises them), with one
webhook destination pointing at an HTTP receiver running in this process. Then, one at
a time with a pause between:

- commit → handler: this process writes a `SegmentEntered` to the outbox in a
  transaction of its own, as a service would; measured from the return of its commit to
  the receiver's receipt of the destination's request, across processes;
- accepted → received: a track event POSTed to `/v1/track`; measured from the `200`
  (and from the request's start) to the receipt.

Prints one JSON document.

    .venv/bin/python -m bench.delivery --samples 300
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import threading
import time
import uuid
from base64 import b64encode
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from ariane.domain.events import SegmentEntered
from ariane.storage import bus as bus_store
from ariane.storage.database import Database
from bench.ingest import VENV_BIN, Server, drop_postgres, machine, postgres_database, run

SEGMENT = "bench-audience"


class PostReceiver:
    """An HTTP server on a free local port whose every POST body is given to `note`,
    with the moment it arrived (`time.perf_counter()`); answered 200 at once."""

    # "HTTP/1.1" keeps connections open, as a provider's server would.
    protocol = "HTTP/1.0"

    def __init__(self) -> None:
        receiver = self

        class Handle(BaseHTTPRequestHandler):
            protocol_version = receiver.protocol

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.note(body, time.perf_counter())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def note(self, body: bytes, now: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(PostReceiver):
    """Notes when each message arrives, by its messageId."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        super().__init__()

    def note(self, body: bytes, now: float) -> None:
        message_id = orjson.loads(body).get("messageId", "")
        with self.changed:
            self.arrived.setdefault(message_id, now)
            self.changed.notify_all()

    def wait_for(self, message_id: str, timeout: float = 10.0) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: message_id in self.arrived, timeout):
                raise RuntimeError(f"{message_id} was not delivered within {timeout} s")
            return self.arrived[message_id]


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def destination(server: Server, receiver: Receiver, tmp: str) -> None:
    file = f"{tmp}/destinations.json"
    with open(file, "wb") as out:
        out.write(
            orjson.dumps(
                {
                    "destinations": [
                        {
                            "id": "bench",
                            "type": "webhook",
                            "receives": {
                                "events": {"types": ["track"], "names": ["Latency Ping"]},
                                "audiences": [SEGMENT],
                            },
                            "settings": {"url": receiver.url, "secret": "bench"},
                        }
                    ]
                }
            )
        )
    run(str(VENV_BIN / "ariane"), "destinations", "apply", file, env=server.env)


def bench_one(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url, name = f"sqlite:///{tmp}/ariane.db", ""
        else:
            url, name = postgres_database()
        receiver = Receiver()
        try:
            server = Server(url, args.workers)
            try:
                destination(server, receiver, tmp)
                # The destination is picked up within a second; its handlers start.
                time.sleep(2.0)
                return {
                    "commit_to_handler": commit_to_handler(url, receiver, args),
                    "accepted_to_received": accepted_to_received(server, receiver, args),
                }
            finally:
                server.stop()
        finally:
            receiver.close()
            if name:
                drop_postgres(name)


def commit_to_handler(url: str, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    db = Database(url)
    latencies = []
    try:
        for n in range(args.samples + args.warmup):
            change = SegmentEntered(
                event_id=f"audience-bench-{uuid.uuid4().hex}",
                profile_id=f"p{n}",
                at=datetime.now(UTC),
                segment_id="s-bench",
                segment=SEGMENT,
                cause="event",
            )
            record(db, change)
            committed = time.perf_counter()
            arrived = receiver.wait_for(change.event_id)
            if n >= args.warmup:
                latencies.append(arrived - committed)
            time.sleep(args.pause)
    finally:
        db.dispose()
    return summary(latencies)


def record(db: Database, change: SegmentEntered) -> None:
    db.write(lambda conn: bus_store.record(conn, [change]))


def accepted_to_received(
    server: Server, receiver: Receiver, args: argparse.Namespace
) -> dict[str, Any]:
    auth = "Basic " + b64encode(f"{server.write_key}:".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    from_ack, from_start = [], []
    for n in range(args.samples + args.warmup):
        message_id = f"ping-{uuid.uuid4().hex}"
        body = orjson.dumps(
            {"userId": f"user-{n % 50}", "event": "Latency Ping", "messageId": message_id}
        )
        started = time.perf_counter()
        conn.request(
            "POST",
            "/v1/track",
            body,
            {"Authorization": auth, "Content-Type": "application/json"},
        )
        answer = conn.getresponse()
        answer.read()
        acknowledged = time.perf_counter()
        if answer.status != 200:
            raise RuntimeError(f"/v1/track answered {answer.status}")
        arrived = receiver.wait_for(message_id)
        if n >= args.warmup:
            # Delivered before the 200 was read: no wait at all after it.
            from_ack.append(max(0.0, arrived - acknowledged))
            from_start.append(arrived - started)
        time.sleep(args.pause)
    conn.close()
    return {"from_acknowledgement": summary(from_ack), "from_request_start": summary(from_start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between two")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "delivery",
        "machine": machine(),
        "samples": args.samples,
        "pause_seconds": args.pause,
        "workers": args.workers,
    }
    for backend in args.backends.split(","):
        report[backend] = bench_one(backend, args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
