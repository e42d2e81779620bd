"""The use cases of the seeds as journeys, on both databases, through the public API,
with real local receivers: a birthday SMS three days before at 10:00 the person's time
(Apprise to a local HTTP server), a welcome drip of three emails (a real SMTP server),
the seed-000 trial strategy (entering a behavioural segment sends an in-app message and
a web push), and the sending rules (frequency caps, quiet hours across a change of
clocks)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.services.inbox import user_token
from tests.conftest import FakeClock
from tests.integration.test_channel_adapters import Browser, vapid  # noqa: F401  (a fixture)
from tests.integration.test_tracking import basic
from tests.receiver import Receiver, receiving
from tests.smtp import SMTPServer


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def apply(client: TestClient, admin: dict[str, str], document: dict[str, Any]) -> None:
    applied = client.post("/api/journeys", json=document, headers=admin)
    assert applied.status_code == 200, applied.text


def send(client: TestClient, write_key: str, *messages: dict[str, Any]) -> None:
    sent = client.post("/v1/batch", json={"batch": list(messages)}, headers=basic(write_key))
    assert sent.status_code == 200, sent.text


def profile_of(client: TestClient, admin: dict[str, str], user: str = "ada") -> str:
    view = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": user}, headers=admin
    )
    assert view.status_code == 200, view.text
    found: str = view.json()["id"]
    return found


def timeline(client: TestClient, admin: dict[str, str], user: str = "ada") -> list[Any]:
    """The person's events, newest first."""
    page = client.get(f"/api/profiles/{profile_of(client, admin, user)}/events", headers=admin)
    events: list[Any] = page.json()["events"]
    return events


def settle(container: Container) -> None:
    for _ in range(20):
        done = container.bus.drain()

        done += container.journey_engine.fire_due()
        if not done:
            return


def at(clock: FakeClock, moment: datetime) -> None:
    clock.now = moment


def email_channel(smtp: SMTPServer) -> dict[str, Any]:
    return {
        "name": "email",
        "type": "email",
        "purpose": "marketing_email",
        "settings": {"host": "127.0.0.1", "port": smtp.port, "from": "Shop <news@shop.test>"},
    }


def person(user: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "traits": traits,
        "context": {
            "consent": {
                "categoryPreferences": {
                    "marketing_email": True,
                    "marketing_sms": True,
                    "marketing_app": True,
                    "marketing_push": True,
                }
            }
        },
        "messageId": f"identify-{user}",
    }


def event(user: str, name: str, n: int = 0, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": name,
        "properties": properties,
        "messageId": f"{user}-{name}-{n}",
    }


