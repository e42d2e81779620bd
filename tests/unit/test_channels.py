"""The built-in channel types, without a network: what they register, the email they
write, and the messages they refuse before sending anything."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def composed(channel: EmailChannel, message: Message) -> EmailMessage:
    """The email as the channel writes it for the server, read back as a client would."""
    data = channel.compose(message)
    assert_wire_format(data)
    assert data.isascii()
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects
    return parsed


def assert_wire_format(data: bytes) -> None:
    """What smtplib hands over as it is (it mends the line ends of a str, not of bytes):
    lines ended by CRLF, none above 998 characters."""
    assert data.endswith(b"\r\n")
    lines = data.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert max(len(line) for line in lines) <= 998


def body(email: EmailMessage, kind: str) -> str:
    part = email.get_body(preferencelist=(kind,))
    assert part is not None and part.get_content_subtype() == kind
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


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
    email = composed(EmailChannel(SETTINGS, CONTEXT), message(html="<p>Hello <b>Ada</b></p>"))
    assert email.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in email.iter_parts()] == ["text/plain", "text/html"]
    assert body(email, "plain") == "Hello Ada\n"
    assert body(email, "html") == "<p>Hello <b>Ada</b></p>\n"


def test_an_email_without_html_is_its_text_alone() -> None:
    email = composed(EmailChannel(SETTINGS, CONTEXT), message())
    assert email.get_content_type() == "text/plain"
    assert email.get_content().strip() == "Hello Ada"


def test_an_emails_headers_say_who_when_and_which_send() -> None:
    channel = EmailChannel(SETTINGS | {"reply_to": "help@shop.test"}, CONTEXT)
    email = composed(channel, message())
    assert email["Subject"] == "Welcome, Ada"
    assert email["From"] == "Shop <news@shop.test>"
    assert email["To"] == "ada@example.test"
    assert email["Reply-To"] == "help@shop.test"
    assert email["Date"] == "Mon, 02 Mar 2026 09:30:00 +0000"
    assert email["X-Ariane-Send-Key"] == "welcome:1:e42:mail:0"


def test_the_message_id_is_the_same_for_the_same_send_key_and_differs_for_another() -> None:
    first = composed(EmailChannel(SETTINGS, CONTEXT), message())["Message-ID"]
    again = composed(EmailChannel(SETTINGS, CONTEXT), message(text="changed"))["Message-ID"]
    other = composed(EmailChannel(SETTINGS, CONTEXT), message(send_key="welcome:1:e42:mail:1"))
    assert first == again
    assert first != other["Message-ID"]
    assert first.startswith("<") and first.endswith("@shop.test>")


def test_a_message_with_an_unsubscribe_link_offers_one_click_unsubscribe() -> None:
    channel = EmailChannel(SETTINGS, CONTEXT)
    url = "https://cdp.shop.test/u/abc.def"
    email = composed(channel, message(unsubscribe_url=url))
    assert email["List-Unsubscribe"] == f"<{url}>"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    plain = composed(channel, message(category="transactional"))
    assert "List-Unsubscribe" not in plain
    assert "List-Unsubscribe-Post" not in plain


def test_a_long_unsubscribe_link_is_written_as_it_is_on_one_line() -> None:
    # Receivers read the link from the header as it is: not as encoded-words.
    url = "https://cdp.shop.test/v1/unsubscribe?t=" + "eyJwIjoicDQyIn0" * 12
    data = EmailChannel(SETTINGS, CONTEXT).compose(message(unsubscribe_url=url))
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in data


def test_non_ascii_subject_names_and_bodies_read_back_the_same() -> None:
    settings = {
        "host": "smtp.shop.test",
        "from": "Boutique Élodie <news@shop.test>",
        "reply_to": "Служба поддержки <help@shop.test>",
    }
    subject = "Bienvenue, Adèle — 欢迎光临 Votre remise de 20 % vous attend dès aujourd'hui"
    text = "Bonjour Adèle,\n\nनमस्ते. שלום. 欢迎。 Добро пожаловать. مرحبا 👋\n" + "é" * 300
    html = "<p>Bonjour <b>Adèle</b> — 欢迎光临</p>"
    email = composed(
        EmailChannel(settings, CONTEXT), message(subject=subject, text=text, html=html)
    )
    assert email["Subject"] == subject
    assert email["From"] == "Boutique Élodie <news@shop.test>"
    assert email["From"].addresses[0].display_name == "Boutique Élodie"
    assert email["Reply-To"] == "Служба поддержки <help@shop.test>"
    assert body(email, "plain") == text + "\n"
    assert body(email, "html") == html + "\n"


def test_a_latin_body_is_quoted_printable_and_an_ascii_one_as_it_is() -> None:
    channel = EmailChannel(SETTINGS, CONTEXT)
    latin = channel.compose(message(text="Héllo Adèle, à bientôt"))
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in latin
    assert b"H=C3=A9llo Ad=C3=A8le, =C3=A0 bient=C3=B4t\r\n" in latin
    ascii_ = channel.compose(message(text="Hello Ada\r\nsee you\rsoon\n"))
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\nHello Ada\r\nsee you\r\nsoon\r\n" in ascii_


def test_header_lines_are_folded_and_bodies_wrapped_within_the_line_limits() -> None:
    subject = " ".join(["Welcome"] * 40) + " " + "x" * 1200
    text = "y" * 5000 + "\n" + "é" * 3000
    data = EmailChannel(SETTINGS, CONTEXT).compose(
        message(subject=subject, text=text, html="<p>" + "z" * 3000 + "</p>")
    )
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    got = email.message_from_bytes(data, policy=email.policy.default)
    assert got["Subject"] == subject
    assert body(got, "plain") == text + "\n"


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hi\r\nBcc: all@example.test"},
        {"subject": "Hi\nBcc: all@example.test"},
        {"subject": "Hi\rBcc: all@example.test"},
        {"subject": "Hi\u2028Bcc: all@example.test"},
        {"send_key": "k\r\nBcc: all@example.test"},
        {"unsubscribe_url": "https://cdp.shop.test/u\r\nBcc: all@example.test"},
        {"address": "ada@example.test\r\nBcc: all@example.test"},
    ],
)
def test_a_header_with_a_line_break_inside_is_refused_for_good(changes: dict[str, str]) -> None:
    channel = EmailChannel(SETTINGS, CONTEXT)
    with pytest.raises(ValueError, match="line"):
        channel.compose(message(**changes))
    with pytest.raises(GiveUp, match="cannot be written as an email"):
        channel.send(message(**changes))


def test_a_line_break_ending_the_subject_is_no_header_of_its_own() -> None:
    email = composed(EmailChannel(SETTINGS, CONTEXT), message(subject="Welcome, Ada\n"))
    assert email["Subject"] == "Welcome, Ada"
    assert email["From"] == "Shop <news@shop.test>"
    assert email["X-Ariane-Send-Key"] == "welcome:1:e42:mail:0"
    assert email.get_content().strip() == "Hello Ada"


def test_an_email_to_a_non_ascii_address_is_written_with_utf8_headers() -> None:
    channel = EmailChannel(SETTINGS | {"reply_to": "help@shop.test"}, CONTEXT)
    data = channel.compose(message(address="adèle@exämple.test", subject="Adèle", html="<p>Hi</p>"))
    assert_wire_format(data)
    assert "To: adèle@exämple.test\r\n".encode() in data
    got = email.message_from_bytes(data, policy=email.policy.default)
    assert got["To"] == "adèle@exämple.test"
    assert got["Subject"] == "Adèle"
    assert got["Reply-To"] == "help@shop.test"
    assert body(got, "plain") == "Hello Ada\n"
    assert body(got, "html") == "<p>Hi</p>\n"


# Any text a template may give, but the line breaks a header cannot hold.
HEADER_TEXT = st.text(st.characters(exclude_categories=["Cs"])).filter(
    lambda text: len(text.splitlines()) <= 1
)


@settings(max_examples=300, deadline=None)
@given(
    subject=HEADER_TEXT,
    send_key=HEADER_TEXT,
    text=st.text(st.characters(exclude_categories=["Cs"])),
    html=st.none() | st.text(st.characters(exclude_categories=["Cs"]), min_size=1),
)
def test_any_subject_send_key_and_bodies_read_back_the_same(
    subject: str, send_key: str, text: str, html: str | None
) -> None:
    channel = EmailChannel(SETTINGS, CONTEXT)
    email = composed(channel, message(subject=subject, send_key=send_key, text=text, html=html))
    assert email["Subject"] == subject.removesuffix("\n").removesuffix("\r")
    assert email["X-Ariane-Send-Key"] == send_key.removesuffix("\n").removesuffix("\r")
    assert email["From"] == "Shop <news@shop.test>"

    def read_back(content: str) -> str:
        lines = content.replace("\r\n", "\n").replace("\r", "\n")
        return lines if lines.endswith("\n") else lines + "\n"

    assert body(email, "plain") == read_back(text)
    if html:
        assert body(email, "html") == read_back(html)
    else:
        assert email.get_content_type() == "text/plain"


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
