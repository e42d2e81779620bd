"""Destinations: other tools that receive what Ariane knows, as Segment-spec messages.

A destination is declared as code (YAML or JSON), with a type, what it receives, and
its settings:

    id: crm
    type: webhook                        # or segment (any Segment-spec /v1/batch)
    receives:
      events:                            # events as they are stored
        types: [track, identify]         # absent: every type
        names: [Order Completed]         # track events of these names only
        where: [{property: revenue, op: gte, value: 100}]
        traits: [email, plan]            # identify calls setting one of these only
      audiences:                         # people entering or leaving segments
        - {segment: big-spenders, changes: [entered, exited]}
    settings: {url: https://..., secret: ..., headers: {...}, rate_limit: 20}
    start: now                           # or beginning: what is stored already too

Secrets (a webhook's `secret` and header values, a forward's `write_key`) are kept
but never shown: `shown` masks them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from ariane.domain.clock import iso
from ariane.domain.definitions import PropertyTests, duration, keyed, listed, property_tests, whole
from ariane.domain.events import AudienceChange, SegmentEntered, StoredEvent
from ariane.domain.predicates import (
    InvalidDefinition,
    lookup,
)

TYPES = ("webhook", "segment")
EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
CHANGES = ("entered", "exited")
MASK = "********"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEYS = ("id", "type", "receives", "settings", "start", "enabled", "description")
_SETTINGS: dict[str, tuple[str, ...]] = {
    "webhook": ("url", "headers", "secret", "rate_limit", "timeout"),
    "segment": ("url", "write_key", "rate_limit", "timeout", "batch_size"),
}
# What settings hold secrets, never shown: whole values, or every value of an object.
_SECRET = {"secret", "write_key"}
_SECRET_VALUES = {"headers"}
DEFAULT_TIMEOUT = timedelta(seconds=10)
DEFAULT_BATCH = 100


@dataclass(frozen=True, slots=True)
class Filter:
    """Which stored events a destination receives."""

    types: frozenset[str] | None = None
    names: frozenset[str] | None = None
    where: PropertyTests = ()
    traits: frozenset[str] | None = None

    def takes(self, event: StoredEvent) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        if self.names is not None and (event.type != "track" or event.event not in self.names):
            return False
        payload = event.payload
        if self.traits is not None:
            traits = payload.get("traits") or (payload.get("context") or {}).get("traits") or {}
            if event.type != "identify" or not any(name in traits for name in self.traits):
                return False
        if self.where:
            document = payload.get("traits" if event.type == "identify" else "properties")
            document = document if isinstance(document, Mapping) else {}
            return all(test(lookup(document, parts), event.timestamp) for parts, test in self.where)
        return True


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    type: str
    settings: Mapping[str, Any]
    events: Filter | None = None
    # Segment names, each with the changes the destination receives.
    audiences: Mapping[str, frozenset[str]] = field(default_factory=dict)
    start: str = "now"
    enabled: bool = True
    description: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)

    def takes_change(self, change: AudienceChange) -> bool:
        wanted = self.audiences.get(change.segment)
        kind = "entered" if isinstance(change, SegmentEntered) else "exited"
        return wanted is not None and kind in wanted

    @property
    def timeout(self) -> float:
        found = self.settings.get("timeout")
        return (found or DEFAULT_TIMEOUT).total_seconds()

    @property
    def rate_limit(self) -> float | None:
        found = self.settings.get("rate_limit")
        return None if found is None else float(found)


def parse_destination(
    raw: Any, path: str = "destination", known: Mapping[str, Any] | None = None
) -> Destination:
    """A destination from its definition, or `InvalidDefinition` naming the faulty path.
    `known` is the definition stored before: a secret given as the mask keeps its value."""
    node = keyed(raw, path, _KEYS)
    ident = node.get("id")
    if not isinstance(ident, str) or not _ID.match(ident):
        raise InvalidDefinition(
            "needs an id of 1 to 63 lowercase letters, digits, '-' or '_'", field=f"{path}.id"
        )
    kind = node.get("type")
    if kind not in TYPES:
        raise InvalidDefinition(f"needs a type: {' or '.join(TYPES)}", field=f"{path}.type")
    start = node.get("start", "now")
    if start not in ("now", "beginning"):
        raise InvalidDefinition("is now or beginning", field=f"{path}.start")
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidDefinition("is true or false", field=f"{path}.enabled")
    description = node.get("description", "")
    if not isinstance(description, str) or len(description) > 2000:
        raise InvalidDefinition(
            "is a text of at most 2,000 characters", field=f"{path}.description"
        )
    settings = _unmasked(node.get("settings", {}), (known or {}).get("settings", {}))
    definition = {**node, "settings": settings}
    receives = keyed(node.get("receives", {}), f"{path}.receives", ("events", "audiences"))
    events = receives.get("events")
    audiences = receives.get("audiences", [])
    if events is None and not audiences:
        raise InvalidDefinition(
            "receives nothing: give events, audiences, or both", field=f"{path}.receives"
        )
    return Destination(
        id=ident,
        type=kind,
        settings=_settings(kind, settings, f"{path}.settings"),
        events=None if events is None else _filter(events, f"{path}.receives.events"),
        audiences=_audiences(audiences, f"{path}.receives.audiences"),
        start=start,
        enabled=enabled,
        description=description,
        definition=definition,
    )


def _unmasked(settings: Any, before: Mapping[str, Any]) -> Any:
    """Settings where a secret sent back as the mask keeps the value it had."""
    if not isinstance(settings, Mapping):
        return settings
    found = dict(settings)
    for name in _SECRET:
        if found.get(name) == MASK and name in before:
            found[name] = before[name]
    for name in _SECRET_VALUES:
        values, old = found.get(name), before.get(name)
        if isinstance(values, Mapping) and isinstance(old, Mapping):
            found[name] = {
                key: old[key] if value == MASK and key in old else value
                for key, value in values.items()
            }
    return found


def _settings(kind: str, raw: Any, path: str) -> dict[str, Any]:
    node = keyed(raw, path, _SETTINGS[kind])
    found: dict[str, Any] = {}
    url = node.get("url")
    if (
        not isinstance(url, str)
        or urlsplit(url).scheme not in ("http", "https")
        or not (urlsplit(url).netloc)
    ):
        raise InvalidDefinition("needs an http:// or https:// URL", field=f"{path}.url")
    found["url"] = url
    if "headers" in node:
        headers = keyed(node["headers"], f"{path}.headers", list(node["headers"] or {}))
        for name, value in headers.items():
            if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9-]{1,100}$", str(name)):
                raise InvalidDefinition(
                    "needs header names of letters, digits and '-', with text values",
                    field=f"{path}.headers.{name}",
                )
        found["headers"] = dict(headers)
    for name in ("secret", "write_key"):
        if name in node:
            value = node[name]
            if not isinstance(value, str) or not value or len(value) > 1000:
                raise InvalidDefinition(
                    "needs a text of 1 to 1,000 characters", field=f"{path}.{name}"
                )
            found[name] = value
    if kind == "segment" and "write_key" not in found:
        raise InvalidDefinition(
            "needs the write key of the receiving source", field=f"{path}.write_key"
        )
    if "rate_limit" in node:
        found["rate_limit"] = whole(node["rate_limit"], f"{path}.rate_limit", least=1, most=100_000)
    if "timeout" in node:
        found["timeout"] = duration(node["timeout"], f"{path}.timeout")
        if found["timeout"] > timedelta(minutes=5):
            raise InvalidDefinition("is at most PT5M", field=f"{path}.timeout")
    if "batch_size" in node:
        found["batch_size"] = whole(node["batch_size"], f"{path}.batch_size", least=1, most=2500)
    return found


def _names(value: Any, path: str, allowed: Sequence[str] | None = None) -> frozenset[str]:
    items = listed(value, path)
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item or len(item) > 200:
            raise InvalidDefinition("needs a name", field=f"{path}[{index}]")
        if allowed is not None and item not in allowed:
            raise InvalidDefinition(f"is one of {', '.join(allowed)}", field=f"{path}[{index}]")
    if not items:
        raise InvalidDefinition("needs at least one", field=path)
    return frozenset(items)


def _filter(raw: Any, path: str) -> Filter:
    node = keyed(raw or {}, path, ("types", "names", "where", "traits"))
    return Filter(
        types=_names(node["types"], f"{path}.types", EVENT_TYPES) if "types" in node else None,
        names=_names(node["names"], f"{path}.names") if "names" in node else None,
        where=property_tests(node.get("where", []), f"{path}.where"),
        traits=_names(node["traits"], f"{path}.traits") if "traits" in node else None,
    )


def _audiences(raw: Any, path: str) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for index, item in enumerate(listed(raw, path)):
        where = f"{path}[{index}]"
        if isinstance(item, str):
            item = {"segment": item}
        node = keyed(item, where, ("segment", "changes"))
        segment = node.get("segment")
        if not isinstance(segment, str) or not segment:
            raise InvalidDefinition("needs a segment's name", field=f"{where}.segment")
        changes = node.get("changes", list(CHANGES))
        found[segment] = _names(changes, f"{where}.changes", CHANGES)
    return found


def shown(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The definition as the API and the logs may show it: secrets masked."""
    settings = dict(definition.get("settings") or {})
    for name in _SECRET:
        if name in settings:
            settings[name] = MASK
    for name in _SECRET_VALUES:
        if isinstance(settings.get(name), Mapping):
            settings[name] = {key: MASK for key in settings[name]}
    return {**definition, "settings": settings}


