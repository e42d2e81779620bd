"""Channels: how a message reaches a person, one adapter per type behind one Protocol.

A channel is configured as code or through the API (`domain.channels`): a name, a type,
the consent purpose its marketing messages need, which identifier or trait addresses the
person, and the type's settings. The built-in types (email over SMTP, Apprise, webhook,
web push, the in-app inbox) are registered exactly as one of a user's own would be:
`register` in a module named by the `ariane.channels` entry point group, or imported
before Ariane starts.

A channel is given one message at a time, already rendered, with its send key: the
deterministic key of that send (journey, version, enrollment, step, occurrence). It
returns once the provider took the message, or raises what the bus makes of a failure:
`RetryLater` (the provider is down or throttling: 429, an SMTP 4xx, no answer; with
`retry_after` when it said how long), `GiveUp` (the provider refused the message for
good: a 4xx, an SMTP 5xx; the message is failed with the provider's answer), any other
exception (tried again a few times, then failed).

`carries_key` says whether the provider sees the send key and drops a second message
with the same key (an email's `Message-ID`, a webhook's `Idempotency-Key`, the inbox's
unique key): a message whose hand-over was interrupted by a crash is then handed again
with the same key; on a channel that does not carry it, it is marked `unknown` instead,
never sent blindly twice.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, Protocol

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ariane.channels"


@dataclass(frozen=True, slots=True)
class Message:
    """One message to one person on one channel, rendered."""

    send_key: str
    profile_id: str
    # Where it goes: an email address, a phone number, a chat id, a user id; for web
    # push, the person's subscriptions as a JSON array.
    address: str
    subject: str
    text: str
    html: str | None = None
    # What else the template gave (a title, a link, an image, ...), for push and inbox.
    data: Mapping[str, Any] = field(default_factory=dict)
    category: str = "marketing"
    # The signed one-click unsubscribe link (RFC 8058), for marketing messages.
    unsubscribe_url: str | None = None
    # Which journey step sent it, for receivers that report on it.
    journey: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """What the provider said: its own id for the message, if any, and for web push the
    subscriptions it said are gone (410, 404), which are then forgotten."""

    provider_id: str | None = None
    detail: str = ""
    gone: tuple[str, ...] = ()


class Channel(Protocol):
    carries_key: bool

    def send(self, message: Message) -> Sent: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What Ariane gives a channel when it builds one."""

    clock: Callable[[], datetime]
    # Stores a message in the person's in-app inbox, once per send key; its id.
    inbox: Callable[[Message], str] | None = None


# Builds a channel from its settings (checked against `ChannelType.settings`).
Factory = Callable[[Mapping[str, Any], Context], Channel]


@dataclass(frozen=True, slots=True)
class ChannelType:
    kind: str
    make: Factory
    # The settings it takes, those it needs, and those that are secrets: kept, used,
    # never shown nor logged.
    settings: frozenset[str]
    required: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    # Settings whose every value is a secret (a webhook's headers).
    secret_values: frozenset[str] = frozenset()
    # What the channel needs to address a person by default, when its configuration
    # names nothing (an email channel: the email trait).
    default_address: str | None = None


TYPES: dict[str, ChannelType] = {}


def register(
    kind: str,
    make: Factory,
    *,
    settings: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    secrets: tuple[str, ...] = (),
    secret_values: tuple[str, ...] = (),
    default_address: str | None = None,
) -> None:
    """Make `kind` a channel type, built by `make(settings, context)`."""
    TYPES[kind] = ChannelType(
        kind,
        make,
        frozenset(settings) | frozenset(required) | frozenset(secrets) | frozenset(secret_values),
        frozenset(required),
        frozenset(secrets),
        frozenset(secret_values),
        default_address,
    )


# The modules of the built-in types; each registers its type when imported, as a user's
# own module would.
BUILT_IN = (
    "ariane.channels.email",
    "ariane.channels.apprise",
    "ariane.channels.webhook",
    "ariane.channels.webpush",
    "ariane.channels.inbox",
)
_loaded = False


def channel_types() -> dict[str, ChannelType]:
    """Every registered type: the built-in ones, then those of the `ariane.channels`
    entry points (each a module that calls `register` when imported)."""
    global _loaded
    if not _loaded:
        for module in BUILT_IN:
            importlib.import_module(module)
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                point.load()
            except Exception:
                log.exception("channel type %s cannot be loaded", point.name)
        _loaded = True
    return dict(TYPES)
