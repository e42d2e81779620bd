"""A webhook destination of a real server, against a real receiver that fails, throttles
and recovers, through a `kill -9` of the server in the middle of its deliveries: every
event is delivered, none lost, each delivery id received at most twice, and a message
sent twice carries the same id both times."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.conftest import Server, ariane, last_line
from tests.receiver import receiving

pytestmark = pytest.mark.slow

EVENTS = 150


def test_deliveries_survive_failures_throttling_and_a_kill(db_url: str, tmp_path: Path) -> None:
    ariane(db_url, "migrate")
    write_key = last_line(ariane(db_url, "sources", "create", "shop"))
    with receiving() as receiver:
        receiver.delay = 0.01
        receiver.script.extend(
            [
                (500, {}, b"down"),
                (503, {"Retry-After": "0"}, b"busy"),
                (429, {"Retry-After": "1"}, b"slow down"),
                (502, {}, b"bad gateway"),
            ]
        )
        definition = tmp_path / "destinations.json"
        definition.write_bytes(
            orjson.dumps(
                {
                    "destinations": [
                        {
                            "id": "crm",
                            "type": "webhook",
                            "receives": {"events": {"types": ["track"]}},
                            "settings": {"url": f"{receiver.url}/hook", "secret": "s"},
                            "start": "beginning",
                        }
                    ]
                }
            )
        )
        assert "created\tcrm" in ariane(db_url, "destinations", "apply", str(definition)).stdout
        server = Server(db_url, tmp_path / "server.log", workers=2)
        server.start()
        try:
            batch = [
                {"type": "track", "userId": f"u{n % 7}", "event": "Tick", "messageId": f"t-{n}"}
                for n in range(EVENTS)
            ]
            for start in range(0, EVENTS, 50):
                sent = httpx.post(
                    f"{server.url}/v1/batch",
                    json={"batch": batch[start : start + 50]},
                    auth=(write_key, ""),
                    timeout=30,
                )
                assert sent.status_code == 200, sent.text
            deadline = time.monotonic() + 60
            while len(receiver.delivered()) < 20:
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.005)
            server.kill()
            assert len({r.json["messageId"] for r in receiver.delivered()}) < EVENTS, (
                "the kill did not land mid-delivery"
            )
            server.start()
            while len({r.json["messageId"] for r in receiver.delivered()}) < EVENTS:
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.05)
        finally:
            server.stop()
        delivered = receiver.delivered()
        assert {r.json["messageId"] for r in delivered} == {f"t-{n}" for n in range(EVENTS)}
        # In order, each person's events as they were sent (duplicates aside).
        firsts: dict[str, int] = {}
        for request in delivered:
            firsts.setdefault(request.json["messageId"], len(firsts))
        assert sorted(firsts, key=firsts.__getitem__) == [f"t-{n}" for n in range(EVENTS)]
        ids = Counter(r.headers["idempotency-key"] for r in delivered)
        assert max(ids.values()) <= 2
        keys: dict[str, set[str]] = {}
        for request in receiver.received:
            keys.setdefault(request.json["messageId"], set()).add(
                request.headers["idempotency-key"]
            )
        assert all(len(found) == 1 for found in keys.values())
        assert Counter(r.headers["x-answered"] for r in receiver.received)["429"] == 1
