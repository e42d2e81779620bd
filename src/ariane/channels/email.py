"""Email over SMTP: one connection kept open across sends, opened again when dropped.

Each message is multipart/alternative (its text, and its HTML when it has one), with a
`Message-ID` derived from the send key: a message handed again after a crash carries
the same id, which mail systems and clients use to drop the duplicate. A marketing
message carries `List-Unsubscribe` and one-click `List-Unsubscribe-Post` (RFC 8058).

What the server answers decides the failure: a 4xx or no answer is tried later; a 5xx to
the message (its sender, recipient or content) fails it with the server's words; a 5xx
to the connection itself (a refused login) is an error of the configuration, tried
again a few times.
"""

from __future__ import annotations

import contextlib
import hashlib
import smtplib
import ssl
import threading
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, parseaddr
from typing import Any

from ariane.channels import Context, Message, Sent, register
from ariane.services.bus import GiveUp, RetryLater

SECURITIES = ("none", "starttls", "ssl")
_DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}


class SMTPRefused(Exception):
    """The server answered a step of the send with something other than success."""

    def __init__(self, code: int, answer: str) -> None:
        super().__init__(f"{code} {answer}")
        self.code = code


class EmailChannel:
    carries_key = True

    def __init__(self, settings: Mapping[str, Any], context: Context) -> None:
        self.clock = context.clock
        self.host = _required(settings, "host")
        self.security = settings.get("security") or "none"
        if self.security not in SECURITIES:
            raise ValueError(
                f"email channel: security must be one of {', '.join(SECURITIES)}, "
                f"not {self.security!r}"
            )
        self.port = int(_number(settings, "port", _DEFAULT_PORTS[self.security], int))
        self.timeout = _number(settings, "timeout", 10.0, float)
        self.sender = _required(settings, "from")
        self.envelope_from = parseaddr(self.sender)[1]
        if "@" not in self.envelope_from:
            raise ValueError(
                f"email channel: from must hold an address, as in "
                f"'Shop <news@shop.test>', not {self.sender!r}"
            )
        self.domain = self.envelope_from.rpartition("@")[2]
        self.reply_to = settings.get("reply_to")
        self.username = settings.get("username")
        self.password = settings.get("password")
        self.helo = settings.get("helo")
        self._smtp: smtplib.SMTP | None = None
        self._lock = threading.Lock()

    def send(self, message: Message) -> Sent:
        try:
            email = self.compose(message)
        except ValueError as error:
            raise GiveUp(f"the message cannot be written as an email: {error}") from None
        with self._lock:
            reused = self._smtp is not None
            try:
                answer = self._attempt(email, message.address)
            except smtplib.SMTPServerDisconnected as error:
                if not reused:
                    raise RetryLater(f"{self.host} closed the connection: {error}") from None
                # The kept connection was closed by the server since: open another, once.
                try:
                    answer = self._attempt(email, message.address)
                except smtplib.SMTPServerDisconnected as error:
                    raise RetryLater(f"{self.host} closed the connection: {error}") from None
        return Sent(provider_id=email["Message-ID"], detail=answer)

    def compose(self, message: Message) -> EmailMessage:
        email = EmailMessage()
        email["Subject"] = message.subject
        email["From"] = self.sender
        email["To"] = message.address
        if self.reply_to:
            email["Reply-To"] = self.reply_to
        email["Date"] = format_datetime(self.clock())
        email["Message-ID"] = message_id(message.send_key, self.domain)
        email["X-Ariane-Send-Key"] = message.send_key
        if message.unsubscribe_url:
            email["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
            email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        email.set_content(message.text)
        if message.html:
            email.add_alternative(message.html, subtype="html")
        return email

    def close(self) -> None:
        with self._lock:
            if self._smtp is not None:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    self._smtp.quit()
            self._smtp = None

    def _attempt(self, email: EmailMessage, to: str) -> str:
        """The server's answer to the message, or what the bus makes of a failure; a
        dropped connection is raised as it is, for `send` to open another."""
        try:
            return self._hand_over(email, to)
        except SMTPRefused as refused:
            if 400 <= refused.code < 500:
                raise RetryLater(f"{self.host} answered {refused}") from None
            raise GiveUp(f"{self.host} refused the message: {refused}") from None
        except smtplib.SMTPServerDisconnected:
            self._drop()
            raise
        except Exception as error:
            self._drop()
            raise self._failure(error) from None

    def _hand_over(self, email: EmailMessage, to: str) -> str:
        """MAIL, RCPT and DATA on the kept connection; the server's last answer. A
        refusal is followed by RSET, so that the connection serves the next send."""
        smtp = self._connection()
        international = not (to.isascii() and self.envelope_from.isascii())
        if international and not smtp.has_extn("smtputf8"):
            raise GiveUp(f"{self.host} cannot take the non-ASCII address {to!r}")
        code, said = smtp.mail(self.envelope_from, ["SMTPUTF8"] if international else [])
        if code == 250:
            code, said = smtp.rcpt(to)
        if code in (250, 251):
            try:
                code, said = smtp.data(email.as_bytes(policy=SMTPUTF8 if international else SMTP))
            except smtplib.SMTPDataError as refused:
                code, said = refused.smtp_code, _bytes(refused.smtp_error)
        if code == 421:
            # Closing the connection (an idle one timed out): no message was taken.
            raise smtplib.SMTPServerDisconnected(f"{code} {said.decode(errors='replace')}")
        if code != 250:
            smtp.rset()
            raise SMTPRefused(code, said.decode(errors="replace"))
        return f"{code} {said.decode(errors='replace')}"

    def _failure(self, error: Exception) -> Exception:
        """What the bus makes of a failure outside the message's own steps."""
        if isinstance(error, GiveUp | RetryLater):
            return error
        if isinstance(error, ssl.SSLCertVerificationError):
            return RuntimeError(f"{self.host}'s certificate is not trusted: {error}")
        if isinstance(error, smtplib.SMTPResponseException):
            # Refused before any message: the greeting, HELO, STARTTLS or the login.
            said = f"{error.smtp_code} {_bytes(error.smtp_error).decode(errors='replace')}"
            if 400 <= error.smtp_code < 500:
                return RetryLater(f"{self.host} answered {said}")
            return RuntimeError(f"{self.host} refused the connection: {said}")
        if isinstance(error, smtplib.SMTPNotSupportedError):
            return RuntimeError(f"{self.host}: {error}")
        if isinstance(error, OSError):
            return RetryLater(f"no answer from {self.host}:{self.port}: {error}")
        return error

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        tls = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, self.helo, timeout=self.timeout, context=tls
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, self.helo, timeout=self.timeout)
        try:
            smtp.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                smtp.starttls(context=tls)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None


def message_id(send_key: str, domain: str) -> str:
    """The same send key always gives the same `Message-ID`."""
    return f"<{hashlib.sha256(send_key.encode()).hexdigest()[:32]}@{domain}>"


def _required(settings: Mapping[str, Any], name: str) -> str:
    value = settings.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"email channel: the setting {name!r} is required")
    return value


def _number(settings: Mapping[str, Any], name: str, default: float, kind: type[float]) -> float:
    value = settings.get(name)
    if value is None:
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"email channel: {name} must be a number, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"email channel: {name} must be above 0, not {value!r}")
    return number


def _bytes(said: bytes | str) -> bytes:
    return said if isinstance(said, bytes) else said.encode()


register(
    "email",
    EmailChannel,
    settings=("port", "reply_to", "username", "security", "timeout", "helo"),
    required=("host", "from"),
    secrets=("password",),
    default_address="traits.email",
)
