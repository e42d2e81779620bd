"""Loyalty benchmark: earn, redeem and burn latency and throughput under many concurrent
requests, and a count of what was given or taken twice (it must be none).

Starts `ariane serve`, declares a programme, makes `--members` members through
/v1/batch, then from `--connections` keep-alive connections at once:

1. earn: `--requests` earns, each for a random member under its own Idempotency-Key;
2. redeem: as many purchases of a reward, each handing out a code from its pool;
3. burn: each code bought, burned once;
4. burn again: each code, under a new key: every one must be refused (409).

Every connection sends its next request as soon as the last is answered (a closed loop:
the figures are latency at saturation), unless `--rate` spreads the requests evenly over
the connections at that many per second in all (an open loop: latency at that rate).
The client runs on the same machine as the server and takes its share of the CPU.
Finally `ariane loyalty check` must find the ledger and lots in agreement. Prints one
JSON document.

On Linux each phase also reports the CPU time spent per request (`cpu_ms_per_request`)
by the worker processes, by the process that supervises them and runs the background
loops (the timeline events of the movements, segment timers), and by the PostgreSQL
processes of this machine, read from /proc: unlike a p99, these barely move from one
run to the next.

    .venv/bin/python -m bench.loyalty --backends postgresql --connections 200
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from base64 import b64encode
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from bench.ingest import VENV_BIN, Server, drop_postgres, machine, postgres_database, run

Request = tuple[str, bytes, str]


def programme(codes: int) -> str:
    return orjson.dumps(
        {
            "id": "club",
            "expiry": {"validity": "P365D"},
            "rewards": [{"id": "voucher", "cost": 10, "pool": "vouchers"}],
            "coupon_pools": [{"id": "vouchers", "generate": {"count": codes}}],
        }
    ).decode()


def members(server: Server, url: str, count: int) -> list[str]:
    """`count` members sent through /v1/batch; their profile ids."""
    auth = "Basic " + b64encode(f"{server.write_key}:".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    for start in range(0, count, 500):
        batch = [
            {"type": "identify", "userId": f"member-{i}", "messageId": f"m-{i}"}
            for i in range(start, min(start + 500, count))
        ]
        conn.request(
            "POST",
            "/v1/batch",
            body=orjson.dumps({"batch": batch}),
            headers={"Authorization": auth, "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/v1/batch answered {response.status}")
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as db:
        found = [
            str(row[0])
            for row in db.execute(
                sa.text("SELECT profile_id FROM identities WHERE type = 'user_id' ORDER BY value")
            )
        ]
    engine.dispose()
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_times(pids: list[int]) -> dict[int, float]:
    """User and system CPU time of each process still there, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    return {
        pid: (int(fields[11]) + int(fields[12])) / tick
        for pid in pids
        if (fields := _stat(pid)) is not None
    }


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings: by the processes there at both, and all
    of it by those started since (a connection the pool opened meanwhile)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _command(pid: int) -> tuple[int, str]:
    """(parent pid, command line) of a process; (0, "") if it is gone."""
    fields = _stat(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return 0, ""
    return (0, "") if fields is None else (int(fields[1]), command)


def server_processes(server: Server) -> dict[str, list[int]] | None:
    """The processes whose CPU time each phase reports, by role; None off Linux."""
    if not Path("/proc/self/stat").exists():
        return None
    top = server.process.pid
    others = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    commands = {pid: _command(pid) for pid in others}
    workers = [
        pid for pid, (parent, cmd) in commands.items() if parent == top and "spawn_main" in cmd
    ]
    return {
        # With one worker there is no supervisor: the loops run in the worker.
        "workers": workers or [top],
        "supervisor": [top] if workers else [],
        "database": [pid for pid, (_, cmd) in commands.items() if cmd.startswith("postgres")],
    }


def load(
    port: int,
    token: str,
    requests: list[Request],
    connections: int,
    rate: float | None,
) -> dict[str, Any]:
    """Send the requests (path, body, Idempotency-Key) from `connections` connections;
    latencies and how many were answered with each status."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(requests)
    cursor = iter(range(len(requests)))
    lock = threading.Lock()
    start = threading.Barrier(connections + 1)
    # In an open loop, connection c sends its k-th request at (k * connections + c) / rate.
    gap = None if rate is None else connections / rate

    def worker(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        sent = 0
        start.wait()
        began = time.perf_counter()
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            if gap is not None:
                due = began + (sent + number / connections) * gap
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            path, body, key = requests[index]
            started = time.perf_counter()
            conn.request(
                "POST",
                path,
                body=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                },
            )
            response = conn.getresponse()
            content = response.read()
            elapsed = time.perf_counter() - started
            sent += 1
            with lock:
                latencies.append(elapsed)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                answers[index] = (response.status, content)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(requests),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(requests) / seconds),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "_answers": answers,
    }


def bench_one(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url, name = f"sqlite:///{tmp}/ariane.db", ""
        else:
            url, name = postgres_database()
        try:
            server = Server(url, args.workers)
            try:
                return _phases(server, url, tmp, rng, args)
            finally:
                server.stop()
        finally:
            if name:
                drop_postgres(name)


def _phases(
    server: Server, url: str, tmp: str, rng: random.Random, args: argparse.Namespace
) -> dict[str, Any]:
    ariane = str(VENV_BIN / "ariane")
    file = Path(tmp) / "club.json"
    file.write_text(programme(args.requests))
    run(ariane, "loyalty", "apply", str(file), env=server.env)
    token = run(ariane, "tokens", "create", "--role", "admin", env=server.env).split()[-1]
    people = members(server, url, args.members)

    def phase(requests: list[Request]) -> dict[str, Any]:
        processes = server_processes(server)
        before = {} if processes is None else {k: cpu_times(v) for k, v in processes.items()}
        result = load(server.port, token, requests, args.connections, args.rate)
        after = server_processes(server)
        if processes is not None and after is not None and requests:
            result["cpu_ms_per_request"] = {
                role: round(cpu_spent(before[role], cpu_times(pids)) * 1000 / len(requests), 2)
                for role, pids in after.items()
            }
        return result

    base = "/api/loyalty/programmes/club/members"

    earns = [
        (
            f"{base}/{rng.choice(people)}/earn",
            orjson.dumps({"points": rng.randint(10, 500), "reference": f"R-{i}"}),
            f"earn-{i}-{uuid.uuid4().hex}",
        )
        for i in range(args.requests)
    ]
    earn = phase(earns)
    # One purchase per earn answered, by the member who earned (10 points or more: as
    # much as the reward costs).
    rich = [
        path.split("/")[-2]
        for (path, _, _), (status, _) in zip(earns, earn["_answers"], strict=True)
        if status == 200
    ]
    redeem = phase(
        [
            (f"{base}/{member}/redeem", b'{"reward": "voucher"}', f"redeem-{i}")
            for i, member in enumerate(rich)
        ]
    )
    codes = [
        orjson.loads(content)["coupon"]["code"]
        for status, content in redeem["_answers"]
        if status == 200
    ]
    burn_body = orjson.dumps({"channel": "till", "location": "bench"})
    burn = phase(
        [(f"/api/loyalty/coupons/{code}/burn", burn_body, f"burn-{code}") for code in codes]
    )
    again = phase(
        [(f"/api/loyalty/coupons/{code}/burn", burn_body, f"again-{code}") for code in codes]
    )
    check = subprocess.run(
        [ariane, "loyalty", "check"], env=server.env, capture_output=True, text=True
    )
    report = {
        "members": len(people),
        "earn": earn,
        "redeem": redeem,
        "burn": burn,
        "burn_again": again,
        # A second burn of a coupon that succeeded: must be 0.
        "double_burns": again["statuses"].get("200", 0),
        "ledger_check": check.stdout.strip() if check.returncode == 0 else check.stdout,
    }
    for result in (earn, redeem, burn, again):
        result.pop("_answers")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rate", type=float, help="requests per second in all (open loop)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="postgresql")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": machine(),
        "params": vars(args),
    }
    for backend in args.backends.split(","):
        report[backend] = bench_one(backend, args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