def test_a_birthday_sms_goes_three_days_before_at_ten_in_the_persons_time(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    at(clock, datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    sms = receiver.url.replace("http://", "json://") + "/sms/{address}"
    apply(
        client,
        admin_token,
        {
            "channels": [
                {
                    "name": "sms",
                    "type": "apprise",
                    "purpose": "marketing_sms",
                    "address": "traits.phone",
                    "settings": {"url": sms},
                }
            ],
            "templates": [
                {"name": "birthday", "subject": "Happy birthday",
                 "text": "{{ traits.first_name }}, your birthday gift awaits in store."}
            ],
            "journeys": [
                {
                    "id": "birthday",
                    "entry": {"event": "Signed Up"},
                    "steps": [
                        {"delay": {"before": "birthday", "days_before": 3, "at": "10:00"}},
                        {"send": {"channel": "sms", "template": "birthday"}},
                    ],
                }
            ],
        },
    )  # fmt: skip
    send(
        client,
        write_key,
        person("ada", first_name="Ada", phone="+33612345678", birthday="1990-03-12",
               timezone="Europe/Paris"),
        event("ada", "Signed Up"),
    )  # fmt: skip
    settle(container)
    # 12 March less three days, 10:00 in Paris (UTC+1 until the 29th): 09:00 UTC.
    at(clock, datetime(2026, 3, 9, 8, 59, tzinfo=UTC))
    settle(container)
    assert receiver.delivered() == []
    at(clock, datetime(2026, 3, 9, 9, 0, 1, tzinfo=UTC))
    settle(container)
    delivered = receiver.delivered()
    assert len(delivered) == 1
    assert unquote(delivered[0].path) == "/sms/+33612345678"
    assert "Ada, your birthday gift awaits" in delivered[0].json["message"]


def test_a_welcome_drip_sends_three_emails_days_apart_in_order(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    templates = [
        {"name": f"welcome-{n}", "subject": f"Welcome {n}", "text": f"Part {n}"} for n in (1, 2, 3)
    ]
    steps = [
        {"send": {"channel": "email", "template": "welcome-1"}},
        {"delay": {"for": "P1D"}},
        {"send": {"channel": "email", "template": "welcome-2"}},
        {"delay": {"for": "P2D"}},
        {"send": {"channel": "email", "template": "welcome-3"}},
    ]
    apply(
        client,
        admin_token,
        {
            "channels": [email_channel(smtp)],
            "templates": templates,
            "journeys": [{"id": "welcome", "entry": {"event": "Signed Up"}, "steps": steps}],
        },
    )
    send(client, write_key, person("ada", email="ada@example.com"), event("ada", "Signed Up"))
    settle(container)

    def subjects() -> list[str]:
        return [str(m["Subject"]) for m in smtp.mailbox.emails()]

    assert subjects() == ["Welcome 1"]
    clock.advance(hours=23)
    settle(container)
    assert subjects() == ["Welcome 1"]
    clock.advance(hours=1, seconds=1)
    settle(container)
    assert subjects() == ["Welcome 1", "Welcome 2"]
    clock.advance(days=2)
    settle(container)
    clock.advance(days=5)
    settle(container)
    assert subjects() == ["Welcome 1", "Welcome 2", "Welcome 3"]


def test_entering_a_behavioural_segment_sends_its_strategy_in_app_and_by_push(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    receiver: Receiver,
    vapid: dict[str, Any],  # noqa: F811
) -> None:
    # Seed 000: a trial user who tries everything in their first days is put, without
    # being asked, in the segment of explorers, whose strategy is sent in the app and by
    # push.
    segment = {
        "name": "explorers",
        "condition": {"event": "Feature Used", "count": {"gte": 3}, "within": "P3D"},
    }
    assert client.post("/api/segments", json=segment, headers=admin_token).status_code in (200, 201)
    apply(
        client,
        admin_token,
        {
            "channels": [
                {"name": "in-app", "type": "inbox", "purpose": "marketing_app"},
                {"name": "push", "type": "webpush", "purpose": "marketing_push",
                 "settings": vapid},
            ],
            "templates": [
                {"name": "tips", "subject": "Go further", "text": "Three things explorers love",
                 "data": {"url": "https://app.example/tips"}},
            ],
            "journeys": [
                {
                    "id": "explorers-strategy",
                    "entry": {"segment": "explorers"},
                    "steps": [
                        {"send": {"channel": "in-app", "template": "tips"}},
                        {"send": {"channel": "push", "template": "tips"}},
                    ],
                }
            ],
        },
    )  # fmt: skip
    container.inbox.secret = "inbox-s3cret"
    headers = {"X-Ariane-User": "ada", "X-Ariane-User-Token": user_token("inbox-s3cret", "ada")}
    send(client, write_key, person("ada"))
    browser = Browser.subscribe(receiver.url + "/push/ada")
    subscribed = client.post("/v1/push/subscriptions", json=browser.subscription(), headers=headers)
    assert subscribed.status_code == 200, subscribed.text
    send(client, write_key, *(event("ada", "Feature Used", n) for n in range(2)))
    settle(container)
    assert client.get("/v1/inbox", headers=headers).json()["messages"] == []
    send(client, write_key, event("ada", "Feature Used", 3))
    settle(container)
    inbox = client.get("/v1/inbox", headers=headers).json()["messages"]
    assert [(m["subject"], m["data"]) for m in inbox] == [
        ("Go further", {"url": "https://app.example/tips"})
    ]
    pushed = receiver.delivered()
    assert len(pushed) == 1 and pushed[0].path == "/push/ada"
    assert browser.read(pushed[0].body)["title"] == "Go further"
    # The entry reached the journey as it was decided, before the segment's members
    # were brought up to date; doing that now tells the bus nothing twice.
    assert container.segments.catch_up() == 1
    settle(container)
    assert len(client.get("/v1/inbox", headers=headers).json()["messages"]) == 1
    assert len(receiver.delivered()) == 1


def test_frequency_caps_count_in_the_persons_calendar_days(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    # At most one marketing email a calendar day in Ada's zone (New York).
    at(clock, datetime(2026, 3, 2, 14, 0, tzinfo=UTC))  # 09:00 in New York
    apply(
        client,
        admin_token,
        {
            "channels": [email_channel(smtp)],
            "frequency_caps": [{"max": 1, "days": 1, "channel": "email"}],
            "templates": [{"name": "promo", "subject": "Promo", "text": "..."}],
            "journeys": [
                {
                    "id": "promos",
                    "entry": {"event": "Viewed Promo", "key": "properties.promo"},
                    "steps": [{"send": {"channel": "email", "template": "promo"}}],
                }
            ],
        },
    )
    send(
        client,
        write_key,
        person("ada", email="ada@example.com", timezone="America/New_York"),
        event("ada", "Viewed Promo", 1, promo="a"),
        event("ada", "Viewed Promo", 2, promo="b"),
    )
    settle(container)
    assert len(smtp.mailbox.emails()) == 1
    # 23:30 in New York is still the same day there, though the next in UTC.
    at(clock, datetime(2026, 3, 3, 4, 30, tzinfo=UTC))
    send(client, write_key, event("ada", "Viewed Promo", 3, promo="c"))
    settle(container)
    assert len(smtp.mailbox.emails()) == 1
    # After midnight in New York, a new day.
    at(clock, datetime(2026, 3, 3, 5, 30, tzinfo=UTC))
    send(client, write_key, event("ada", "Viewed Promo", 4, promo="d"))
    settle(container)
    assert len(smtp.mailbox.emails()) == 2
    steps = client.get("/api/journeys/promos/steps", headers=admin_token).json()["steps"]
    assert steps[0]["skipped_because"] == {"frequency cap: 1 in 1 days on email": 2}


def test_quiet_hours_defer_to_their_end_in_the_persons_time_across_a_change_of_clocks(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    # Paris moves its clocks forward on the night of 28 to 29 March 2026: a message due at
    # 23:00 on the 28th waits until 08:00 on the 29th, which is 06:00 UTC, not 07:00.
    at(clock, datetime(2026, 3, 28, 22, 0, tzinfo=UTC))  # 23:00 in Paris (UTC+1)
    apply(
        client,
        admin_token,
        {
            "channels": [email_channel(smtp)],
            "templates": [{"name": "news", "subject": "News", "text": "..."}],
            "journeys": [
                {
                    "id": "news",
                    "entry": {"event": "Subscribed"},
                    "quiet_hours": {"start": "21:00", "end": "08:00", "then": "defer"},
                    "steps": [{"send": {"channel": "email", "template": "news"}}],
                }
            ],
        },
    )
    send(
        client,
        write_key,
        person("ada", email="ada@example.com", timezone="Europe/Paris"),
        event("ada", "Subscribed"),
    )
    settle(container)
    at(clock, datetime(2026, 3, 29, 5, 59, tzinfo=UTC))
    settle(container)
    assert smtp.mailbox.emails() == []
    at(clock, datetime(2026, 3, 29, 6, 0, 1, tzinfo=UTC))
    settle(container)
    assert len(smtp.mailbox.emails()) == 1


def test_a_stop_reply_withdraws_the_channels_consent(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
) -> None:
    sms = receiver.url.replace("http://", "json://") + "/sms/{address}"
    channel = {"type": "apprise", "purpose": "marketing_sms", "address": "traits.phone",
               "settings": {"url": sms}}  # fmt: skip
    assert client.put("/api/channels/sms", json=channel, headers=admin_token).status_code == 200
    send(client, write_key, person("ada", phone="+33612345678"))
    inbound = "/api/channels/sms/inbound"
    chatter = client.post(inbound, json={"from": "+33612345678", "text": "thanks!"},
                          headers=admin_token)  # fmt: skip
    assert chatter.json() == {"stop": False, "unsubscribed": []}
    # Any form of the number that normalises to hers, any case of the word.
    stop = client.post(inbound, json={"from": "+33 6 12 34 56 78", "text": " Stop "},
                       headers=admin_token)  # fmt: skip
    assert stop.status_code == 200, stop.text
    [profile_id] = stop.json()["unsubscribed"]
    consents = client.get(f"/api/profiles/{profile_id}/consents", headers=admin_token).json()
    assert consents["current"]["marketing_sms"]["status"] == "withdrawn"
    assert consents["current"]["marketing_email"]["status"] == "granted"
    nobody = client.post(inbound, json={"from": "+33699999999", "text": "STOP"},
                         headers=admin_token)  # fmt: skip
    assert nobody.json() == {"stop": True, "unsubscribed": []}


def test_a_scheduled_journey_enters_its_segments_members_once_per_moment(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    at(clock, datetime(2026, 3, 2, 7, 0, tzinfo=UTC))  # 08:00 in Paris
    segment = {"name": "readers", "condition": {"trait": "newsletter", "op": "eq", "value": True}}
    assert client.post("/api/segments", json=segment, headers=admin_token).status_code == 201
    apply(
        client,
        admin_token,
        {
            "channels": [email_channel(smtp)],
            "timezone": "Europe/Paris",
            "templates": [{"name": "daily", "subject": "Today", "text": "..."}],
            "journeys": [
                {
                    "id": "daily",
                    "entry": {"schedule": {"segment": "readers", "every": "P1D", "at": "09:00"}},
                    "steps": [{"send": {"channel": "email", "template": "daily"}}],
                }
            ],
        },
    )
    send(
        client,
        write_key,
        person("ada", email="ada@example.com", newsletter=True),
        person("bob", email="bob@example.com", newsletter=True),
        person("eve", email="eve@example.com", newsletter=False),
    )
    settle(container)
    assert container.journey_engine.run_schedules() == 0
    at(clock, datetime(2026, 3, 2, 8, 0, 1, tzinfo=UTC))  # 09:00 in Paris
    assert container.journey_engine.run_schedules() == 2
    assert container.journey_engine.run_schedules() == 0
    settle(container)
    assert sorted(str(m["To"]) for m in smtp.mailbox.emails()) == [
        "ada@example.com",
        "bob@example.com",
    ]
    # The next day's moment enters them again; another process repeating it, nobody.
    at(clock, datetime(2026, 3, 3, 8, 0, 1, tzinfo=UTC))
    assert container.journey_engine.run_schedules() == 2
    container.journey_engine._scheduled.clear()
    assert container.journey_engine.run_schedules() == 0
    settle(container)
    assert len(smtp.mailbox.emails()) == 4


def test_a_template_previews_with_the_persons_traits_segments_and_points(
    client: TestClient, admin_token: dict[str, str], write_key: str
) -> None:
    segment = {"name": "vips", "condition": {"trait": "vip", "op": "eq", "value": True}}
    assert client.post("/api/segments", json=segment, headers=admin_token).status_code == 201
    send(client, write_key, person("ada", first_name="Ada", vip=True))
    profile = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "ada"}, headers=admin_token
    ).json()["id"]
    club = {"earn_rules": [{"id": "buy", "event": "Order Completed", "points_per_unit": 1}]}
    assert client.put("/api/loyalty/programmes/club", json=club, headers=admin_token).is_success
    earned = client.post(
        f"/api/loyalty/programmes/club/members/{profile}/earn",
        json={"points": 120},
        headers={**admin_token, "Idempotency-Key": "gift-1"},
    )
    assert earned.status_code == 200, earned.text
    template = {
        "subject": "{{ traits.first_name }}, {{ loyalty.balance }} points",
        "text": "{% if in_segment.vips %}VIP{% endif %} {{ event.properties.sku }}"
        " {{ loyalty.tier | default: 'no tier' }}",
    }
    body = {"template": template, "profile_id": profile, "event": {"properties": {"sku": "A1"}}}
    shown = client.post("/api/templates/preview", json=body, headers=admin_token)
    assert shown.status_code == 200, shown.text
    assert shown.json()["subject"] == "Ada, 120 points"
    assert shown.json()["text"] == "VIP A1 no tier"
    # A template that does not parse is refused naming where.
    broken = {**body, "template": {"subject": "Hi", "text": "line one\n{% if %}"}}
    refused = client.post("/api/templates/preview", json=broken, headers=admin_token)
    assert refused.status_code == 422
    assert refused.json()["field"] == "template.text"
    assert "line 2" in refused.json()["message"]


def test_the_holdout_meets_quiet_hours_and_caps_as_the_treated_do(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    at(clock, datetime(2026, 3, 2, 22, 0, tzinfo=UTC))  # 23:00 in Paris
    apply(
        client,
        admin_token,
        {
            "channels": [email_channel(smtp)],
            "frequency_caps": [{"max": 1, "days": 1}],
            "templates": [{"name": "promo", "subject": "Promo", "text": "..."}],
            "journeys": [
                {
                    "id": "held",
                    "entry": {"event": "Viewed Promo", "key": "properties.promo"},
                    "holdout": 0.999,
                    "quiet_hours": {"start": "21:00", "end": "08:00"},
                    "steps": [{"send": {"channel": "email", "template": "promo"}}],
                }
            ],
        },
    )
    send(
        client,
        write_key,
        person("ada", email="ada@example.com", timezone="Europe/Paris"),
        event("ada", "Viewed Promo", 1, promo="a"),
        event("ada", "Viewed Promo", 2, promo="b"),
    )
    settle(container)
    steps = client.get("/api/journeys/held/steps", headers=admin_token).json()
    assert steps["arms"] == {"holdout": {"entered": 2, "converted": 0, "revenue": 0.0}}
    assert client.get("/api/journeys/held/messages", headers=admin_token).json()["messages"] == []
    # At 08:00 in Paris the first would have been sent; the cap would have stopped the other.
    at(clock, datetime(2026, 3, 3, 7, 0, 1, tzinfo=UTC))
    settle(container)
    found = client.get("/api/journeys/held/messages", headers=admin_token).json()["messages"]
    assert sorted((m["status"], m["reason"]) for m in found) == [
        ("held", None),
        ("skipped", "frequency cap: 1 in 1 days"),
    ]
    held = next(m for m in found if m["status"] == "held")
    assert held["created_at"].startswith("2026-03-03T07:00:01")
    assert smtp.mailbox.emails() == []


def test_the_global_control_group_is_sent_transactional_messages_only(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    smtp: SMTPServer,
) -> None:
    # Nearly everyone in the global control group, and no marketing email allowed at all:
    # the receipt, transactional, goes anyway; the newsletter, which the cap would have
    # stopped for a treated person too, is recorded skipped rather than held.
    apply(
        client,
        admin_token,
        {
            "channels": [email_channel(smtp)],
            "global_control": 0.999,
            "frequency_caps": [{"max": 0, "days": 1}],
            "templates": [
                {"name": "receipt", "subject": "Receipt", "text": "..."},
                {"name": "news", "subject": "News", "text": "..."},
            ],
            "journeys": [
                {
                    "id": "after-order",
                    "entry": {"event": "Order Completed"},
                    "steps": [
                        {"send": {"channel": "email", "template": "receipt",
                                  "category": "transactional"}},
                        {"send": {"channel": "email", "template": "news"}},
                    ],
                }
            ],
        },
    )  # fmt: skip
    send(client, write_key, person("ada", email="ada@example.com"), event("ada", "Order Completed"))
    settle(container)
    assert [str(m["Subject"]) for m in smtp.mailbox.emails()] == ["Receipt"]
    found = client.get("/api/journeys/after-order/messages", headers=admin_token).json()
    assert [(m["template"], m["arm"], m["status"]) for m in found["messages"]] == [
        ("receipt", "control", "sent"),
        ("news", "control", "skipped"),
    ]
