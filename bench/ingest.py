"""Ingestion benchmark: the full pipeline through /v1/batch against the raw insert rate.

Starts `ariane serve` on SQLite and on PostgreSQL, sends a realistic mix (identify,
track, page; distinct people, a fifth of them anonymous at first who sign in later)
in batches of 500 from concurrent keep-alive connections, then inserts the same events
into a plain table of the same database with the driver's executemany, in transactions
of the same size. Prints one JSON document.

    .venv/bin/python bench/ingest.py --people 100000 --events 300000
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from base64 import b64encode
from pathlib import Path
from typing import Any

import orjson
import psycopg

VENV_BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get(
    "ARIANE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PAGES = ["/", "/pricing", "/docs", "/blog/launch", "/signup", "/account"]
EVENTS = ["Product Viewed", "Product Added", "Order Completed", "Feature Used", "Search"]


def generate(people: int, total: int, seed: int = 7) -> list[dict[str, Any]]:
    """Events in arrival order. A fifth of people browse anonymously, then sign in."""
    rng = random.Random(seed)
    late = set(rng.sample(range(people), people // 5))
    per_person = max(total // people, 1)
    events: list[dict[str, Any]] = []
    base = time.time() - 86_400
    for person in range(people):
        anon = f"anon-{person}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        user = f"user-{person}"
        signed_in = person not in late
        for step in range(per_person):
            if person in late and step == per_person // 2:
                signed_in = True
                kind = "identify"
            else:
                kind = rng.choices(["identify", "track", "page"], weights=[15, 60, 25])[0]
            event: dict[str, Any] = {
                "type": kind,
                "messageId": uuid.UUID(int=rng.getrandbits(128)).hex,
                "anonymousId": anon,
                "timestamp": time.strftime(
                    "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(base + person + step)
                ),
                "context": {"library": {"name": "bench"}, "ip": "203.0.113.9"},
            }
            if signed_in:
                event["userId"] = user
            if kind == "identify" and signed_in:
                event["traits"] = {
                    "email": f"{user}@example.com",
                    "plan": rng.choice(["free", "pro"]),
                }
            elif kind == "identify":
                event["traits"] = {"referrer": rng.choice(["ads", "search", "friend"])}
            elif kind == "track":
                event["event"] = rng.choice(EVENTS)
                event["properties"] = {
                    "value": round(rng.random() * 100, 2),
                    "sku": f"sku-{rng.randrange(500)}",
                }
            else:
                event["name"] = rng.choice(PAGES)
                event["properties"] = {"path": event["name"]}
            events.append(event)
    # Interleave people as real traffic does, keeping each person's order.
    rng.shuffle(events)
    events.sort(key=lambda e: e["timestamp"])
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> int:
    """Sockets listening on `port`: one per worker that has started, where each has its
    own (Linux)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                        count += 1
        except FileNotFoundError:
            continue
    return count