# --- what is sent ------------------------------------------------------------------------


def delivery_id(destination: str, event_id: str) -> str:
    """The stable id of one message to one destination, the same however often it is
    sent: receivers drop duplicates by it (`Idempotency-Key`)."""
    return hashlib.sha256(f"{destination}\x00{event_id}".encode()).hexdigest()[:32]


def event_message(event: StoredEvent) -> dict[str, Any]:
    """A stored event as Segment's spec has it (what was received, normalised)."""
    return dict(event.payload)


@dataclass(frozen=True, slots=True)
class Person:
    """What a message about a person says of them."""

    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None


def audience_message(change: AudienceChange, person: Person) -> dict[str, Any]:
    """An `Audience Entered` / `Audience Exited` track call, as Segment Engage sends it to
    its destinations: the audience's key as a property, true while the person is in it."""
    key = audience_key(change.segment)
    message: dict[str, Any] = {
        "type": "track",
        "event": change.track_name,
        "messageId": change.event_id,
        "timestamp": iso(change.at),
        "properties": {"audience_key": key, key: isinstance(change, SegmentEntered)},
        "context": {
            "library": {"name": "ariane"},
            "personas": {
                "computation_class": "audience",
                "computation_id": change.segment_id,
                "computation_key": key,
                "namespace": "ariane",
            },
        },
    }
    if person.user_id is not None:
        message["userId"] = person.user_id
    if person.anonymous_id is not None:
        message["anonymousId"] = person.anonymous_id
    if person.user_id is None and person.anonymous_id is None:
        message["anonymousId"] = f"ariane-profile-{change.profile_id}"
    if person.email is not None:
        message["context"]["traits"] = {"email": person.email}
    return message


def audience_key(segment: str) -> str:
    """A segment's name as Engage keys audiences: lowercase words joined by '_'."""
    return re.sub(r"[^a-z0-9]+", "_", segment.lower()).strip("_") or "audience"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`X-Ariane-Signature`: HMAC-SHA256 over the timestamp, a dot and the body, as
    `t=<timestamp>,v1=<hex>`; the timestamp lets a receiver refuse old replays."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks to wait (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())
