"""The built-in channel types, without a network: what they register, the email they
write, and the messages they refuse before sending anything."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from typing import Any

import pytest

from ariane.channels import TYPES, Context, Message, Sent, channel_types, register
from ariane.channels.apprise import AppriseChannel
from ariane.channels.email import EmailChannel
from ariane.channels.inbox import InboxChannel
from ariane.channels.webhook import WebhookChannel
from ariane.channels.webpush import WebPushChannel
from ariane.services.bus import GiveUp
from tests.conftest import FakeClock

CONTEXT = Context(clock=FakeClock())
SETTINGS = {"host": "smtp.shop.test", "from": "Shop <news@shop.test>"}


def message(**changes: Any) -> Message:
    values: dict[str, Any] = {
        "send_key": "welcome:1:e42:mail:0",
        "profile_id": "p42",
        "address": "ada@example.test",
        "subject": "Welcome, Ada",
        "text": "Hello Ada",
    }
    return Message(**(values | changes))


def body(email: EmailMessage, kind: str) -> str:
    part = email.get_body(preferencelist=(kind,))
    assert part is not None and part.get_content_subtype() == kind
    content = part.get_content()
    assert isinstance(content, str)
    return content


class Custom:
    carries_key = False

    def __init__(self, settings: Mapping[str, Any], context: Context) -> None:
        self.settings = settings

    def send(self, message: Message) -> Sent:
        return Sent()

    def close(self) -> None:
        pass


@pytest.fixture
def custom_type() -> Iterator[str]:
    register("pigeon", Custom, required=("loft",), default_address="traits.loft")
    yield "pigeon"
    del TYPES["pigeon"]


def test_every_built_in_type_is_registered_and_a_users_own_type_beside_them(
    custom_type: str,
) -> None:
    types = channel_types()
    assert {"email", "apprise", "webhook", "webpush", "inbox", custom_type} <= types.keys()
    assert types[custom_type].required == {"loft"}
    assert types[custom_type].default_address == "traits.loft"


def test_the_settings_that_hold_tokens_are_secrets() -> None:
    types = channel_types()
    assert types["email"].secrets == {"password"}
    assert types["email"].required == {"host", "from"}
    assert types["apprise"].secrets == {"url"}
    assert types["webhook"].secrets == {"secret"}
    assert types["webhook"].secret_values == {"headers"}
    assert types["webpush"].secrets == {"vapid_private_key"}
    assert types["inbox"].settings == frozenset()


def test_each_type_addresses_a_person_by_default_as_its_provider_needs() -> None:
    types = channel_types()
    assert types["email"].default_address == "traits.email"
    assert types["apprise"].default_address is None
    assert types["webhook"].default_address == "user_id"
    assert types["webpush"].default_address == "push_subscriptions"
    assert types["inbox"].default_address == "profile_id"


def test_only_the_channels_whose_provider_drops_a_duplicate_carry_the_key() -> None:
    assert EmailChannel.carries_key is True
    assert WebhookChannel.carries_key is True
    assert InboxChannel.carries_key is True
    assert AppriseChannel.carries_key is False
    assert WebPushChannel.carries_key is False


def test_an_email_with_html_is_multipart_alternative_of_its_text_and_html() -> None:
    email = EmailChannel(SETTINGS, CONTEXT).compose(message(html="<p>Hello <b>Ada</b></p>"))
    assert email.get_content_type() == "multipart/alternative"
    assert body(email, "plain").strip() == "Hello Ada"
    assert body(email, "html").strip() == "<p>Hello <b>Ada</b></p>"


def test_an_email_without_html_is_its_text_alone() -> None:
    email = EmailChannel(SETTINGS, CONTEXT).compose(message())
    assert email.get_content_type() == "text/plain"
    assert email.get_content().strip() == "Hello Ada"


def test_an_emails_headers_say_who_when_and_which_send() -> None:
    channel = EmailChannel(SETTINGS | {"reply_to": "help@shop.test"}, CONTEXT)
    email = channel.compose(message())
    assert email["Subject"] == "Welcome, Ada"
    assert email["From"] == "Shop <news@shop.test>"
    assert email["To"] == "ada@example.test"
    assert email["Reply-To"] == "help@shop.test"
    assert email["Date"] == "Mon, 02 Mar 2026 09:30:00 +0000"
    assert email["X-Ariane-Send-Key"] == "welcome:1:e42:mail:0"


def test_the_message_id_is_the_same_for_the_same_send_key_and_differs_for_another() -> None:
    first = EmailChannel(SETTINGS, CONTEXT).compose(message())["Message-ID"]
    again = EmailChannel(SETTINGS, CONTEXT).compose(message(text="changed"))["Message-ID"]
    other = EmailChannel(SETTINGS, CONTEXT).compose(message(send_key="welcome:1:e42:mail:1"))
    assert first == again
    assert first != other["Message-ID"]
    assert first.startswith("<") and first.endswith("@shop.test>")


def test_a_message_with_an_unsubscribe_link_offers_one_click_unsubscribe() -> None:
    channel = EmailChannel(SETTINGS, CONTEXT)
    url = "https://cdp.shop.test/u/abc.def"
    email = channel.compose(message(unsubscribe_url=url))
    assert email["List-Unsubscribe"] == f"<{url}>"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    plain = channel.compose(message(category="transactional"))
    assert "List-Unsubscribe" not in plain
    assert "List-Unsubscribe-Post" not in plain


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"from": "news@shop.test"}, "'host' is required"),
        ({"host": "smtp.shop.test"}, "'from' is required"),
        (SETTINGS | {"security": "tls"}, "security must be one of none, starttls, ssl"),
        (SETTINGS | {"port": "twenty"}, "port must be a number"),
        (SETTINGS | {"from": "Shop"}, "from must hold an address"),
    ],
)
def test_an_email_channel_with_wrong_settings_says_which(
    settings: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        EmailChannel(settings, CONTEXT)


def test_an_email_address_with_a_line_break_is_refused_for_good() -> None:
    channel = EmailChannel(SETTINGS, CONTEXT)
    with pytest.raises(GiveUp, match="cannot be written as an email"):
        channel.send(message(address="ada@example.test\r\nBcc: all@example.test"))


def test_the_inbox_stores_the_message_and_answers_its_id() -> None:
    stored: list[Message] = []

    def keep(message: Message) -> str:
        stored.append(message)
        return f"inbox-{len(stored)}"

    channel = InboxChannel({}, Context(clock=FakeClock(), inbox=keep))
    assert channel.send(message()) == Sent(provider_id="inbox-1", detail="stored in the inbox")
    assert stored == [message()]


def test_the_inbox_without_a_store_gives_up() -> None:
    with pytest.raises(GiveUp, match="no inbox"):
        InboxChannel({}, CONTEXT).send(message())


def test_an_apprise_url_of_no_service_is_refused_naming_only_its_scheme() -> None:
    with pytest.raises(ValueError, match=r"no service nope://") as raised:
        AppriseChannel({"url": "nope://T0KEN-s3cret/{address}"}, CONTEXT)
    assert "T0KEN-s3cret" not in str(raised.value)


def test_an_apprise_url_the_service_cannot_use_gives_up_without_showing_it() -> None:
    # A Telegram URL wants a bot token: "s3cret" is not one.
    channel = AppriseChannel({"url": "tgram://s3cret-tok3n/{address}"}, CONTEXT)
    with pytest.raises(GiveUp, match=r"tgram:// URL") as raised:
        channel.send(message(address="12345"))
    assert "s3cret-tok3n" not in str(raised.value)


VAPID_SETTINGS = {
    # The raw P-256 key, base64url, as `vapid --gen` and the browsers' docs give it.
    "vapid_private_key": "IAl0NT2QnR6WnfnhGrQ4Yd5ts7s5vbNe0OnTvcJT1mY",
    "subject": "mailto:push@shop.test",
}


@pytest.mark.parametrize(
    "address",
    ["", "not json", '{"endpoint": "https://push.test/1"}', "[]", '[{"endpoint": 1}]'],
)
def test_a_push_message_without_a_subscription_gives_up(address: str) -> None:
    channel = WebPushChannel(VAPID_SETTINGS, CONTEXT)
    with pytest.raises(GiveUp, match="subscription"):
        channel.send(message(address=address))
    channel.close()


def test_a_wrong_vapid_key_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match="vapid_private_key is not a P-256") as raised:
        WebPushChannel(VAPID_SETTINGS | {"vapid_private_key": "s3cretbutwrong"}, CONTEXT)
    assert "s3cretbutwrong" not in str(raised.value)


def test_a_vapid_subject_must_be_a_way_to_reach_the_sender() -> None:
    with pytest.raises(ValueError, match="'subject' must be a mailto: or https:// URL"):
        WebPushChannel(VAPID_SETTINGS | {"subject": "shop"}, CONTEXT)
