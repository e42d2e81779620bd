"""A server killed with SIGKILL mid-stream loses no acknowledged event and, once the
client has re-sent everything (at-least-once), holds every event exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import Server, ariane, last_line

pytestmark = pytest.mark.slow

BATCHES = 200
PER_BATCH = 40
USERS = 12
SENDERS = 4
KILL_AFTER_ACKS = 20


def make_batches() -> list[list[dict[str, object]]]:
    return [
        [
            {
                "type": "track",
                "userId": f"crash-{(b * PER_BATCH + i) % USERS}",
                "event": "Tick",
                "messageId": f"tick-{b}-{i}",
                "properties": {"batch": b, "item": i},
            }
            for i in range(PER_BATCH)
        ]
        for b in range(BATCHES)
    ]


def send(client: httpx.Client, write_key: str, batch: list[dict[str, object]]) -> bool:
    try:
        response = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    except httpx.TransportError:
        return False
    return response.status_code == 200


def stored_message_ids(db_url: str) -> Counter[str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, COUNT(*) FROM events GROUP BY 1"))
            return Counter({message_id: count for message_id, count in rows})
    finally:
        engine.dispose()


def test_sigkill_mid_stream_then_resend_everything(server: Server, admin: httpx.Client) -> None:
    write_key = last_line(ariane(server.db_url, "sources", "create", "crashy"))
    batches = make_batches()
    acked: set[int] = set()
    lock = threading.Lock()

    def sender(offset: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for number in range(offset, BATCHES, SENDERS):
                if send(client, write_key, batches[number]):
                    with lock:
                        acked.add(number)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline:
        time.sleep(0.002)
    server.kill()
    for thread in threads:
        thread.join(timeout=60)
    assert KILL_AFTER_ACKS <= len(acked) < BATCHES, "the kill did not land mid-stream"

    # Every event acknowledged before the crash was committed.
    after_crash = stored_message_ids(server.db_url)
    acked_ids = {e["messageId"] for n in acked for e in batches[n]}
    assert acked_ids <= set(after_crash)

    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for batch in batches:
            for _ in range(50):
                if send(client, write_key, batch):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the restarted server kept refusing a batch")

    every_id = {e["messageId"] for batch in batches for e in batch}
    stored = stored_message_ids(server.db_url)
    assert set(stored) == every_id

    # Profiles were updated in the same transactions: re-sent events counted once.
    for n in range(USERS):
        profile = admin.get(
            "/api/profiles/lookup", params={"type": "user_id", "value": f"crash-{n}"}
        ).json()
        expected = sum(1 for batch in batches for e in batch if e["userId"] == f"crash-{n}")
        assert profile["computed"]["event_counts"] == {"Tick": expected}
