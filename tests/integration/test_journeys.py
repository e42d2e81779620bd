"""Journeys on both databases, declared and driven through the public API, sending over a
real SMTP server (aiosmtpd) on localhost: the abandoned cart, consent checked at the
moment of sending, one message per send key, the holdout held back, quiet hours."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container, build
from ariane.channels import Message
from ariane.services.inbox import user_token
from ariane.settings import Settings
from ariane.storage.tables import enrollments
from tests.conftest import FakeClock
from tests.integration.test_journey_use_cases import profile_of, timeline
from tests.integration.test_tracking import basic
from tests.smtp import SMTPServer


def setup(
    client: TestClient, admin: dict[str, str], smtp: SMTPServer, **journey: Any
) -> dict[str, Any]:
    document = {
        "channels": [
            {
                "name": "email",
                "type": "email",
                "purpose": "marketing_email",
                "address": "traits.email",
                "settings": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "from": "Shop <news@shop.test>",
                },
            }
        ],
        "templates": [
            {
                "name": "cart-reminder",
                "subject": "{{ traits.first_name | default: 'Hello' }}, your cart is waiting",
                "text": "Cart {{ event.properties.cartId }} is still there.",
                "html": "<p>Cart {{ event.properties.cartId }}</p>",
            }
        ],
        "journeys": [
            {
                "id": "abandoned-cart",
                "entry": {"event": "Cart Abandoned", "key": "properties.cartId"},
                "reentry": "always",
                "exit": [{"event": "Order Completed", "keyed": True}],
                "goal": {"event": "Order Completed", "within": "P7D"},
                "steps": [
                    {
                        "id": "wait-order",
                        "wait": {"event": "Order Completed", "keyed": True, "timeout": "PT1H"},
                        "on_event": "exit",
                    },
                    {
                        "id": "reminder",
                        "send": {"channel": "email", "template": "cart-reminder"},
                    },
                ],
                **journey,
            }
        ],
    }
    applied = client.post("/api/journeys", json=document, headers=admin)
    assert applied.status_code == 200, applied.text
    body: dict[str, Any] = applied.json()
    return body


def send(client: TestClient, write_key: str, *messages: dict[str, Any]) -> None:
    sent = client.post("/v1/batch", json={"batch": list(messages)}, headers=basic(write_key))
    assert sent.status_code == 200, sent.text


def ada(consent: bool = True, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": "ada",
        "traits": {"email": "ada@example.com", "first_name": "Ada", **traits},
        "context": {"consent": {"categoryPreferences": {"marketing_email": consent}}},
        "messageId": f"identify-{consent}",
    }


def cart(event: str, cart_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "ada",
        "event": event,
        "properties": {"cartId": cart_id, **properties},
        "messageId": f"{event}-{cart_id}",
    }


def settle(container: Container) -> None:
    """What the server's loops do: the bus's handlers, then the timers, until quiet."""
    for _ in range(20):
        done = container.bus.drain()
        done += container.journey_engine.fire_due()
        if not done:
            return


def test_an_abandoned_cart_is_reminded_once_unless_its_order_comes(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    setup(client, admin_token, smtp)
    send(client, write_key, ada(), cart("Cart Abandoned", "c1"), cart("Cart Abandoned", "c2"))
    settle(container)
    clock.advance(minutes=30)
    # The order of cart c1 ends its wait: it gets no reminder; c2's order never comes.
    send(client, write_key, cart("Order Completed", "c1", revenue=42.0))
    settle(container)
    assert smtp.mailbox.emails() == []
    clock.advance(minutes=31)
    settle(container)
    emails = smtp.mailbox.emails()
    assert len(emails) == 1
    reminder = emails[0]
    assert reminder["To"] == "ada@example.com"
    assert reminder["Subject"] == "Ada, your cart is waiting"
    text = reminder.get_body(("plain",))
    assert text is not None and "Cart c2 is still there." in text.get_content()
    assert reminder["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/v1/unsubscribe?t=" in reminder["List-Unsubscribe"]
    # Time passing and the bus running again send nothing more.
    clock.advance(hours=5)
    settle(container)
    assert len(smtp.mailbox.emails()) == 1

    steps = client.get("/api/journeys/abandoned-cart/steps", headers=admin_token).json()
    by_id = {step["id"]: step for step in steps["steps"]}
    assert by_id["wait-order"]["exited"] == 1  # the order of c1: the keyed exit
    assert by_id["wait-order"]["timed_out"] == 1  # c2
    assert by_id["reminder"]["messages"] == {"sent": 1}
    assert steps["arms"]["treated"]["entered"] == 2
    # The order converts the enrollment of its own cart, once.
    assert steps["arms"]["treated"]["converted"] == 1
    assert steps["arms"]["treated"]["revenue"] == 42.0

    # What became of the message is on Ada's timeline, where segments can count it.
    names = [event.get("event") for event in timeline(client, admin_token)]
    assert names.count("Message Sent") == 1


def test_marketing_without_consent_at_the_moment_of_sending_is_skipped(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    setup(client, admin_token, smtp)
    send(client, write_key, ada(consent=True), cart("Cart Abandoned", "c1"))
    settle(container)
    # Consent withdrawn while Ada waits: checked when the message goes, not at entry.
    clock.advance(minutes=10)
    send(client, write_key, {**ada(consent=False), "messageId": "withdrawn"})
    clock.advance(hours=1)
    settle(container)
    assert smtp.mailbox.emails() == []
    steps = client.get("/api/journeys/abandoned-cart/steps", headers=admin_token).json()
    reminder = {step["id"]: step for step in steps["steps"]}["reminder"]
    assert reminder["messages"] == {"skipped": 1}


def test_the_holdout_is_recorded_but_never_sent(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    # Nearly everyone is held out: 40 carts of 40 people, one in twenty treated.
    setup(client, admin_token, smtp, holdout=0.95)
    people = []
    for n in range(40):
        people.append({**ada(), "userId": f"p{n}", "messageId": f"i{n}"})
        people[-1]["traits"] = {**people[-1]["traits"], "email": f"p{n}@example.com"}
        people.append({**cart("Cart Abandoned", f"c{n}"), "userId": f"p{n}"})
    send(client, write_key, *people)
    settle(container)
    clock.advance(hours=2)
    settle(container)
    steps = client.get("/api/journeys/abandoned-cart/steps", headers=admin_token).json()
    arms = steps["arms"]
    held = arms["holdout"]["entered"]
    treated = arms.get("treated", {"entered": 0})["entered"]
    assert held + treated == 40 and held > 30
    messages = {step["id"]: step for step in steps["steps"]}["reminder"]["messages"]
    assert messages.get("held") == held
    assert len(smtp.mailbox.emails()) == treated == messages.get("sent", 0)


def test_a_journey_that_names_no_such_template_is_refused_with_its_path(
    client: TestClient, admin_token: dict[str, str], smtp: SMTPServer
) -> None:
    setup(client, admin_token, smtp)
    broken = {
        "journeys": [
            {
                "id": "broken",
                "entry": {"event": "Signed Up"},
                "steps": [{"send": {"channel": "email", "template": "nope"}}],
            }
        ]
    }
    refused = client.post("/api/journeys", json=broken, headers=admin_token)
    assert refused.status_code == 422
    assert refused.json()["field"] == "journeys[0].steps[0].send.template"


def test_a_merge_moves_a_visitors_cart_to_the_person_and_sends_a_shared_cart_once(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    setup(client, admin_token, smtp)
    # On another device, before logging in, Ada is an anonymous visitor: she leaves cart
    # c1 there too (a shared cart), and cart c2 only there.
    visitor = [
        {**cart("Cart Abandoned", cart_id), "userId": None, "anonymousId": "anon-1",
         "messageId": f"anon-{cart_id}"}
        for cart_id in ("c1", "c2")
    ]  # fmt: skip
    send(client, write_key, ada(), cart("Cart Abandoned", "c1"), *visitor)
    settle(container)
    before = client.get("/api/journeys/abandoned-cart/steps", headers=admin_token).json()
    assert {s["id"]: s["waiting"] for s in before["steps"]}["wait-order"] == 3
    # She logs in there: the visitor's profile is merged into hers.
    login = {"type": "identify", "userId": "ada", "anonymousId": "anon-1", "messageId": "in"}
    send(client, write_key, login)
    settle(container)
    clock.advance(hours=1, seconds=1)
    settle(container)
    # One reminder a cart, both to her address: the visitor's c2 is hers now, and of the
    # two enrollments in c1 hers goes on, the visitor's ends.
    emails = smtp.mailbox.emails()
    assert sorted(e["To"] for e in emails) == ["ada@example.com"] * 2
    carts = sorted(
        text.get_content().strip() for e in emails if (text := e.get_body(("plain",))) is not None
    )
    assert carts == ["Cart c1 is still there.", "Cart c2 is still there."]
    steps = client.get("/api/journeys/abandoned-cart/steps", headers=admin_token).json()
    wait = {s["id"]: s for s in steps["steps"]}["wait-order"]
    assert wait["exited"] == 1
    assert steps["ended"] == {"exited": 1, "done": 2}
    with container.db.read() as conn:
        reasons = conn.execute(
            sa.select(enrollments.c.end_reason).where(enrollments.c.status == "exited")
        ).scalars()
        assert [r.split(",")[0].startswith("merged into") for r in reasons] == [True]


@pytest.mark.parametrize("concurrency", [0, 65, 2.5, True, "4"])
def test_a_channel_handing_over_an_impossible_number_at_once_is_refused(
    client: TestClient, admin_token: dict[str, str], concurrency: Any
) -> None:
    channel = {"name": "hook", "type": "webhook", "concurrency": concurrency,
               "settings": {"url": "http://127.0.0.1:9/hook"}}  # fmt: skip
    refused = client.post("/api/channels", json={"channels": [channel]}, headers=admin_token)
    assert refused.status_code == 422
    assert refused.json()["field"] == "channels[0].concurrency"
    assert "from 1 to 64" in refused.json()["message"]


def test_a_new_version_leaves_people_on_theirs(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    setup(client, admin_token, smtp)
    send(client, write_key, ada(), cart("Cart Abandoned", "c1"))
    settle(container)
    # Version 2 waits a day instead of an hour: Ada stays on version 1's hour.
    changed = setup(client, admin_token, smtp, goal={"event": "Order Completed", "within": "P1D"})
    assert changed["journeys"][0] == {"id": "abandoned-cart", "change": "updated", "version": 2}
    clock.advance(hours=1, seconds=1)
    settle(container)
    assert len(smtp.mailbox.emails()) == 1


def test_the_one_click_link_withdraws_the_channels_consent(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    setup(client, admin_token, smtp)
    send(client, write_key, ada(), cart("Cart Abandoned", "c1"))
    settle(container)
    clock.advance(hours=1, seconds=1)
    settle(container)
    link = smtp.mailbox.emails()[0]["List-Unsubscribe"].strip("<>")
    path = link.removeprefix(container.settings.public_url)
    # A forged link withdraws nothing.
    assert client.post(path[:-3] + "xyz").status_code == 403
    # Opening it asks; the one-click POST a mail client sends withdraws.
    assert client.get(path).status_code == 200
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    ada_id = profile_of(client, admin_token)
    consents = client.get(f"/api/profiles/{ada_id}/consents", headers=admin_token).json()
    assert consents["current"]["marketing_email"]["status"] == "withdrawn"
    # The next cart's reminder is skipped, for that reason.
    send(client, write_key, cart("Cart Abandoned", "c2"))
    settle(container)
    clock.advance(hours=1, seconds=1)
    settle(container)
    assert len(smtp.mailbox.emails()) == 1
    steps = client.get("/api/journeys/abandoned-cart/steps", headers=admin_token).json()
    reminder = {step["id"]: step for step in steps["steps"]}["reminder"]
    assert reminder["messages"] == {"sent": 1, "skipped": 1}


def test_an_in_app_message_reaches_only_its_owners_inbox(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    smtp: SMTPServer,
) -> None:
    container.inbox.secret = "inbox-s3cret"
    document = {
        "channels": [{"name": "in-app", "type": "inbox", "purpose": "marketing_app"}],
        "templates": [
            {"name": "hello", "subject": "Welcome", "text": "Hi {{ traits.first_name }}"}
        ],
        "journeys": [
            {
                "id": "welcome",
                "entry": {"event": "Signed Up"},
                "steps": [
                    {
                        "send": {
                            "channel": "in-app",
                            "template": "hello",
                            "category": "transactional",
                        }
                    }
                ],
            }
        ],
    }
    assert client.post("/api/journeys", json=document, headers=admin_token).status_code == 200
    send(
        client,
        write_key,
        ada(),
        {"type": "track", "userId": "ada", "event": "Signed Up", "messageId": "s1"},
    )
    settle(container)
    token = user_token("inbox-s3cret", "ada")
    headers = {"X-Ariane-User": "ada", "X-Ariane-User-Token": token}
    inbox = client.get("/v1/inbox", headers=headers).json()["messages"]
    assert [(m["subject"], m["text"], m["read"]) for m in inbox] == [("Welcome", "Hi Ada", False)]
    # The write key, or another user's token, opens nothing.
    assert client.get("/v1/inbox", headers={**headers, "X-Ariane-User": "bob"}).status_code == 403
    assert client.get("/v1/inbox", headers=basic(write_key)).status_code == 403
    read = client.post(f"/v1/inbox/{inbox[0]['id']}/read", headers=headers).json()
    assert read["read"] is True
    client.post(f"/v1/inbox/{inbox[0]['id']}/dismiss", headers=headers)
    assert client.get("/v1/inbox", headers=headers).json()["messages"] == []


def test_opens_and_clicks_go_on_the_timeline_once(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
    smtp: SMTPServer,
) -> None:
    setup(client, admin_token, smtp)
    html = '<p><a href="https://shop.test/cart?id={{ event.properties.cartId }}&x=1">Back</a></p>'
    template = {"subject": "Your cart", "text": "Back to it", "html": html}
    put = client.put("/api/templates/cart-reminder", json=template, headers=admin_token)
    assert put.status_code == 200, put.text
    send(client, write_key, ada(), cart("Cart Abandoned", "c9"))
    settle(container)
    clock.advance(hours=1, seconds=1)
    settle(container)
    body = smtp.mailbox.emails()[0].get_body(("html",))
    assert body is not None
    sent_html = body.get_content()
    base = container.settings.public_url
    click = sent_html.split('href="')[1].split('"')[0]
    pixel = sent_html.split('<img src="')[1].split('"')[0]
    assert click.startswith(f"{base}/v1/messages/click?t=")
    assert pixel.startswith(f"{base}/v1/messages/open?t=")
    for _ in range(2):
        followed = client.get(click.removeprefix(base), follow_redirects=False)
        assert followed.status_code == 302
        assert followed.headers["location"] == "https://shop.test/cart?id=c9&x=1"
        seen = client.get(pixel.removeprefix(base))
        assert seen.status_code == 200 and seen.headers["content-type"] == "image/gif"
    assert client.get(pixel.removeprefix(base)[:-4] + "abcd").status_code == 403
    settle(container)
    names = [e.get("event") for e in timeline(client, admin_token)]
    assert names.count("Message Opened") == 1
    assert names.count("Message Clicked") == 1


def test_the_inbox_streams_new_messages_as_server_sent_events(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
) -> None:
    container.inbox.secret = "inbox-s3cret"
    send(client, write_key, ada())
    ada_id = profile_of(client, admin_token)

    def deliver(n: int) -> None:
        container.inbox.deliver(
            Message(send_key=f"k{n}", profile_id=ada_id, address="", subject=f"S{n}", text="")
        )

    deliver(1)
    later = threading.Timer(0.3, deliver, args=(2,))
    later.start()
    headers = {"X-Ariane-User": "ada", "X-Ariane-User-Token": user_token("inbox-s3cret", "ada")}
    streamed = client.get("/v1/inbox/stream", params={"seconds": 1.5}, headers=headers)
    later.join()
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    frames = [frame for frame in streamed.text.split("\n\n") if frame.startswith("id:")]
    subjects = [orjson.loads(frame.split("data: ", 1)[1])["subject"] for frame in frames]
    assert subjects == ["S1", "S2"]
    # Reconnecting with the last id seen sends nothing twice.
    last = frames[0].split("\n")[0].removeprefix("id: ")
    again = client.get(
        "/v1/inbox/stream", params={"seconds": 0.2}, headers={**headers, "Last-Event-ID": last}
    )
    assert [f for f in again.text.split("\n\n") if f.startswith("id:")] == frames[1:]
    assert client.get("/v1/inbox/stream", params={"seconds": 0.2}).status_code == 403


def waiting_journey(ident: str, event: str) -> dict[str, Any]:
    """Sends a transactional in-app message to whoever does `event`, then waits a day;
    with the channel and the template it sends, declared with it."""
    return {
        "channels": [{"name": f"in-app-{ident}", "type": "inbox"}],
        "templates": [{"name": ident, "subject": ident, "text": "Hello"}],
        "journeys": [
            {
                "id": ident,
                "entry": {"event": event},
                "steps": [
                    {
                        "send": {
                            "channel": f"in-app-{ident}",
                            "template": ident,
                            "category": "transactional",
                        }
                    },
                    {"delay": {"for": "P1D"}},
                ],
            }
        ],
    }


def test_a_journey_declared_in_another_process_is_entered_by_what_follows_at_once(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    settings: Settings,
    clock: FakeClock,
) -> None:
    """The process that runs the bus keeps the journeys in memory for a second; one
    declared through another process's API is entered by the events that follow it
    even within that second, whether no journey was in use before (the handler asleep)
    or others were (events of names none of them knew)."""
    bus = build(settings, clock=clock)
    try:
        for n, (ident, event) in enumerate([("first", "Signed Up"), ("second", "Cart Viewed")]):
            # The bus's process has looked at the journeys just now.
            bus.bus.drain()
            assert bus.journey_engine.asleep() is (n == 0)
            declared = client.post(
                "/api/journeys", json=waiting_journey(ident, event), headers=admin_token
            )
            assert declared.status_code == 200, declared.text
            send(client, write_key, {"type": "track", "userId": f"u{n}", "event": event})
            bus.bus.drain()
            steps = client.get(f"/api/journeys/{ident}/steps", headers=admin_token).json()
            # Sent on the channel declared with it, not skipped as on a channel off.
            assert steps["steps"][0]["messages"] == {"sent": 1}, steps
            assert steps["steps"][1]["waiting"] == 1, steps
    finally:
        bus.close()