def run(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout


class Server:
    def __init__(self, database_url: str, workers: int) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "ARIANE_DATABASE_URL": database_url,
            "ARIANE_LOG_LEVEL": "warning",
            "ARIANE_MAX_INFLIGHT_INGEST": "1000",
        }
        run(str(VENV_BIN / "ariane"), "migrate", env=self.env)
        self.write_key = (
            run(
                str(VENV_BIN / "ariane"),
                "sources",
                "create",
                f"bench-{uuid.uuid4().hex[:6]}",
                env=self.env,
            )
            .strip()
            .splitlines()[-1]
        )
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "ariane"),
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # Every worker up, not only the first: connections opened while one is still
            # starting all go to the others, and stay there.
            if listening(self.port) >= workers:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def send(server: Server, bodies: list[bytes], connections: int) -> dict[str, Any]:
    auth = "Basic " + b64encode(f"{server.write_key}:".encode()).decode()
    latencies: list[float] = []
    failures: list[str] = []
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            started = time.perf_counter()
            conn.request(
                "POST",
                "/v1/batch",
                body=bodies[index],
                headers={"Authorization": auth, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    failures.append(f"{response.status}")

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "seconds": round(elapsed, 2),
        "requests": len(bodies),
        "failures": len(failures),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
    }


RAW_COLUMNS = "(source_id, message_id, profile_id, type, event, timestamp, received_at, payload)"


def raw_rows(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    return [
        (
            "bench",
            e["messageId"],
            e.get("userId") or e["anonymousId"],
            e["type"],
            e.get("event"),
            e["timestamp"],
            now,
            orjson.dumps(e).decode(),
        )
        for e in events
    ]


def raw_insert_sqlite(path: str, events: list[dict[str, Any]], batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE raw_events (id INTEGER PRIMARY KEY, source_id TEXT, message_id TEXT, "
        "profile_id TEXT, type TEXT, event TEXT, timestamp TEXT, received_at TEXT, payload TEXT, "
        "UNIQUE (source_id, message_id))"
    )
    rows = raw_rows(events)
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO raw_events {RAW_COLUMNS} VALUES (?,?,?,?,?,?,?,?)",
            rows[start : start + batch],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def raw_insert_postgres(url: str, events: list[dict[str, Any]], batch: int) -> float:
    rows = raw_rows(events)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_events (id BIGSERIAL PRIMARY KEY, source_id TEXT, message_id TEXT, "
            "profile_id TEXT, type TEXT, event TEXT, timestamp TIMESTAMP, received_at TIMESTAMP, "
            "payload JSONB, UNIQUE (source_id, message_id))"
        )
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO raw_events {RAW_COLUMNS} VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                    rows[start : start + batch],
                )
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def machine() -> dict[str, Any]:
    """What the figures of a report ran on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def postgres_database() -> tuple[str, str]:
    name = f"ariane_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres(name: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Inclusive share of busy samples per function, from py-spy's collapsed stacks.

    Threads and processes queueing for the SQLite writer (`SQLiteWriter.hold`) are counted
    apart: they are waiting, and would otherwise appear to spend their time writing.
    """
    totals: dict[str, int] = {}
    busy = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        if "SQLiteWriter.hold (ariane/storage/database.py" in frames[-1] or any(
            "acquire" in frame for frame in frames[-2:]
        ):
            waiting += count
            continue
        busy += count
        for name in {frame.split(" (")[0] + " " + _module_of(frame) for frame in frames}:
            totals[name] = totals.get(name, 0) + count
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return {
        "busy_samples": busy,
        "waiting_for_write_lock_samples": waiting,
        "inclusive_percent_of_busy": [
            (name, round(100 * count / max(busy, 1), 1))
            for name, count in ranked
            if "ariane" in name or "sqlalchemy" in name or "starlette" in name
        ][:top],
    }


def _module_of(frame: str) -> str:
    where = frame.rsplit(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    return "(" + where.split("site-packages/")[-1].split("src/")[-1] + ")"


def bench_one(
    backend: str, events: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    bodies = [
        orjson.dumps({"batch": events[i : i + args.batch]})
        for i in range(0, len(events), args.batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/ariane.db"
            raw_target = f"{tmp}/raw.db"
            name = ""
        else:
            url, name = postgres_database()
            raw_target = url
        try:
            server = Server(url, args.workers)
            spy = None
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile_path = args.profile / f"{backend}.txt"
                spy = subprocess.Popen(
                    [
                        str(VENV_BIN / "py-spy"),
                        "record",
                        "--subprocesses",
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--output",
                        str(profile_path),
                        "--pid",
                        str(server.process.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
            try:
                result = send(server, bodies, args.connections)
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                server.stop()
            if spy is not None:
                result["profile"] = summarise_profile(profile_path)
            if backend == "sqlite":
                raw = raw_insert_sqlite(raw_target, events, args.batch)
            else:
                raw = raw_insert_postgres(raw_target, events, args.batch)
        finally:
            if name:
                drop_postgres(name)
    if result["failures"]:
        raise RuntimeError(f"{backend}: {result['failures']} requests failed; no figure to report")
    events_per_s = len(events) / result["seconds"]
    return {
        **result,
        "events": len(events),
        "events_per_s": round(events_per_s),
        "raw_insert_per_s": round(raw),
        "ratio_to_raw": round(events_per_s / raw, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--profile", type=Path, help="record the server with py-spy into this folder"
    )
    args = parser.parse_args()
    events = generate(args.people, args.events)
    report: dict[str, Any] = {
        "machine": machine(),
        "params": vars(args),
    }
    for backend in args.backends.split(","):
        report[backend] = bench_one(backend, events, args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())


if __name__ == "__main__":
    main()
