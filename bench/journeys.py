"""Journeys: how soon a message follows the event that makes it due, how many messages a
campaign hands over a second, and what people waiting in a delay cost an idle server.

Starts `ariane serve --workers 2` on SQLite and on PostgreSQL, with a webhook channel to
an HTTP receiver and an email channel to an SMTP server (aiosmtpd), both in this
process, and four journeys. Then, on the same server:

1. latency: people send one `Trial Feature Used` each, one at a time with a pause
   between (an idle server); the event enters them in a segment, which enters them in a
   journey that sends a webhook. Measured from the start of the `/v1/track` request (and
   from its `200`) to the receiver's receipt of that person's webhook.
2. throughput: `--people` people are identified through `/v1/batch`, then each is sent a
   `Campaign Started`, which enters them in a journey sending one email; then another,
   sending one webhook. Sends a second from the first message received to the last.
   Each campaign is run once for each of `--provider-ms`: the receivers answer each
   message at once (0), or after that many milliseconds, as a provider's server across
   the internet does. The channels hand `--connections` messages over at once; the
   receivers' own rates over as many connections, and the CPU time the client and the
   receiver spend on a message, are measured alone from another process before.
3. idle: the CPU time of the server's processes (and, on PostgreSQL, of the database's
   backends serving it) over `--idle-seconds` of idling, first with nobody waiting, then
   once the same people have entered a journey whose first step is `delay: {for: P30D}`.

Prints one JSON document.

    .venv/bin/python -m bench.journeys --people 100000
    .venv/bin/python -m bench.journeys --quick
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import resource
import smtplib
import statistics
import tempfile
import threading
import time
import uuid
from base64 import b64encode
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from ariane.storage.database import Database
from ariane.storage.tables import messages
from bench.delivery import PostReceiver
from bench.ingest import (
    POSTGRES_URL,
    VENV_BIN,
    Server,
    drop_postgres,
    free_port,
    machine,
    postgres_database,
    run,
    send,
)

SEGMENT = "trial-users"
LATENCY_JOURNEY = "trial-nudge"
CHANNELS = ("email", "webhook")
WAITING_JOURNEY = "long-wait"
BATCH = 500
DEFAULTS = {
    "people": 100_000, "latency_people": 300, "warmup": 20, "idle_seconds": 30.0,
    "alone_seconds": 10.0,
}  # fmt: skip
QUICK = {
    "people": 2_000, "latency_people": 50, "warmup": 5, "idle_seconds": 10.0,
    "alone_seconds": 2.0,
}  # fmt: skip
CONNECTIONS = 4


# --- the receivers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # time.perf_counter()
    wall: float  # time.time()
    handed_at: datetime  # the webhook's sent_at: when Ariane handed it to the channel
    profile_id: str


class Tally:
    """Arrivals by journey: how many, the first and the last; by address for latency."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.counts: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.by_address: dict[str, Arrival] = {}

    def note(self, journey: str, now: float, message: dict[str, Any] | None = None) -> None:
        with self.changed:
            self.counts[journey] = self.counts.get(journey, 0) + 1
            self.first.setdefault(journey, now)
            self.last[journey] = now
            if message is not None and journey == LATENCY_JOURNEY:
                arrival = Arrival(
                    now,
                    time.time(),
                    datetime.fromisoformat(message["sent_at"]),
                    message["profile_id"],
                )
                self.by_address.setdefault(message["address"], arrival)
            self.changed.notify_all()

    def wait_for_address(self, address: str, timeout: float = 10.0) -> Arrival:
        with self.changed:
            if not self.changed.wait_for(lambda: address in self.by_address, timeout):
                raise RuntimeError(f"no message for {address} within {timeout} s")
            return self.by_address[address]

    def count(self, journey: str) -> int:
        with self.changed:
            return self.counts.get(journey, 0)


class Receiver(PostReceiver):
    """Notes when each webhook arrives, kept alive as a provider's server would."""

    protocol = "HTTP/1.1"

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        # Seconds it takes to answer each message, as a provider across the internet.
        self.delay = 0.0
        super().__init__()

    def note(self, body: bytes, now: float) -> None:
        message = orjson.loads(body)
        self.tally.note(str(message.get("journey")), now, message)
        if self.delay:
            time.sleep(self.delay)


