"""A real SMTP server on localhost (aiosmtpd) that records what it accepts, or refuses
as a test tells it."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Mailbox:
    """An SMTP server's handler: records what it accepts, or refuses as told."""

    refuse_rcpt: str | None = None
    refuse_data: str | None = None
    received: list[tuple[Envelope, Any]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_data:
            return self.refuse_data
        self.received.append((envelope, session.peer))
        return f"250 OK queued as q{len(self.received)}"

    def emails(self) -> list[EmailMessage]:
        found = []
        for envelope, _ in self.received:
            assert isinstance(envelope.content, bytes)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            found.append(parsed)
        return found


@dataclass
class SMTPServer:
    mailbox: Mailbox
    port: int


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, timeout=1)
    controller.start()
    try:
        yield SMTPServer(mailbox, port)
    finally:
        controller.stop()
