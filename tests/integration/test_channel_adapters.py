"""The built-in channels against real servers on localhost: an SMTP server (aiosmtpd), an
HTTP receiver for webhooks, Apprise's json:// service and a web push service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import http_ece  # type: ignore[import-untyped]
import orjson
import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from py_vapid import Vapid  # type: ignore[import-untyped]

from ariane.channels import Context, Message
from ariane.channels.apprise import AppriseChannel
from ariane.channels.email import EmailChannel, message_id
from ariane.channels.webhook import WebhookChannel
from ariane.channels.webpush import WebPushChannel
from ariane.services.bus import GiveUp, RetryLater
from tests.conftest import FakeClock
from tests.receiver import Receiver, receiving
from tests.smtp import Mailbox, SMTPServer, free_port

CONTEXT = Context(clock=FakeClock())


def message(**changes: Any) -> Message:
    values: dict[str, Any] = {
        "send_key": "welcome:1:e42:mail:0",
        "profile_id": "p42",
        "address": "ada@example.test",
        "subject": "Welcome, Ada",
        "text": "Hello Ada",
    }
    return Message(**(values | changes))


def email_channel(server: SMTPServer, **settings: Any) -> EmailChannel:
    return EmailChannel(
        {"host": "127.0.0.1", "port": server.port, "from": "Shop <news@shop.test>"} | settings,
        CONTEXT,
    )


def test_an_email_reaches_the_smtp_server_as_text_and_html(smtp: SMTPServer) -> None:
    channel = email_channel(smtp)
    sent = channel.send(
        message(html="<p>Hello Ada</p>", unsubscribe_url="https://cdp.shop.test/u/x")
    )
    channel.close()
    [(envelope, _)] = smtp.mailbox.received
    assert envelope.mail_from == "news@shop.test"
    assert envelope.rcpt_tos == ["ada@example.test"]
    [got] = smtp.mailbox.emails()
    assert got.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in got.iter_parts()] == ["text/plain", "text/html"]
    assert got["Message-ID"] == sent.provider_id
    assert got["List-Unsubscribe"] == "<https://cdp.shop.test/u/x>"
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got["X-Ariane-Send-Key"] == "welcome:1:e42:mail:0"
    assert sent.detail == "250 OK queued as q1"


def received_bytes(mailbox: Mailbox) -> bytes:
    [(envelope, _)] = mailbox.received
    content = envelope.content
    assert isinstance(content, bytes)
    return content


def test_an_email_in_any_language_reaches_the_server_with_every_header_and_both_parts(
    smtp: SMTPServer,
) -> None:
    channel = email_channel(
        smtp, **{"from": "Boutique Élodie <news@shop.test>", "reply_to": "Сервис <help@shop.test>"}
    )
    subject = "Adèle, votre panier vous attend — 购物车 — Ваша корзина ждёт вас 🛒"
    text = "Bonjour Adèle,\n\nVotre panier : 3 articles. À très bientôt, ça vous dit ?\n"
    html = "<p>Bonjour <b>Adèle</b>, votre panier&nbsp;: 3 articles. 購物車 — Корзина</p>"
    url = "https://cdp.shop.test/v1/unsubscribe?t=" + "eyJwIjoicDQyIiwiYyI6Im5ld3MifQ" * 4
    sent = channel.send(message(subject=subject, text=text, html=html, unsubscribe_url=url))
    channel.close()
    data = received_bytes(smtp.mailbox)
    # As the server took it: ASCII, CRLF line ends, no line above 78 characters.
    assert data.isascii()
    lines = data.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert max(len(line) for line in lines if not line.startswith(b"List-Unsubscribe:")) <= 78
    assert f"List-Unsubscribe: <{url}>\r\n".encode() in data
    [got] = smtp.mailbox.emails()
    assert not got.defects
    assert got["Subject"] == subject
    assert got["From"] == "Boutique Élodie <news@shop.test>"
    assert got["From"].addresses[0].display_name == "Boutique Élodie"
    assert got["From"].addresses[0].addr_spec == "news@shop.test"
    assert got["To"] == "ada@example.test"
    assert got["Reply-To"] == "Сервис <help@shop.test>"
    assert got["Date"] == "Mon, 02 Mar 2026 09:30:00 +0000"
    assert got["Message-ID"] == sent.provider_id
    assert sent.provider_id == message_id("welcome:1:e42:mail:0", "shop.test")
    assert got["X-Ariane-Send-Key"] == "welcome:1:e42:mail:0"
    assert got["List-Unsubscribe"] == f"<{url}>"
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got["MIME-Version"] == "1.0"
    assert got.get_content_type() == "multipart/alternative"
    plain, rich = got.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content_charset() == "utf-8"
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"  # readable French
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content_type() == "text/html"
    assert rich.get_content().replace("\r\n", "\n") == html + "\n"


def test_a_transactional_email_without_html_is_its_text_alone_without_unsubscribe(
    smtp: SMTPServer,
) -> None:
    channel = email_channel(smtp)
    channel.send(message(category="transactional", text="Your code: 123456\nThanks"))
    channel.close()
    [got] = smtp.mailbox.emails()
    assert not got.defects
    assert got.get_content_type() == "text/plain"
    assert got["Content-Transfer-Encoding"] == "7bit"
    assert got.get_content().replace("\r\n", "\n") == "Your code: 123456\nThanks\n"
    assert got["Subject"] == "Welcome, Ada"
    assert got["From"] == "Shop <news@shop.test>"
    assert "Reply-To" not in got
    assert "List-Unsubscribe" not in got
    assert "List-Unsubscribe-Post" not in got


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hi\r\nBcc: all@example.test"},
        {"subject": "Hi\nBcc: all@example.test\n\nanother body"},
        {"unsubscribe_url": "https://cdp.shop.test/u\r\nBcc: all@example.test"},
    ],
)
def test_a_header_injected_into_an_email_is_refused_and_nothing_sent(
    smtp: SMTPServer, changes: dict[str, str]
) -> None:
    channel = email_channel(smtp)
    with pytest.raises(GiveUp, match="cannot be written as an email"):
        channel.send(message(**changes))
    channel.close()
    assert smtp.mailbox.received == []


def test_an_email_to_a_non_ascii_address_goes_with_smtputf8(smtp: SMTPServer) -> None:
    # aiosmtpd's Controller offers SMTPUTF8 unless told not to.
    channel = email_channel(smtp, **{"from": "Boutique Élodie <news@shop.test>"})
    sent = channel.send(message(address="adèle@exämple.test", subject="Adèle", html="<p>Hi</p>"))
    channel.close()
    [(envelope, _)] = smtp.mailbox.received
    assert envelope.mail_options == ["SMTPUTF8"]
    assert envelope.rcpt_tos == ["adèle@exämple.test"]
    assert b"\r\nTo: " + "adèle@exämple.test".encode() + b"\r\n" in received_bytes(smtp.mailbox)
    [got] = smtp.mailbox.emails()
    assert got["To"] == "adèle@exämple.test"
    assert got["From"] == "Boutique Élodie <news@shop.test>"
    assert got["Subject"] == "Adèle"
    assert got["Message-ID"] == sent.provider_id
    assert [part.get_content_type() for part in got.iter_parts()] == ["text/plain", "text/html"]


def test_an_email_to_a_non_ascii_address_is_refused_by_a_server_without_smtputf8() -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, timeout=1, enable_SMTPUTF8=False
    )
    controller.start()
    try:
        channel = email_channel(SMTPServer(mailbox, port))
        with pytest.raises(GiveUp, match="cannot take the non-ASCII address"):
            channel.send(message(address="adèle@exämple.test"))
        channel.close()
    finally:
        controller.stop()
    assert mailbox.received == []


def test_a_message_handed_twice_carries_the_same_message_id(smtp: SMTPServer) -> None:
    channel = email_channel(smtp)
    first = channel.send(message())
    again = channel.send(message())
    other = channel.send(message(send_key="welcome:1:e42:mail:1"))
    channel.close()
    ids = [got["Message-ID"] for got in smtp.mailbox.emails()]
    assert ids == [first.provider_id, first.provider_id, other.provider_id]
    assert first.provider_id == again.provider_id != other.provider_id


def test_sends_share_one_smtp_connection(smtp: SMTPServer) -> None:
    channel = email_channel(smtp)
    for n in range(3):
        channel.send(message(send_key=f"k{n}"))
    channel.close()
    assert len({peer for _, peer in smtp.mailbox.received}) == 1


def test_a_connection_the_server_closed_is_opened_again(smtp: SMTPServer) -> None:
    channel = email_channel(smtp)
    channel.send(message(send_key="k1"))
    time.sleep(1.5)  # the server closes a connection idle for a second
    channel.send(message(send_key="k2"))
    channel.close()
    peers = [peer for _, peer in smtp.mailbox.received]
    assert len(peers) == 2 and peers[0] != peers[1]


def test_an_smtp_4xx_is_tried_later_with_the_servers_answer(smtp: SMTPServer) -> None:
    smtp.mailbox.refuse_rcpt = "451 4.3.0 try later"
    channel = email_channel(smtp)
    with pytest.raises(RetryLater, match=r"451 4.3.0 try later"):
        channel.send(message())
    # The refusal left the connection good for the next message.
    smtp.mailbox.refuse_rcpt = None
    channel.send(message())
    channel.close()
    assert len(smtp.mailbox.received) == 1


@pytest.mark.parametrize("step", ["refuse_rcpt", "refuse_data"])
def test_an_smtp_5xx_gives_up_with_the_servers_answer(smtp: SMTPServer, step: str) -> None:
    setattr(smtp.mailbox, step, "550 5.1.1 no such user")
    channel = email_channel(smtp)
    with pytest.raises(GiveUp, match=r"550 5.1.1 no such user"):
        channel.send(message())
    channel.close()
    assert smtp.mailbox.received == []


def test_no_smtp_server_is_tried_later() -> None:
    channel = EmailChannel(
        {"host": "127.0.0.1", "port": free_port(), "from": "news@shop.test", "timeout": 2},
        CONTEXT,
    )
    with pytest.raises(RetryLater, match=r"no answer from 127.0.0.1"):
        channel.send(message())


def test_the_smtp_password_never_shows_in_an_error(smtp: SMTPServer) -> None:
    # This server offers no login: the channel fails, and says so without the password.
    channel = email_channel(smtp, username="news", password="pa55-w0rd-s3cret")
    with pytest.raises(RuntimeError) as raised:
        channel.send(message())
    assert "AUTH" in str(raised.value)
    assert "pa55-w0rd-s3cret" not in str(raised.value)


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A TLS context for 127.0.0.1 with a certificate no authority signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_a_tls_server_whose_certificate_is_not_trusted_is_not_sent_to(
    tmp_path: Path, security: str
) -> None:
    mailbox = Mailbox()
    port = free_port()
    tls = self_signed(tmp_path)
    controller = (
        Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=tls)
        if security == "starttls"
        else Controller(mailbox, hostname="127.0.0.1", port=port, ssl_context=tls)
    )
    controller.start()
    try:
        channel = email_channel(SMTPServer(mailbox, port), security=security)
        with pytest.raises(RuntimeError, match="certificate is not trusted"):
            channel.send(message())
    finally:
        controller.stop()
    assert mailbox.received == []


# --- webhook -------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as found:
        yield found


def webhook_channel(receiver: Receiver, **settings: Any) -> WebhookChannel:
    return WebhookChannel({"url": receiver.url + "/messages"} | settings, CONTEXT)


def test_a_webhook_posts_the_message_signed_with_its_send_key(receiver: Receiver) -> None:
    channel = webhook_channel(
        receiver, secret="hook-secret", headers={"Authorization": "Bearer t0ken"}
    )
    channel.send(message(data={"coupon": "WELCOME10"}, journey="welcome", step="mail"))
    channel.close()
    [got] = receiver.received
    assert got.path == "/messages"
    assert got.json == {
        "send_key": "welcome:1:e42:mail:0",
        "profile_id": "p42",
        "address": "ada@example.test",
        "category": "marketing",
        "subject": "Welcome, Ada",
        "text": "Hello Ada",
        "html": None,
        "data": {"coupon": "WELCOME10"},
        "journey": "welcome",
        "step": "mail",
        "sent_at": "2026-03-02T09:30:00+00:00",
    }
    assert got.headers["idempotency-key"] == "welcome:1:e42:mail:0"
    assert got.headers["x-ariane-send-key"] == "welcome:1:e42:mail:0"
    assert got.headers["authorization"] == "Bearer t0ken"
    assert got.headers["content-type"] == "application/json"
    timestamp = got.headers["x-ariane-timestamp"]
    mac = hmac.new(b"hook-secret", f"{timestamp}.".encode() + got.body, hashlib.sha256)
    assert got.headers["x-ariane-signature"] == f"t={timestamp},v1={mac.hexdigest()}"


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_a_webhook_busy_or_down_is_tried_later_when_it_says(
    receiver: Receiver, status: int
) -> None:
    receiver.always = (status, {"Retry-After": "7"}, b"busy")
    channel = webhook_channel(receiver)
    with pytest.raises(RetryLater, match=f"{status} from 127.0.0.1: busy") as raised:
        channel.send(message())
    channel.close()
    assert raised.value.retry_after == 7.0


def test_a_webhook_refusing_the_message_gives_up_with_its_answer(receiver: Receiver) -> None:
    receiver.always = (422, {}, b'{"error": "unknown user"}')
    channel = webhook_channel(receiver, headers={"X-Token": "h3ader-s3cret"}, secret="k3y")
    with pytest.raises(GiveUp, match=r"422 from 127.0.0.1") as raised:
        channel.send(message())
    channel.close()
    assert "unknown user" in str(raised.value)
    assert "h3ader-s3cret" not in str(raised.value)
    assert "k3y" not in str(raised.value)


def test_a_webhook_with_no_answer_is_tried_later() -> None:
    channel = WebhookChannel({"url": f"http://127.0.0.1:{free_port()}/x"}, CONTEXT)
    with pytest.raises(RetryLater, match=r"no answer from 127.0.0.1"):
        channel.send(message())
    channel.close()


# --- apprise -------------------------------------------------------------------------


def apprise_url(receiver: Receiver, path: str) -> str:
    return receiver.url.replace("http://", "json://") + path


def test_apprise_sends_to_the_url_made_for_the_person(receiver: Receiver) -> None:
    channel = AppriseChannel({"url": apprise_url(receiver, "/sms/{address}")}, CONTEXT)
    channel.send(message(address="+33 6 12/34"))
    [got] = receiver.received
    # The address is one segment of the path, whatever it holds.
    assert got.path.startswith("/sms/") and "%2F" in got.path
    assert unquote(got.path) == "/sms/+33 6 12/34"
    assert got.json["title"] == "Welcome, Ada"
    assert got.json["message"] == "Hello Ada"


def test_apprise_failing_says_what_apprise_said_without_the_url(receiver: Receiver) -> None:
    receiver.always = (400, {}, b"bad")
    url = apprise_url(receiver, "/hooks/T0KEN-s3cret/{address}")
    channel = AppriseChannel({"url": url}, CONTEXT)
    with pytest.raises(RuntimeError, match=r"json://: .*error=400") as raised:
        channel.send(message())
    assert "T0KEN-s3cret" not in str(raised.value)


def test_apprise_with_no_service_there_fails() -> None:
    channel = AppriseChannel({"url": f"json://127.0.0.1:{free_port()}/{{address}}"}, CONTEXT)
    with pytest.raises(RuntimeError, match=r"(?i)connection error"):
        channel.send(message())


# --- web push ------------------------------------------------------------------------


@dataclass
class Browser:
    """A browser's push subscription: the key its push messages are encrypted for."""

    key: ec.EllipticCurvePrivateKey
    auth: bytes
    endpoint: str

    @classmethod
    def subscribe(cls, endpoint: str) -> Browser:
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(16), endpoint)

    def subscription(self) -> dict[str, Any]:
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": _b64(point), "auth": _b64(self.auth)},
        }

    def read(self, body: bytes) -> Any:
        plain = http_ece.decrypt(
            body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"
        )
        return orjson.loads(plain)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def addressed(*browsers: Browser) -> str:
    return orjson.dumps([b.subscription() for b in browsers]).decode()