class Mailbox:
    """An SMTP handler that counts what it accepts, by the journey in its subject."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.delay = 0.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        journey = "capacity"
        for line in content.split(b"\r\n", 30):
            if line.startswith(b"Subject: "):
                journey = line[len(b"Subject: ") :].decode(errors="replace").strip()
                break
        self.tally.note(journey, time.perf_counter())
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 OK"


# --- the receivers' own rates, from another process ----------------------------------------


def post_many(url: str, start_at: float, seconds: float) -> tuple[int, float]:
    """Webhooks one client posts to `url` in `seconds` from `start_at` (`time.time`), one
    at a time on one connection, and the CPU time it spent doing so."""
    body = orjson.dumps(
        {"send_key": "k" * 60, "address": "capacity", "journey": "capacity", "text": "x" * 200}
    )
    with httpx.Client(timeout=10) as client:
        client.post(url, content=body)
        headers = {"Content-Type": "application/json"}
        return _for(start_at, seconds, lambda: client.post(url, content=body, headers=headers))


def mail_many(port: int, start_at: float, seconds: float) -> tuple[int, float]:
    """Emails smtplib hands to the server in `seconds` from `start_at`, one at a time on
    one connection, and the CPU time it spent doing so."""
    message = EmailMessage()
    message["Subject"] = "capacity"
    message["From"] = "Bench <bench@bench.test>"
    message["To"] = "someone@bench.test"
    message.set_content("x" * 200)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(message)
        return _for(start_at, seconds, lambda: smtp.send_message(message))


def _for(start_at: float, seconds: float, send_one: Callable[[], Any]) -> tuple[int, float]:
    time.sleep(max(0.0, start_at - time.time()))
    count, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        send_one()
        count += 1
    return count, time.process_time() - cpu


def alone(
    work: Callable[[Any, float, float], tuple[int, float]],
    to: Any,
    connections: int,
    seconds: float,
) -> dict[str, float]:
    """A receiver's rate alone, sent to by `connections` clients at once, each one a
    process of its own, and the CPU milliseconds the clients and the receiver (this
    process, otherwise idle) spent on a message."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=connections, mp_context=spawn) as pool:
        # Every client started before any sends: they send over the same seconds.
        start_at = time.time() + 3.0 + connections * 0.3
        clients = [pool.submit(work, to, start_at, seconds) for _ in range(connections)]
        time.sleep(max(0.0, start_at - time.time()))
        before = resource.getrusage(resource.RUSAGE_SELF)
        done = [client.result(timeout=600) for client in clients]
        after = resource.getrusage(resource.RUSAGE_SELF)
    count = sum(sent for sent, _ in done)
    receiver_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "per_s": round(count / seconds),
        "client_cpu_ms": round(sum(cpu for _, cpu in done) / count * 1000, 3),
        "receiver_cpu_ms": round(receiver_cpu / count * 1000, 3),
    }


