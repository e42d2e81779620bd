"""A campaign to a thousand people, over a real SMTP server (aiosmtpd) and a real HTTP
receiver, through servers killed with SIGKILL at random moments while they send: once
restarted, everybody gets their email and their webhook, and a message handed over twice
carries the same key both times (the email's Message-ID, the webhook's Idempotency-Key),
so that the provider drops the second."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.e2e.conftest import Server, ariane, last_line
from tests.receiver import Receiver, receiving
from tests.smtp import Mailbox, free_port

pytestmark = pytest.mark.slow

PEOPLE = 1000
PER_BATCH = 50  # people a batch: an identify and a track each
KILLS = 3
SEED = 21
DEADLINE = 90.0  # seconds for each stage: the kills, then the rest of the campaign


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, timeout=1)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def campaign(smtp_port: int, receiver_url: str) -> dict[str, Any]:
    return {
        "channels": [
            {
                "name": "email",
                "type": "email",
                "purpose": "marketing_email",
                "address": "traits.email",
                "settings": {
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "from": "Shop <news@shop.test>",
                },
            },
            {
                "name": "hook",
                "type": "webhook",
                "purpose": "marketing_hook",
                "address": "user_id",
                "settings": {"url": f"{receiver_url}/messages", "secret": "s"},
            },
        ],
        "templates": [
            {
                "name": "launch-email",
                "subject": "{{ traits.first_name | default: 'Hello' }}, we launched",
                "text": "Campaign {{ event.properties.campaign }} is on.",
            },
            {"name": "launch-hook", "subject": "Launch", "text": "{{ profile.id }}"},
        ],
        "journeys": [
            {
                "id": "launch",
                "entry": {"event": "Campaign Started"},
                "steps": [
                    {
                        "id": "email",
                        "send": {
                            "channel": "email",
                            "template": "launch-email",
                            "category": "marketing",
                        },
                    },
                    {
                        "id": "hook",
                        "send": {
                            "channel": "hook",
                            "template": "launch-hook",
                            "category": "marketing",
                        },
                    },
                ],
            }
        ],
    }


def person(n: int) -> list[dict[str, Any]]:
    consent = {"categoryPreferences": {"marketing_email": True, "marketing_hook": True}}
    return [
        {
            "type": "identify",
            "userId": f"p{n}",
            "traits": {"email": f"p{n}@crash.test", "first_name": f"P{n}"},
            "context": {"consent": consent},
            "messageId": f"identify-{n}",
        },
        {
            "type": "track",
            "userId": f"p{n}",
            "event": "Campaign Started",
            "properties": {"campaign": "launch"},
            "messageId": f"campaign-{n}",
        },
    ]


def send_everyone(url: str, write_key: str, acknowledged: list[int], stop: threading.Event) -> None:
    """Every batch until it is acknowledged, through the kills: the same message ids
    each time, which the server stores once."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for start in range(0, PEOPLE, PER_BATCH):
            batch = [event for n in range(start, start + PER_BATCH) for event in person(n)]
            while not stop.is_set():
                try:
                    answer = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
                    if answer.status_code == 200:
                        acknowledged.append(start)
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)


def emails_by_person(mailbox: Mailbox) -> dict[str, list[str]]:
    """Each address, and the Message-IDs of every email it was handed."""
    found: dict[str, list[str]] = {}
    for email in mailbox.emails():
        found.setdefault(str(email["To"]), []).append(str(email["Message-ID"]))
    return found


def hooks_by_person(receiver: Receiver) -> dict[str, list[str]]:
    """Each user id, and the Idempotency-Keys of every webhook it was handed."""
    found: dict[str, list[str]] = {}
    for request in receiver.delivered():
        assert request.headers["idempotency-key"] == request.headers["x-ariane-send-key"]
        found.setdefault(request.json["address"], []).append(request.headers["idempotency-key"])
    return found


def distinct(by_person: dict[str, list[str]]) -> int:
    return len({key for keys in by_person.values() for key in keys})


def messages_by_status(admin: httpx.Client) -> dict[str, dict[str, int]]:
    """Per send step of the journey, its messages by status."""
    answer = admin.get("/api/journeys/launch/steps")
    assert answer.status_code == 200, answer.text
    return {step["id"]: step["messages"] for step in answer.json()["steps"]}


