"""Email over SMTP: one connection kept open across sends, opened again when dropped.

A message with HTML is multipart/alternative of its text and its HTML; one without is
its text alone (text/plain). Each carries a `Message-ID` derived from the send key: a
message handed again after a crash carries the same id, which mail systems and clients
use to drop the duplicate. A marketing message carries `List-Unsubscribe` and one-click
`List-Unsubscribe-Post` (RFC 8058).

An email to a plain ASCII address is written straight to the bytes handed to the
server, for a fraction of the cost of the stdlib's `EmailMessage`: CRLF line ends, header
lines folded at 78 characters (998 at most), a header that is not plain ASCII as RFC 2047
encoded-words of UTF-8, a body in 7bit when it is ASCII in short lines, else in
quoted-printable, or base64 for text mostly in another script (much shorter). Every
other email (a non-ASCII address, sent with SMTPUTF8; an address of another shape) is
written by `EmailMessage`. A header of more than one line is refused either way.

What the server answers decides the failure: a 4xx or no answer is tried later; a 5xx to
the message (its sender, recipient or content) fails it with the server's words; a 5xx
to the connection itself (a refused login) is an error of the configuration, tried
again a few times.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import random
import re
import smtplib
import ssl
import threading
from collections.abc import Mapping
from email.errors import MessageError
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, parseaddr
from typing import Any

from ariane.channels import Context, Message, Sent, register
from ariane.services.bus import GiveUp, RetryLater

SECURITIES = ("none", "starttls", "ssl")
_DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}

_CRLF = "\r\n"
# RFC 5322: a line SHOULD be at most 78 characters, and MUST be at most 998.
_FOLD_AT = 78
_LINE_LIMIT = 998
# RFC 2047: an encoded-word is at most 75 characters, 12 of them `=?utf-8?b?` and `?=`.
_WORD_BYTES = (75 - 12) // 4 * 3
# The addresses written straight to bytes: a dot-atom of the usual characters, at an
# ASCII domain. Any other (a display name, quotes, a comment, `=?`, non-ASCII, a line
# break) is written by `EmailMessage`.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


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
        # From and Reply-To are the same in every email: written once, as the SMTP policy
        # writes them. None: emails are written by `EmailMessage` only.
        self._fixed_lines = self._write_fixed_lines()
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
        return Sent(provider_id=message_id(message.send_key, self.domain), detail=answer)

    def compose(self, message: Message) -> bytes:
        """The email as it is handed to the server (DATA): CRLF line ends, no line above
        998 characters. A ValueError if the message cannot be written as an email."""
        if self._fixed_lines is None or not _plain_address(message.address):
            return self._compose_message(message)
        sender, reply_to = self._fixed_lines
        lines = [_unstructured("Subject", message.subject), sender, f"To: {message.address}"]
        if reply_to is not None:
            lines.append(reply_to)
        lines += [
            f"Date: {format_datetime(self.clock())}",
            f"Message-ID: {message_id(message.send_key, self.domain)}",
            _unstructured("X-Ariane-Send-Key", message.send_key),
        ]
        if message.unsubscribe_url:
            lines.append(_unstructured("List-Unsubscribe", f"<{message.unsubscribe_url}>"))
            lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        lines.append("MIME-Version: 1.0")
        text = _text_part("plain", message.text)
        if not message.html:
            lines.append(text)
            return _CRLF.join(lines).encode("ascii")
        html = _text_part("html", message.html)
        boundary = _boundary()
        while boundary in text or boundary in html:
            boundary = _boundary()
        # As the stdlib writes it: the line break ending a part's body is its own, and
        # the one before the next delimiter belongs to the delimiter.
        lines += [
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            f"--{boundary}",
            text,
            f"--{boundary}",
            html,
            f"--{boundary}--",
            "",
        ]
        return _CRLF.join(lines).encode("ascii")

    def _compose_message(self, message: Message) -> bytes:
        """The email written by `EmailMessage`: for an address that is not plain ASCII
        (with SMTPUTF8), or a sender the SMTP policy cannot write once for all."""
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
        return email.as_bytes(policy=SMTPUTF8 if self._international(message.address) else SMTP)

    def _write_fixed_lines(self) -> tuple[str, str | None] | None:
        """The From and Reply-To lines, or None when an email cannot be written without
        `EmailMessage` (a non-ASCII sender) or the SMTP policy cannot write them."""
        if not _plain_address(self.envelope_from):
            return None
        try:
            sender = _address_line("From", self.sender)
            reply_to = _address_line("Reply-To", self.reply_to) if self.reply_to else None
        except (ValueError, MessageError):
            # Left to `EmailMessage`, which refuses them for each email as it did.
            return None
        return sender, reply_to

    def _international(self, to: str) -> bool:
        return not (to.isascii() and self.envelope_from.isascii())

    def close(self) -> None:
        with self._lock:
            if self._smtp is not None:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    self._smtp.quit()
            self._smtp = None

    def _attempt(self, email: bytes, to: str) -> str:
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

    def _hand_over(self, email: bytes, to: str) -> str:
        """MAIL, RCPT and DATA on the kept connection; the server's last answer. A
        refusal is followed by RSET, so that the connection serves the next send."""
        smtp = self._connection()
        international = self._international(to)
        if international and not smtp.has_extn("smtputf8"):
            raise GiveUp(f"{self.host} cannot take the non-ASCII address {to!r}")
        code, said = smtp.mail(self.envelope_from, ["SMTPUTF8"] if international else [])
        if code == 250:
            code, said = smtp.rcpt(to)
        if code in (250, 251):
            try:
                code, said = smtp.data(email)
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


def _plain_address(address: str) -> bool:
    return len(address) <= 254 and _PLAIN_ADDRESS.fullmatch(address) is not None


def _address_line(name: str, value: str) -> str:
    """`name: value`, an address header, exactly as `EmailMessage` writes it with the
    SMTP policy (ASCII, folded, without the final CRLF)."""
    header = SMTP.header_store_parse(name, value)[1]
    return SMTP.fold_binary(name, header).decode("ascii").removesuffix(_CRLF)


def _unstructured(name: str, value: str) -> str:
    """`name: value` as header lines (without the final CRLF), reading back as `value`.

    Printable ASCII is written as it is, folded at spaces; anything else (non-ASCII,
    control characters, leading or trailing spaces a reader would drop, `=?` a reader
    would decode, a word too long for a line) as encoded-words."""
    if len(value.splitlines()) > 1:
        # As `EmailMessage` refuses it: it would be read as a header of its own.
        raise ValueError(f"the {name} header holds a line break")
    # A line break ending it, which `EmailMessage` lets through onto the wire (where it
    # ends the headers for some readers): dropped.
    value = value.removesuffix("\n").removesuffix("\r")
    start = f"{name}: "
    if (
        value.isascii()
        and value.isprintable()
        and "=?" not in value
        and not value.startswith(" ")
        and not value.endswith(" ")
    ):
        if len(start) + len(value) <= _FOLD_AT:
            return start + value
        folded = _fold(start, value)
        if folded is not None:
            return folded
    return start + _encoded_words(value, len(start))


def _fold(start: str, value: str) -> str | None:
    """`start` and `value` in lines of at most 78 characters, broken before a space
    (where a reader joins them again), or None if a word is too long for any line."""
    lines = []
    line = start
    for n, word in enumerate(value.split(" ")):
        if n == 0:
            line += word
        elif word and len(line) + 1 + len(word) > _FOLD_AT:
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    if any(len(each) > _LINE_LIMIT for each in lines):
        return None
    return _CRLF.join(lines)


def _encoded_words(value: str, used: int) -> str:
    """`value` as RFC 2047 encoded-words of its UTF-8 in base64, one per line, the first
    after `used` characters. Each holds whole characters, so that it decodes alone."""
    data = value.encode()
    words = []
    start = 0
    # The first word fits the line after the header's name; the others, a line of their own.
    room = max(4, min(_WORD_BYTES, (_FOLD_AT - used - 12) // 4 * 3))
    while start < len(data):
        end = min(start + room, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1  # not inside a character: back to its first byte
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
        room = _WORD_BYTES
    return (_CRLF + " ").join(words)


def _text_part(subtype: str, content: str) -> str:
    """The Content-Type and Content-Transfer-Encoding lines, a blank line and the body of
    `content`, which ends with a line break (one is added, as the stdlib does)."""
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    if not content.endswith("\n"):
        content += "\n"
    if content.isascii() and "\0" not in content and max(map(len, content.split("\n"))) <= _FOLD_AT:
        encoding, body = "7bit", content
    else:
        data = content.encode()
        quoted = binascii.b2a_qp(data)
        # Quoted-printable keeps the ASCII readable but takes 3 characters for each
        # other byte, base64 4 for every 3 bytes: it is used for text mostly in another
        # script (Greek, Cyrillic, CJK, ...), where quoted-printable is half as long again.
        if len(quoted) <= (len(data) + 2) // 3 * 4 * 3 // 2:
            encoding, body = "quoted-printable", quoted.decode("ascii")
        else:
            encoding, body = "base64", base64.encodebytes(data).decode("ascii")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}'
        f"Content-Transfer-Encoding: {encoding}{_CRLF}{_CRLF}" + body.replace("\n", _CRLF)
    )


def _boundary() -> str:
    # `=_` is in no quoted-printable or base64 body; a 7bit one is checked.
    return f"=_{random.getrandbits(96):024x}"


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