# --- CPU time, from /proc -----------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of the processes, those gone excepted."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def backends(database: str) -> list[int]:
    """The PostgreSQL processes serving `database`."""
    if not database:
        return []
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [int(row[0]) for row in rows]


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds so far: the process that runs the bus and the jobs, the server with
    its workers, and the PostgreSQL backends serving it; and when they were read."""

    supervisor: float
    server: float
    database: float
    at: float

    def since(self, before: Usage) -> Usage:
        return Usage(
            self.supervisor - before.supervisor,
            self.server - before.server,
            self.database - before.database,
            self.at - before.at,
        )


class Meter:
    def __init__(self, server: Server, database: str) -> None:
        self.server = server
        self.database = database

    def sample(self) -> Usage:
        root = self.server.process.pid
        return Usage(
            cpu_seconds([root]),
            cpu_seconds(process_tree(root)),
            cpu_seconds(backends(self.database)),
            time.perf_counter(),
        )

    def over(self, seconds: float) -> dict[str, float]:
        """CPU seconds a minute, over `seconds` of idling."""
        before = self.sample()
        time.sleep(seconds)
        used = self.sample().since(before)
        result = {
            "seconds": round(used.at, 1),
            "server_cpu_s_per_min": round(used.server / used.at * 60, 3),
            "supervisor_cpu_s_per_min": round(used.supervisor / used.at * 60, 3),
        }
        if self.database:
            result["postgres_cpu_s_per_min"] = round(used.database / used.at * 60, 3)
        return result

    def settle(self, limit: float = 600.0, window: float = 3.0, busy: float = 0.1) -> float:
        """Wait until the bus has caught up: the server and its database use less than
        `busy` of a core over a window, or less than half a core that hardly moves from
        one window to the next (what idling costs); the seconds waited."""
        started = time.perf_counter()
        last = None
        while time.perf_counter() - started < limit:
            before = self.sample()
            time.sleep(window)
            used = self.sample().since(before)
            cores = (used.server + used.database) / used.at
            if cores < busy or (cores < 0.5 and last is not None and abs(cores - last) < 0.03):
                break
            last = cores
        return round(time.perf_counter() - started, 1)


# --- the server ---------------------------------------------------------------------------


class Admin:
    def __init__(self, server: Server) -> None:
        token = run(str(VENV_BIN / "ariane"), "tokens", "create", "--role", "admin", env=server.env)
        self.headers = {
            "Authorization": f"Bearer {token.strip().splitlines()[-1]}",
            "Content-Type": "application/json",
        }
        self.port = server.port

    def call(self, method: str, path: str, body: Any = None) -> Any:
        # A connection a call: the server closes those idle for a few seconds.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, None if body is None else orjson.dumps(body), self.headers)
            answer = conn.getresponse()
            text = answer.read()
        finally:
            conn.close()
        if answer.status not in (200, 201):
            raise RuntimeError(f"{method} {path} answered {answer.status}: {text[:500]!r}")
        return orjson.loads(text)


def campaign_id(channel: str, provider_ms: int) -> str:
    return f"campaign-{channel}-{provider_ms}ms"


def declare(admin: Admin, receiver: Receiver, smtp_port: int, args: argparse.Namespace) -> None:
    admin.call(
        "POST",
        "/api/segments",
        {"name": SEGMENT, "condition": {"event": "Trial Feature Used", "count": {"gte": 1}}},
    )

    def sending(channel: str, journey: str) -> dict[str, Any]:
        return {"send": {"channel": channel, "template": journey, "category": "transactional"}}

    def campaign(channel: str, provider_ms: int) -> dict[str, Any]:
        ident = campaign_id(channel, provider_ms)
        where = [{"property": "campaign", "op": "eq", "value": ident}]
        return {
            "id": ident,
            "entry": {"event": "Campaign Started", "where": where},
            "steps": [sending(channel, ident)],
        }

    journeys = [
        {
            "id": LATENCY_JOURNEY,
            "entry": {"segment": SEGMENT},
            "steps": [sending("webhook", LATENCY_JOURNEY)],
        },
        *(campaign(channel, ms) for channel in CHANNELS for ms in args.provider_ms),
        {
            "id": WAITING_JOURNEY,
            "entry": {"event": "Wait Started"},
            "steps": [{"delay": {"for": "P30D"}}, sending("webhook", WAITING_JOURNEY)],
        },
    ]
    text = "Hello {{ traits.first_name | default: 'there' }}, your trial ends soon."
    admin.call(
        "POST",
        "/api/journeys",
        {
            "channels": [
                {
                    "name": "webhook",
                    "type": "webhook",
                    "concurrency": args.connections,
                    "settings": {"url": receiver.url, "secret": "bench"},
                },
                {
                    "name": "email",
                    "type": "email",
                    "concurrency": args.connections,
                    "settings": {
                        "host": "127.0.0.1",
                        "port": smtp_port,
                        "from": "Bench <bench@bench.test>",
                    },
                },
            ],
            # The subject names the journey: the SMTP server counts by it.
            "templates": [
                {"name": journey["id"], "subject": journey["id"], "text": text}
                for journey in journeys
            ],
            "journeys": journeys,
        },
    )


def batches(events: list[dict[str, Any]]) -> list[bytes]:
    return [
        orjson.dumps({"batch": events[start : start + BATCH]})
        for start in range(0, len(events), BATCH)
    ]


def ingest(server: Server, events: list[dict[str, Any]]) -> float:
    """Seconds to have the events accepted; a refused request fails the run."""
    sent = send(server, batches(events), CONNECTIONS)
    if sent["failures"]:
        raise RuntimeError(f"{sent['failures']} requests of /v1/batch failed")
    return float(sent["seconds"])


# --- the measurements ---------------------------------------------------------------------


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(share: float) -> float:
        return round(ordered[max(0, int(len(ordered) * share) - 1)] * 1000, 1)

    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def latency(server: Server, tally: Tally, url: str, args: argparse.Namespace) -> dict[str, Any]:
    auth = "Basic " + b64encode(f"{server.write_key}:".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    from_start, from_ack = [], []
    counted: list[tuple[float, Arrival]] = []
    for n in range(args.warmup + args.latency_people):
        user = f"trial-{n}-{uuid.uuid4().hex[:8]}"
        body = orjson.dumps({"userId": user, "event": "Trial Feature Used"})
        started = time.perf_counter()
        conn.request(
            "POST", "/v1/track", body, {"Authorization": auth, "Content-Type": "application/json"}
        )
        answer = conn.getresponse()
        answer.read()
        acknowledged, acknowledged_wall = time.perf_counter(), time.time()
        if answer.status != 200:
            raise RuntimeError(f"/v1/track answered {answer.status}")
        arrived = tally.wait_for_address(user)
        if n >= args.warmup:
            from_start.append(arrived.at - started)
            from_ack.append(max(0.0, arrived.at - acknowledged))
            counted.append((acknowledged_wall, arrived))
        time.sleep(args.pause)
    conn.close()
    return {
        "from_request_start": summary(from_start),
        "from_acknowledgement": summary(from_ack),
        "stages_after_acknowledgement": stages(url, counted),
    }


def stages(url: str, counted: list[tuple[float, Arrival]]) -> dict[str, Any]:
    """Where the time after the `200` goes, by the server's clock (the same machine's):
    until the journey's step made the message due (the message's `created_at`: the
    segment's entry read by the journeys' handler), until the channel's handler handed it
    over (the webhook's `sent_at`), until the receiver got it."""
    db = Database(url)
    try:
        with db.read() as conn:
            made = dict(
                conn.execute(
                    sa.select(messages.c.profile_id, messages.c.created_at).where(
                        messages.c.journey_id == LATENCY_JOURNEY
                    )
                ).all()
            )
    finally:
        db.dispose()
    due, handed, received = [], [], []
    for acknowledged, arrival in counted:
        created = made[arrival.profile_id].timestamp()
        due.append(max(0.0, created - acknowledged))
        handed.append(arrival.handed_at.timestamp() - created)
        received.append(arrival.wall - arrival.handed_at.timestamp())
    return {
        "to_message_due": summary(due),
        "to_handed_over": summary(handed),
        "to_received": summary(received),
    }


def people(count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "identify",
            "userId": f"user-{n}",
            "traits": {"email": f"user-{n}@bench.test", "first_name": f"Person {n}"},
        }
        for n in range(count)
    ]