def finished(mailbox: Mailbox, receiver: Receiver, admin: httpx.Client) -> bool:
    """Every message handed over and recorded `sent`. Counted before the emails are
    parsed: parsing holds the interpreter the SMTP server and the receiver need."""
    if len(mailbox.received) < PEOPLE or len(receiver.received) < PEOPLE:
        return False
    if distinct(emails_by_person(mailbox)) < PEOPLE or distinct(hooks_by_person(receiver)) < PEOPLE:
        return False
    return messages_by_status(admin) == {"email": {"sent": PEOPLE}, "hook": {"sent": PEOPLE}}


# One worker runs the bus in its own process; two run it in the supervisor and hand
# messages over from a bus process beside it, which dies with the supervisor.
@pytest.mark.parametrize("workers", [1, 2])
def test_a_campaign_killed_three_times_reaches_everyone_once_per_key(
    db_url: str, tmp_path: Path, workers: int
) -> None:
    rng = random.Random(SEED)
    ariane(db_url, "migrate")
    write_key = last_line(ariane(db_url, "sources", "create", "shop"))
    token = last_line(ariane(db_url, "tokens", "create", "--role", "admin"))
    server = Server(
        db_url, tmp_path / "server.log", workers, env={"ARIANE_BUS_IDLE_INTERVAL": "0.2"}
    )
    acknowledged: list[int] = []
    stop = threading.Event()
    with smtp_server() as (mailbox, smtp_port), receiving() as receiver:
        server.start()
        admin = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        sender = threading.Thread(
            target=send_everyone, args=(server.url, write_key, acknowledged, stop)
        )
        try:
            declared = admin.post("/api/journeys", json=campaign(smtp_port, receiver.url))
            assert declared.status_code == 200, declared.text
            began = time.monotonic()
            deadline = began + DEADLINE
            sender.start()
            # What had been handed over when each kill landed: (emails, webhooks).
            at_kills: list[tuple[int, int]] = []
            for _ in range(KILLS):
                # Each kill lands while messages flow: some were handed over since the
                # last restart, and the next comes at a random moment after.
                handed = sum(at_kills[-1]) if at_kills else 0
                while len(mailbox.received) + len(receiver.received) <= handed:
                    assert time.monotonic() < deadline, server.log.read_text()
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.05, 0.6))
                server.kill()
                at_kills.append((len(mailbox.received), len(receiver.received)))
                server.start()
            assert all(sum(handed) < 2 * PEOPLE for handed in at_kills), (
                f"a kill landed after the campaign was over: {at_kills}"
            )
            deadline = time.monotonic() + DEADLINE
            while not finished(mailbox, receiver, admin):
                assert time.monotonic() < deadline, (
                    f"not over {DEADLINE}s after the last restart: "
                    f"{len(acknowledged)} batches acknowledged, {len(mailbox.received)} emails, "
                    f"{len(receiver.received)} webhooks, messages {messages_by_status(admin)}, "
                    f"kills at {at_kills}"
                )
                time.sleep(0.25)
            took = time.monotonic() - began
            # None `unknown`: both channels carry the key, so an interrupted hand-over is
            # handed again; none left `queued` or `sending`.
            statuses = messages_by_status(admin)
        finally:
            stop.set()
            if sender.is_alive():
                sender.join(timeout=30)
            admin.close()
            server.stop()

    emails = emails_by_person(mailbox)
    hooks = hooks_by_person(receiver)
    everyone = range(PEOPLE)
    figures = (
        f"kills at (emails, webhooks) handed over {at_kills}; "
        f"{len(mailbox.received)} emails for {distinct(emails)} Message-IDs, "
        f"{len(receiver.delivered())} webhooks for {distinct(hooks)} Idempotency-Keys "
        f"(handed over again with the same key: {len(mailbox.received) - distinct(emails)} "
        f"emails, {len(receiver.delivered()) - distinct(hooks)} webhooks), in {took:.1f}s"
    )
    # Nobody due a message missed it, and nobody else got one.
    assert set(emails) == {f"p{n}@crash.test" for n in everyone}, figures
    assert set(hooks) == {f"p{n}" for n in everyone}, figures
    # A message handed over twice carried the same key both times: one key a person.
    twice_apart = {who: keys for who, keys in {**emails, **hooks}.items() if len(set(keys)) > 1}
    assert twice_apart == {}, figures
    assert distinct(emails) == distinct(hooks) == PEOPLE, figures
    assert statuses == {"email": {"sent": PEOPLE}, "hook": {"sent": PEOPLE}}, figures
