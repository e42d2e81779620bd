"""`ariane serve --workers N`: each worker listens on a socket of its own, so that
connections kept open spread over the workers instead of piling on the first to accept."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ariane.loops import LOOP_NICENESS
from ariane.web.app import GC_THRESHOLDS
from tests.e2e.conftest import ARIANE, Server, ariane, ariane_env, free_port, last_line
from tests.receiver import receiving

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only"
)


def sockets(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets on local `port` in `state` (0A listening, 01 established)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                    found.add(int(fields[9]))
    return found


def holders(inodes: set[int]) -> dict[int, int]:
    """For each process holding some of `inodes`, how many."""
    held: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue  # gone, or not ours
        mine = sum(1 for link in links if link.startswith("socket:[") and int(link[8:-1]) in inodes)
        if mine:
            held[int(pid)] = mine
    return held


def serve_with_two_workers(db_url: str, port: int) -> subprocess.CompletedProcess[str]:
    """`ariane serve --workers 2` on 127.0.0.1:`port`, expected to stop by itself."""
    return subprocess.run(
        [ARIANE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=ariane_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_connections_kept_open_spread_over_the_workers(db_url: str, tmp_path: Path) -> None:
    ariane(db_url, "migrate")
    server = Server(db_url, tmp_path / "server.log", workers=2)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while len(sockets(server.port, "0A")) < 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
        listeners = holders(sockets(server.port, "0A"))
        # Two workers, one listener each; the supervisor listens on nothing.
        assert sorted(listeners.values()) == [1, 1]
        assert server.process is not None and server.process.pid not in listeners

        clients = []
        for _ in range(32):
            client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            client.request("GET", "/health")
            response = client.getresponse()
            response.read()
            assert response.status == 200
            clients.append(client)
        # By a hash of their addresses: with one shared socket, the worker that wins the
        # race to accept may take all 32. Both get none with odds of 2 in 2**32.
        accepted = holders(sockets(server.port, "01"))
        assert set(accepted) == set(listeners)
        assert sum(accepted.values()) == 32
        for client in clients:
            client.close()
    finally:
        server.stop()


def test_a_taken_address_is_refused_plainly(db_url: str) -> None:
    ariane(db_url, "migrate")
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = serve_with_two_workers(db_url, port)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Address already in use" in done.stderr


def test_a_second_server_on_the_same_address_is_refused(db_url: str, tmp_path: Path) -> None:
    """SO_REUSEPORT lets a second server of the same user bind beside the first, and the
    two would share the connections: the second is refused instead."""
    ariane(db_url, "migrate")
    first = Server(db_url, tmp_path / "first.log", workers=2)
    first.start()
    try:
        done = serve_with_two_workers(db_url, first.port)
        assert done.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.port}" in done.stderr
        assert "another server is listening there" in done.stderr
    finally:
        first.stop()


def test_a_worker_freezes_what_start_up_built_and_collects_less_often(db_url: str) -> None:
    """A worker's app, once started: the objects of start-up out of the collector's sight,
    and young collections every `GC_THRESHOLDS[0]` allocations rather than 700."""
    ariane(db_url, "migrate")
    started = (
        "import asyncio, gc\n"
        "from ariane.web.asgi import app_factory\n"
        "app = app_factory()\n"
        "async def main():\n"
        "    before = gc.get_threshold()[0]\n"
        "    async with app.router.lifespan_context(app):\n"
        "        print(before, gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", started],
        env=ariane_env(db_url, ARIANE_SEGMENT_TIMER_INTERVAL="0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The young generation's threshold: Python's default (700 up to 3.13), then ours.
    before, after, frozen = done.stdout.split("\n")[-2].split()
    assert int(before) < GC_THRESHOLDS[0]
    assert (int(after), frozen) == (GC_THRESHOLDS[0], "True")


def environment(pid: int) -> dict[str, str]:
    """What process `pid` was started with."""
    with open(f"/proc/{pid}/environ", "rb") as raw:
        pairs = [item.split(b"=", 1) for item in raw.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def niceness(pid: int) -> dict[int, int]:
    """The CPU niceness of each thread of process `pid`, by thread id."""
    found = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as stat:
            # Field 19 of proc(5), counting from the state after the command's name.
            found[int(task)] = int(stat.read().rsplit(")", 1)[1].split()[16])
    return found


def test_with_several_workers_the_loops_run_in_the_supervisor(db_url: str, tmp_path: Path) -> None:
    """The background work runs once, in the supervisor, at a lower CPU priority: the
    workers are started with it off, and a movement's event still reaches the member's
    timeline."""
    ariane(db_url, "migrate")
    write_key = last_line(ariane(db_url, "sources", "create", "till"))
    token = last_line(ariane(db_url, "tokens", "create", "--role", "admin"))
    server = Server(db_url, tmp_path / "server.log", workers=2)
    server.start()
    try:
        assert server.process is not None
        deadline = time.monotonic() + 30
        while len(workers := holders(sockets(server.port, "0A"))) < 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
        for pid in workers:
            assert environment(pid).get("ARIANE_RUN_LOOPS") == "false"
        assert "ARIANE_RUN_LOOPS" not in environment(server.process.pid)
        # The background threads give way to the workers; the supervisor's own thread
        # and the workers keep the priority they were started with.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        lowered = min(19, ours + LOOP_NICENESS)
        supervisor = server.process.pid
        # The bus's dispatcher and the jobs' runner, and the threads they start (one per
        # handler and per job, which inherit their priority).
        while sorted(niceness(supervisor).values()).count(lowered) < 8:
            assert time.monotonic() < deadline, niceness(supervisor)
            time.sleep(0.05)
        assert niceness(supervisor)[supervisor] == ours
        for pid in workers:
            assert set(niceness(pid).values()) == {ours}

        admin = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        with admin:
            admin.put("/api/loyalty/programmes/club", json={"name": "Club"}).raise_for_status()
            httpx.post(
                f"{server.url}/v1/identify",
                json={"userId": "ada", "messageId": "m-1"},
                auth=(write_key, ""),
            ).raise_for_status()
            profile = admin.get("/api/profiles/lookup", params={"type": "user_id", "value": "ada"})
            member = profile.json()["id"]
            admin.post(
                f"/api/loyalty/programmes/club/members/{member}/earn",
                json={"points": 120},
                headers={"Idempotency-Key": "sale-1"},
            ).raise_for_status()
            deadline = time.monotonic() + 20
            while True:
                timeline = admin.get(f"/api/profiles/{member}/events").json()["events"]
                if "Points Earned" in [event.get("event") for event in timeline]:
                    break
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.1)
    finally:
        server.stop()


def test_workers_end_when_their_supervisor_is_killed(db_url: str, tmp_path: Path) -> None:
    """A `kill -9` of `ariane serve` takes its workers with it: left running, their own
    listeners would go on taking connections beside the server started after it."""
    ariane(db_url, "migrate")
    server = Server(db_url, tmp_path / "server.log", workers=2)
    server.start()
    deadline = time.monotonic() + 30
    while len(workers := holders(sockets(server.port, "0A"))) < 2:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    server.kill()
    while any(os.path.exists(f"/proc/{pid}") and not zombie(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {sorted(workers)} outlived the kill"
        time.sleep(0.05)
    assert sockets(server.port, "0A") == set()
    server.start()
    server.stop()


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def bus_processes(supervisor: int) -> dict[int, str]:
    """The supervisor's children named `ariane-bus-N`, by pid (zombies aside)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, parent = text.rsplit(")", 1)[1].split()[:2]
        if int(parent) == supervisor and name.startswith("ariane-bus-") and state != "Z":
            found[int(pid)] = name
    return found


