"""Segmentation benchmark: what live segments cost ingestion, how late time-based
transitions happen, and how long a preview count over a million profiles takes.

1. Ingestion through /v1/batch (the mix of bench/ingest.py), once with no definitions and
   once with 100 segments and 20 computed traits, on a fresh database each time. With
   them, the run ends when the last entries and exits are applied to memberships and
   their history (`applying_left_s`: what the server had not applied when the last batch
   was answered).
2. Time-based exits: people enter a segment `Ping within PT5S` at staggered moments; the
   server's timer loop moves them out. The lag is the recorded exit time minus the
   moment the window emptied (the ping's timestamp + 5 s).
3. A preview count (`POST /api/segments/preview`'s SQL) over 1,000,000 profiles with one
   event each, of a condition on a trait and on events in a window.

    .venv/bin/python -m bench.segments --people 50000 --events 150000
    .venv/bin/python -m bench.segments --parts ingestion --repeat 3
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import tempfile
import time
import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from ariane.bootstrap import build
from ariane.domain.clock import iso
from ariane.settings import Settings
from ariane.storage.database import Database
from ariane.storage.migrate import upgrade
from ariane.storage.tables import events, profiles, segment_history
from bench.ingest import (
    EVENTS,
    PAGES,
    Server,
    drop_postgres,
    generate,
    machine,
    postgres_database,
    send,
)

WINDOWS = ["PT1H", "P1D", "P7D", "P30D"]


def definitions(rng: random.Random) -> dict[str, Any]:
    """20 computed traits and 100 segments over the events bench/ingest.py sends."""
    kinds = ["count", "sum", "average", "min", "max", "most_frequent", "unique_count", "last"]
    traits = []
    for index in range(20):
        kind = kinds[index % len(kinds)]
        trait: dict[str, Any] = {
            "name": f"trait_{index}",
            "kind": kind,
            "event": EVENTS[index % len(EVENTS)],
        }
        if kind in ("sum", "average", "min", "max"):
            trait["property"] = "value"
        elif kind != "count":
            trait["property"] = "sku"
        if index % 2:
            trait["within"] = WINDOWS[index % len(WINDOWS)]
        traits.append(trait)
    # Thresholds that make each segment hold a part of the population, as real ones do.
    thresholds: dict[str, tuple[str, Any]] = {
        "count": ("gte", 3),
        "sum": ("gte", 150),
        "average": ("gte", 70),
        "min": ("lte", 5),
        "max": ("gte", 95),
        "most_frequent": ("eq", "sku-7"),
        "unique_count": ("gte", 3),
        "last": ("eq", "sku-1"),
    }
    segments = []
    for index in range(100):
        event = EVENTS[index % len(EVENTS)]
        shape = index % 5
        condition: dict[str, Any]
        if shape == 0:
            condition = {
                "event": event,
                "count": {"gte": 2 + index % 3},
                "within": WINDOWS[index % len(WINDOWS)],
            }
        elif shape == 1:
            condition = {
                "all": [
                    {"trait": "plan", "op": "eq", "value": rng.choice(["free", "pro"])},
                    {
                        "event": event,
                        "where": [{"property": "value", "op": "gte", "value": 50 + index % 50}],
                        "count": {"gte": 1},
                        "within": "P7D",
                    },
                ]
            }
        elif shape == 2:
            trait = traits[index % 20]
            op, value = thresholds[trait["kind"]]
            condition = {"computed": trait["name"], "op": op, "value": value}
        elif shape == 3:
            # Lapsed: did it twice, but not in the last three days. Time alone moves
            # people in, so every one of them holds a timer.
            condition = {
                "all": [
                    {"event": event, "count": {"gte": 2}},
                    {"event": event, "count": {"eq": 0}, "within": "P3D"},
                ]
            }
        else:
            condition = {
                "any": [
                    {"trait": "referrer", "op": "eq", "value": "friend"},
                    {"event": event, "count": {"gte": 3}},
                ]
            }
        segments.append({"name": f"segment_{index}", "condition": condition})
    return {"computed_traits": traits, "segments": segments}


def prepare(url: str, document: dict[str, Any] | None) -> None:
    container = build(Settings(database_url=url, segment_timer_interval=0))
    try:
        upgrade(container.db)
        if document is not None:
            container.segments.apply(document)
    finally:
        container.close()


def ingestion(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """`--repeat` pairs of runs, without then with definitions; the ratio of each pair, and
    their median. This machine's speed drifts between runs a minute apart, so each ratio
    compares two runs made one after the other. Each run's events are generated just
    before it (the same ones, timed from then): the earliest fall out of windows of a day
    a second at a time, and events generated once for every run would put fewer people in
    such segments in each later run."""
    document = definitions(random.Random(3))
    pairs = []
    for _ in range(args.repeat):
        pair: dict[str, Any] = {}
        for label, doc in (("without", None), ("with", document)):
            sent = generate(args.people, args.events)
            bodies = [
                orjson.dumps({"batch": sent[i : i + args.batch]})
                for i in range(0, len(sent), args.batch)
            ]
            pair[label] = _ingest(backend, args, bodies, len(sent), doc)
        pair["ratio"] = round(pair["with"]["events_per_s"] / pair["without"]["events_per_s"], 3)
        pairs.append(pair)
    result: dict[str, Any] = {"runs": pairs} if len(pairs) > 1 else dict(pairs[0])
    result["ratio"] = round(statistics.median(p["ratio"] for p in pairs), 3)
    result["segments"] = 100
    result["computed_traits"] = 20
    return result


def _ingest(
    backend: str,
    args: argparse.Namespace,
    bodies: list[bytes],
    sent: int,
    document: dict[str, Any] | None,
) -> dict[str, Any]:
    """One run on a fresh database, with `document`'s definitions applied first."""
    label = "without" if document is None else "with"
    with tempfile.TemporaryDirectory() as tmp:
        url, name = (
            (f"sqlite:///{tmp}/ariane.db", "") if backend == "sqlite" else postgres_database()
        )
        try:
            prepare(url, document)
            server = Server(url, args.workers)
            try:
                run = send(server, bodies, args.connections)
            finally:
                server.stop()
            if run["failures"]:
                raise RuntimeError(f"{backend} {label}: {run['failures']} requests failed")
            if document is not None:
                # The entries and exits the server had not yet applied to memberships and
                # their history are part of the work: the run ends when they are.
                started = time.perf_counter()
                _catch_up(url)
                run["applying_left_s"] = round(time.perf_counter() - started, 2)
                run["seconds"] = round(run["seconds"] + run["applying_left_s"], 2)
            run["events_per_s"] = round(sent / run["seconds"])
            if document is not None:
                run["memberships"] = _memberships(url)
            return run
        finally:
            if name:
                drop_postgres(name)