@pytest.fixture
def vapid() -> dict[str, Any]:
    key = Vapid()
    key.generate_keys()
    pem = key.private_pem().decode()
    return {"vapid_private_key": pem, "subject": "mailto:push@shop.test", "ttl": 3600}


def test_a_push_reaches_each_subscription_encrypted_and_signed(
    receiver: Receiver, vapid: dict[str, Any]
) -> None:
    phone = Browser.subscribe(receiver.url + "/push/1")
    laptop = Browser.subscribe(receiver.url + "/push/2")
    channel = WebPushChannel(vapid, CONTEXT)
    sent = channel.send(
        message(address=addressed(phone, laptop), data={"url": "https://shop.test/w"})
    )
    channel.close()
    assert sent.gone == ()
    assert [got.path for got in receiver.received] == ["/push/1", "/push/2"]
    for got, browser in zip(receiver.received, (phone, laptop), strict=True):
        assert got.headers["content-encoding"] == "aes128gcm"
        assert got.headers["ttl"] == "3600"
        assert got.headers["authorization"].startswith("vapid t=")
        assert Vapid.verify(got.headers["authorization"])
        assert len(got.headers["topic"]) == 32
        assert browser.read(got.body) == {
            "title": "Welcome, Ada",
            "body": "Hello Ada",
            "url": "https://shop.test/w",
            "send_key": "welcome:1:e42:mail:0",
        }


