"""Outbound adapters of the destinations, one per type, behind one Protocol.

The built-in types are registered in `SENDERS` exactly as one of a user's own would be
(`register`): a sender takes the messages for one destination, in order, and either
delivers them all or raises `RetryLater` (try again later: the receiver is down or
throttling), `GiveUp` (the receiver refuses them as wrong), or `Partial` (delivered the
first ones, then one of those).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ariane.domain.destinations import Destination


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to one destination: its stable delivery id, its Segment-spec body,
    and when Ariane received what it tells (for the delivery latency)."""

    delivery_id: str
    message: dict[str, Any]
    received_at: datetime


class Sender(Protocol):
    def send(self, destination: Destination, messages: Sequence[Outgoing]) -> None: ...

    def close(self) -> None: ...


SENDERS: dict[str, Callable[[Callable[[], datetime]], Sender]] = {}


def register(kind: str, make: Callable[[Callable[[], datetime]], Sender]) -> None:
    """Make `kind` a destination type, sent by what `make(clock)` builds."""
    SENDERS[kind] = make


# The modules of the built-in types; each registers its type when imported, as a user's
# own module would.
BUILT_IN = ("ariane.destinations.webhook", "ariane.destinations.forward")


def senders(clock: Callable[[], datetime]) -> dict[str, Sender]:
    """A sender of every registered type."""
    for module in BUILT_IN:
        importlib.import_module(module)
    return {kind: make(clock) for kind, make in SENDERS.items()}