def _memberships(url: str) -> int:
    """Memberships once every recorded change is applied."""
    _catch_up(url)
    db = Database(url)
    try:
        with db.read() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM segment_members")).scalar_one())
    finally:
        db.dispose()


def _catch_up(url: str) -> None:
    container = build(Settings(database_url=url, segment_timer_interval=0))
    try:
        container.segments.catch_up()
    finally:
        container.close()


def lag(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Exits moved by the timers of a running server, with no event to trigger them."""
    window = timedelta(seconds=5)
    with tempfile.TemporaryDirectory() as tmp:
        url, name = (
            (f"sqlite:///{tmp}/ariane.db", "") if backend == "sqlite" else postgres_database()
        )
        try:
            prepare(
                url,
                {
                    "segments": [
                        {
                            "name": "pinged",
                            "condition": {"event": "Ping", "count": {"gte": 1}, "within": "PT5S"},
                        }
                    ]
                },
            )
            server = Server(url, args.workers)
            try:
                auth = "Basic " + b64encode(f"{server.write_key}:".encode()).decode()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                spread = args.lag_seconds / args.lag_people
                for person in range(args.lag_people):
                    body = orjson.dumps(
                        {
                            "userId": f"pinger-{person}",
                            "event": "Ping",
                            "messageId": uuid.uuid4().hex,
                            "timestamp": iso(datetime.now(UTC)),
                        }
                    )
                    conn.request(
                        "POST",
                        "/v1/track",
                        body=body,
                        headers={"Authorization": auth, "Content-Type": "application/json"},
                    )
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                    time.sleep(spread)
                time.sleep(window.total_seconds() + 3)
            finally:
                server.stop()
            # The exits' times are those recorded when they were decided.
            _catch_up(url)
            db = Database(url)
            try:
                with db.read() as read:
                    exits = dict(
                        read.execute(
                            sa.select(segment_history.c.profile_id, segment_history.c.at).where(
                                segment_history.c.change == "exited"
                            )
                        ).all()
                    )
                    pings = dict(
                        read.execute(
                            sa.select(events.c.profile_id, events.c.timestamp).where(
                                events.c.event == "Ping"
                            )
                        ).all()
                    )
            finally:
                db.dispose()
        finally:
            if name:
                drop_postgres(name)
    lags = sorted((exits[p] - (pings[p] + window)).total_seconds() for p in pings if p in exits)
    if len(lags) != len(pings):
        raise RuntimeError(f"{backend}: {len(pings) - len(lags)} people never left the segment")
    return {
        "people": len(lags),
        "timer_interval_s": Settings().segment_timer_interval,
        "lag_p50_ms": round(statistics.median(lags) * 1000, 1),
        "lag_p99_ms": round(lags[max(int(len(lags) * 0.99) - 1, 0)] * 1000, 1),
        "lag_max_ms": round(lags[-1] * 1000, 1),
        "early": sum(1 for x in lags if x < 0),
    }


def preview(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Count over a million profiles, each with traits and one event."""
    rng = random.Random(11)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        url, name = (
            (f"sqlite:///{tmp}/ariane.db", "") if backend == "sqlite" else postgres_database()
        )
        try:
            prepare(url, None)
            started = time.perf_counter()
            _fill(url, args.preview_profiles, rng, now)
            filled = time.perf_counter() - started
            container = build(Settings(database_url=url, segment_timer_interval=0))
            try:
                condition = {
                    "all": [
                        {"trait": "plan", "op": "eq", "value": "pro"},
                        {
                            "event": "Order Completed",
                            "where": [{"property": "value", "op": "gte", "value": 50}],
                            "count": {"gte": 1},
                            "within": "P30D",
                        },
                    ]
                }
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    answer = container.segments.preview(condition, sample=20)
                    timings.append(time.perf_counter() - started)
            finally:
                container.close()
        finally:
            if name:
                drop_postgres(name)
    return {
        "profiles": args.preview_profiles,
        "fill_s": round(filled, 1),
        "count": answer["count"],
        "seconds": [round(t, 2) for t in timings],
        "best_s": round(min(timings), 2),
    }


def _fill(url: str, people: int, rng: random.Random, now: datetime) -> None:
    """Profiles and their events written straight to the tables, in bulk."""
    chunk = 50_000
    db = Database(url)
    try:
        for start in range(0, people, chunk):
            profile_rows = []
            event_rows = []
            for person in range(start, min(start + chunk, people)):
                pid = f"p{person:012d}"
                at = now - timedelta(days=rng.randrange(60), seconds=rng.randrange(86_400))
                plan = rng.choice(["free", "pro"])
                cell = {"value": plan, "at": iso(at), "source": "bench"}
                profile_rows.append(
                    {
                        "id": pid,
                        "merged_into": None,
                        "traits": {"plan": cell},
                        "computed": {},
                        "first_seen": at,
                        "last_seen": at,
                        "created_at": at,
                        "updated_at": at,
                    }
                )
                name = rng.choice(EVENTS)
                event_rows.append(
                    {
                        "source_id": "bench",
                        "message_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                        "profile_id": pid,
                        "type": "track",
                        "event": name,
                        "timestamp": at,
                        "received_at": at,
                        "payload": {
                            "type": "track",
                            "event": name,
                            "properties": {"value": rng.randrange(100), "path": PAGES[0]},
                        },
                    }
                )

            def write(conn: Any, people: Any = profile_rows, done: Any = event_rows) -> None:
                db.dialect.insert_ignoring_conflicts(conn, profiles, people)
                db.dialect.insert_ignoring_conflicts(conn, events, done)

            db.write(write)
        if db.dialect.name == "postgresql":
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=1, help="pairs of ingestion runs; the median ratio"
    )
    parser.add_argument("--lag-people", type=int, default=2_000)
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--preview-profiles", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--parts", default="ingestion,lag,preview")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": machine(),
        "params": vars(args),
    }
    parts = {"ingestion": ingestion, "lag": lag, "preview": preview}
    for backend in args.backends.split(","):
        report[backend] = {}
        for part in args.parts.split(","):
            report[backend][part] = parts[part](backend, args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())


if __name__ == "__main__":
    main()