def test_the_channels_hand_over_from_a_bus_process_started_again_when_it_dies(
    db_url: str, tmp_path: Path
) -> None:
    """With several workers, a channel's messages are handed over by a bus process of
    its own beside the supervisor (`bus_processes`); killed, it is started again and
    the messages made due meanwhile go out; it ends with its supervisor."""
    ariane(db_url, "migrate")
    write_key = last_line(ariane(db_url, "sources", "create", "app"))
    token = last_line(ariane(db_url, "tokens", "create", "--role", "admin"))
    server = Server(db_url, tmp_path / "server.log", workers=2)
    with receiving() as receiver:
        server.start()
        try:
            assert server.process is not None
            supervisor = server.process.pid
            deadline = time.monotonic() + 30
            while len(found := bus_processes(supervisor)) < 1:
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.05)
            assert list(found.values()) == ["ariane-bus-1"]
            first = next(iter(found))
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            ) as admin:
                admin.post("/api/journeys", json=pinged(receiver.url)).raise_for_status()

                def ping(user: str) -> None:
                    httpx.post(
                        f"{server.url}/v1/track",
                        json={"userId": user, "event": "Ping", "messageId": f"ping-{user}"},
                        auth=(write_key, ""),
                    ).raise_for_status()

                def arrived(user: str) -> None:
                    deadline = time.monotonic() + 20
                    while user not in {r.json["address"] for r in receiver.delivered()}:
                        assert time.monotonic() < deadline, server.log.read_text()
                        time.sleep(0.05)

                ping("ada")
                arrived("ada")
                os.kill(first, signal.SIGKILL)
                ping("grace")
                while not (again := bus_processes(supervisor)) or first in again:
                    assert time.monotonic() < deadline + 20, server.log.read_text()
                    time.sleep(0.05)
                arrived("grace")
                assert "bus process 1 ended" in server.log.read_text()
            server.kill()
            deadline = time.monotonic() + 20
            while any(os.path.exists(f"/proc/{pid}") and not zombie(pid) for pid in again):
                assert time.monotonic() < deadline, f"bus process {again} outlived the kill"
                time.sleep(0.05)
        finally:
            server.stop()


def pinged(receiver_url: str) -> dict[str, object]:
    """A journey that sends a webhook to whoever tracks `Ping`."""
    return {
        "channels": [
            {
                "name": "hook",
                "type": "webhook",
                "address": "user_id",
                "settings": {"url": f"{receiver_url}/messages", "secret": "s"},
            }
        ],
        "templates": [{"name": "pong", "subject": "Pong", "text": "{{ profile.id }}"}],
        "journeys": [
            {
                "id": "pong",
                "entry": {"event": "Ping"},
                "steps": [
                    {"send": {"channel": "hook", "template": "pong", "category": "transactional"}}
                ],
            }
        ],
    }