def started(name: str, count: int, **properties: Any) -> list[dict[str, Any]]:
    return [
        {"type": "track", "userId": f"user-{n}", "event": name, "properties": properties}
        for n in range(count)
    ]


def pace(url: str, journey: str) -> dict[str, float]:
    """Messages a second the journey made due (their `created_at`) and handed over
    (their `sent_at`), first to last, by the server's clock: which of the two held the
    campaign back."""
    db = Database(url)
    try:
        with db.read() as conn:
            made, handed = (
                conn.execute(
                    sa.select(
                        sa.func.min(column), sa.func.max(column), sa.func.count(column)
                    ).where(messages.c.journey_id == journey)
                ).one()
                for column in (messages.c.created_at, messages.c.sent_at)
            )
    finally:
        db.dispose()

    def rate(first: Any, last: Any, count: int) -> float:
        if count < 2 or first is None:
            return 0.0
        seconds: float = (last - first).total_seconds()
        return round((count - 1) / max(seconds, 1e-3))

    return {"made_due_per_s": rate(*made), "handed_over_per_s": rate(*handed)}


def campaign(
    server: Server, admin: Admin, tally: Tally, meter: Meter, journey: str, count: int
) -> dict[str, Any]:
    """Enter `count` people in the campaign `journey`; wait for every message."""
    before = meter.sample()
    began = time.perf_counter()
    accepted = ingest(server, started("Campaign Started", count, campaign=journey))
    seen, moved = 0, time.perf_counter()
    # Done when every message came, or none for a minute.
    while (now := tally.count(journey)) < count and time.perf_counter() - moved < 60:
        if now != seen:
            seen, moved = now, time.perf_counter()
        time.sleep(0.2)
    received = tally.count(journey)
    first, last = tally.first.get(journey, began), tally.last.get(journey, began)
    used = meter.sample().since(before)
    path = f"/api/journeys/{journey}/steps"
    # What became of each message is recorded just after its hand-over.
    for _ in range(30):
        statuses = admin.call("GET", path)["steps"][0]["messages"]
        if not {"queued", "sending"} & set(statuses):
            break
        time.sleep(1)
    return {
        "messages": count,
        "received": received,
        "events_accepted_s": round(accepted, 1),
        "first_to_last_received_s": round(last - first, 1),
        "sends_per_s": round((received - 1) / (last - first)) if received > 1 else 0,
        "first_event_to_last_received_s": round(last - began, 1),
        "statuses": statuses,
        **pace(server.env["ARIANE_DATABASE_URL"], journey),
        # Over the whole campaign, from the first event to the last message received.
        "cores_busy": {
            "supervisor": round(used.supervisor / used.at, 2),
            "server": round(used.server / used.at, 2),
            **({"postgres": round(used.database / used.at, 2)} if meter.database else {}),
        },
    }