def test_a_subscription_the_push_service_says_is_gone_is_reported(
    receiver: Receiver, vapid: dict[str, Any]
) -> None:
    receiver.script.append((410, {}, b"gone"))
    old = Browser.subscribe(receiver.url + "/push/1")
    new = Browser.subscribe(receiver.url + "/push/2")
    channel = WebPushChannel(vapid, CONTEXT)
    sent = channel.send(message(address=addressed(old, new)))
    channel.close()
    assert sent.gone == (old.endpoint,)
    assert [got.path for got in receiver.delivered()] == ["/push/2"]


def test_a_push_with_every_subscription_gone_gives_up(
    receiver: Receiver, vapid: dict[str, Any]
) -> None:
    receiver.always = (404, {}, b"")
    channel = WebPushChannel(vapid, CONTEXT)
    with pytest.raises(GiveUp, match="no live subscription"):
        channel.send(message(address=addressed(Browser.subscribe(receiver.url + "/push/1"))))
    channel.close()


def test_a_push_service_throttling_is_tried_later(
    receiver: Receiver, vapid: dict[str, Any]
) -> None:
    receiver.always = (429, {"Retry-After": "30"}, b"slow down")
    channel = WebPushChannel(vapid, CONTEXT)
    with pytest.raises(RetryLater, match=r"429 from 127.0.0.1") as raised:
        channel.send(message(address=addressed(Browser.subscribe(receiver.url + "/push/1"))))
    channel.close()
    assert raised.value.retry_after == 30.0
    assert "/push/1" not in str(raised.value)


def test_a_push_service_refusing_the_message_gives_up(
    receiver: Receiver, vapid: dict[str, Any]
) -> None:
    receiver.always = (413, {}, b"payload too large")
    channel = WebPushChannel(vapid, CONTEXT)
    with pytest.raises(GiveUp, match=r"413 from 127.0.0.1:\d+: payload too large") as raised:
        channel.send(message(address=addressed(Browser.subscribe(receiver.url + "/push/1"))))
    channel.close()
    assert vapid["vapid_private_key"] not in str(raised.value)