def throughput(
    server: Server, admin: Admin, tally: Tally, receiver: Receiver, mailbox: Mailbox,
    smtp_port: int, meter: Meter, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {"people": args.people, "connections": args.connections}
    for ms in args.provider_ms:
        receiver.delay = mailbox.delay = ms / 1000
        result[f"receivers_alone_{ms}ms"] = {
            "email": alone(mail_many, smtp_port, args.connections, args.alone_seconds),
            "webhook": alone(post_many, receiver.url, args.connections, args.alone_seconds),
        }
    result["identify_accepted_s"] = round(ingest(server, people(args.people)), 1)
    for ms in args.provider_ms:
        receiver.delay = mailbox.delay = ms / 1000
        for channel in args.campaigns:
            settled = meter.settle()
            journey = campaign_id(channel, ms)
            result[f"{channel}_{ms}ms"] = {
                "settled_before_s": settled,
                **campaign(server, admin, tally, meter, journey, args.people),
            }
    return result


def idle(server: Server, admin: Admin, meter: Meter, args: argparse.Namespace) -> dict[str, Any]:
    settled = meter.settle()
    nobody = meter.over(args.idle_seconds)
    began = time.perf_counter()
    accepted = ingest(server, started("Wait Started", args.people))
    path = f"/api/journeys/{WAITING_JOURNEY}/steps"
    while (waiting := admin.call("GET", path)["steps"][0]["waiting"]) < args.people:
        if time.perf_counter() - began > 1800:
            raise RuntimeError(f"{waiting} of {args.people} entered the delay in 30 minutes")
        time.sleep(1)
    entered = time.perf_counter() - began
    return {
        "settled_before_s": settled,
        "nobody_waiting": nobody,
        "people_waiting": waiting,
        "events_accepted_s": round(accepted, 1),
        "all_waiting_after_s": round(entered, 1),
        "settled_after_entry_s": meter.settle(),
        "with_people_waiting": meter.over(args.idle_seconds),
    }


def bench_one(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    receiver = Receiver(tally)
    smtp_port = free_port()
    mailbox = Mailbox(tally)
    mail = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    mail.start()
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url, name = f"sqlite:///{tmp}/ariane.db", ""
        else:
            url, name = postgres_database()
        try:
            server = Server(url, args.workers)
            try:
                admin = Admin(server)
                declare(admin, receiver, smtp_port, args)
                meter = Meter(server, name)
                # The machine may be shared: how busy it was, over 1, 5 and 15 minutes.
                result: dict[str, Any] = {"load_average_before": os.getloadavg()}
                if "latency" in args.parts:
                    result["latency"] = latency(server, tally, url, args)
                if "throughput" in args.parts:
                    result["throughput"] = throughput(
                        server, admin, tally, receiver, mailbox, smtp_port, meter, args
                    )
                if "idle" in args.parts:
                    if "throughput" not in args.parts:
                        ingest(server, people(args.people))
                    result["idle"] = idle(server, admin, meter, args)
                result["load_average_after"] = os.getloadavg()
                return result
            finally:
                server.stop()
        finally:
            mail.stop()
            receiver.close()
            if name:
                drop_postgres(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--parts", default="latency,throughput,idle")
    parser.add_argument("--people", type=int, help="campaign and delay (default 100000)")
    parser.add_argument("--latency-people", type=int, help="latency samples (default 300)")
    parser.add_argument("--warmup", type=int, help="latency samples not counted (default 20)")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between two")
    parser.add_argument("--idle-seconds", type=float, help="each CPU window (default 30)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--campaigns", default="email,webhook", help="channels to campaign on")
    parser.add_argument(
        "--provider-ms", default="0,20", help="milliseconds the receivers take a message"
    )
    parser.add_argument(
        "--connections", type=int, default=4, help="the channels' concurrency (default 4)"
    )
    parser.add_argument("--alone-seconds", type=float, help="each receiver's rate alone")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    sizes = QUICK if args.quick else DEFAULTS
    for name, size in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, size)
    args.parts = args.parts.split(",")
    args.campaigns = args.campaigns.split(",")
    args.provider_ms = [int(ms) for ms in args.provider_ms.split(",")]
    report: dict[str, Any] = {
        "benchmark": "journeys",
        "machine": machine(),
        "params": {k: v for k, v in vars(args).items() if k != "quick"},
    }
    for backend in args.backends.split(","):
        report[backend] = bench_one(backend, args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
