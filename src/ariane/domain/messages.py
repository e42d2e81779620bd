"""Segment-spec messages: validation and normalisation of one incoming event.

A message is checked field by field; the first problem raises `InvalidEvent` naming
the field, so a quarantined event says exactly what its sender must fix.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.errors import InvalidEvent

MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
# The source of the events Ariane records itself (Audience Entered/Exited): never a
# person's behaviour.
INTERNAL_SOURCE = "ariane"
# The source of the events loyalty records (its movements, and the sales tills send it):
# unlike Ariane's Audience events, segments may count them; earn rules never read them.
LOYALTY_SOURCE = "loyalty"
# The source of what became of the messages journeys send (Message Sent, Opened, ...).
MESSAGES_SOURCE = "messages"
# Stored in indexed columns of this width (storage.tables.events).
MAX_NAME_LENGTH = 200
# An event dated further ahead of its receipt than this comes from a clock that is wrong:
# kept, it would hold a trait or a consent against every later change.
MAX_AHEAD = timedelta(days=1)
# An event dated before this comes from a clock or a field never set: the zero dates of
# Go and .NET (0001-01-01) and of Unix time (1970-01-01).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# The width of identities.value (storage.tables): a longer id cannot be stored.
MAX_ID_LENGTH = 512
# How deep each field of an event may nest objects and arrays (`{"a": {"b": 1}}` is two
# levels): more than any real payload needs, and far within the 254 levels orjson writes,
# which every answer wrapping an event (a timeline page, a webhook) must stay within.
MAX_DEPTH = 64
_OBJECT_FIELDS = ("context", "traits", "properties", "integrations")


@dataclass(slots=True)
class Message:
    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    event: str | None
    timestamp: datetime
    received_at: datetime
    payload: dict[str, Any]

    @property
    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = self.payload.get("context") or {}
        return context

    @property
    def traits(self) -> dict[str, Any]:
        traits: dict[str, Any] = self.payload.get("traits") or {}
        return traits

    @property
    def properties(self) -> dict[str, Any]:
        properties: dict[str, Any] = self.payload.get("properties") or {}
        return properties


@functools.lru_cache(maxsize=64)
def _batch_iso(moment: datetime) -> str:
    # receivedAt and a batch's sentAt are the same for every event of a request.
    return iso(moment)


def _optional_id(raw: dict[str, Any], key: str, limit: int | None = None) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidEvent(f"{key} must be a string or a number", field=key)
    text = str(value).strip()
    if limit is not None and len(text) > limit:
        raise InvalidEvent(f"{key} is {len(text)} characters long; at most {limit}", field=key)
    return text or None


def _timestamp(raw: dict[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{key} must be an ISO-8601 string", field=key)
    try:
        return parse_timestamp(value)
    except ValueError:
        raise InvalidEvent(
            f"{key} {value!r} is not ISO-8601; send e.g. 2024-05-01T12:00:00.000Z", field=key
        ) from None


def _printable(text: str) -> str:
    """`text` with its NUL characters and lone surrogates written as escapes, for a
    message that names where they are."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode()
    return text.replace("\x00", "\\u0000")


def _text_flaw(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000), which cannot be stored; remove it"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            lone = _printable(text[exc.start : exc.end])
            return f"a lone surrogate ({lone}), which is not valid Unicode; send UTF-8 text"
    return None


# What `_flaw` says of a value nested too deep.
_TOO_DEEP = "too deep"
# The whole numbers orjson writes.
_SMALLEST, _LARGEST = -(2**63), 2**64 - 1


def _flaw(value: Any, levels: int) -> tuple[list[Any], str] | None:
    """What in `value`, found `levels` deep, no database can store: the path to it, from
    the innermost key, and why; None when it is all storable."""
    if isinstance(value, str):
        flaw = _text_flaw(value)
        return None if flaw is None else ([], flaw)
    if isinstance(value, int) and not _SMALLEST <= value <= _LARGEST:
        return [], "a whole number beyond 64 bits, which JSON columns do not hold; send text"
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    if levels == MAX_DEPTH:
        return [], _TOO_DEEP
    for key, item in items:
        flaw = _text_flaw(key) if isinstance(key, str) else None
        if flaw is not None:
            return [key], flaw
        found = _flaw(item, levels + 1)
        if found is not None:
            found[0].append(key)
            return found
    return None


def _refuse_unstorable(parts: Mapping[str, Any]) -> None:
    """Raise `InvalidEvent` naming the first field of `parts` that holds what no database
    can store: a NUL character (PostgreSQL takes none in text or JSON), a lone surrogate
    (not valid Unicode), or objects and arrays nested more than `MAX_DEPTH` levels deep."""
    for key, value in parts.items():
        field = _printable(key) or "(event)"
        flaw = _text_flaw(key)
        found = ([], flaw) if flaw is not None else _flaw(value, 0)
        if found is None:
            continue
        path, why = found
        if why == _TOO_DEEP:
            raise InvalidEvent(
                f"{field} nests objects and arrays more than {MAX_DEPTH} levels deep;"
                f" flatten it to {MAX_DEPTH} at most",
                field=field,
            )
        where = field + "".join(
            f"[{step}]" if isinstance(step, int) else f".{_printable(str(step))}"
            for step in reversed(path)
        )
        raise InvalidEvent(f"{where[:200]} holds {why}", field=field)


# JSON text reduced to its quotes and brackets, then to one kind of bracket.
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_ONE_KIND = bytes.maketrans(b"[]", b"{}")


def _deeper_than(encoded: bytes, levels: int) -> bool | None:
    """Whether JSON text as orjson writes it nests objects and arrays more than `levels`
    deep, told from its brackets at the speed of bytes methods; None when a string holds
    a bracket or an escaped quote, which cannot be told from the structure that way."""
    if encoded.count(b"{") + encoded.count(b"[") <= levels:
        return False
    if b'\\"' in encoded:
        return None
    # A string that holds no bracket leaves two quotes side by side, taken away here.
    brackets = encoded.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in brackets:
        return None
    brackets = brackets.translate(_ONE_KIND)
    for _ in range(levels):
        # The innermost objects and arrays, taken away level by level.
        brackets = brackets.replace(b"{}", b"")
        if not brackets:
            return False
    return True


def _encoded(parts: Mapping[str, Any]) -> bytes:
    """`parts` as JSON, once checked that either database can store them."""
    try:
        encoded = orjson.dumps(parts)
    except TypeError as exc:
        # Nested beyond what orjson writes, or not valid Unicode: say where.
        _refuse_unstorable(parts)
        raise InvalidEvent(f"the event cannot be written as JSON: {exc}", field="(event)") from None
    # Told from the text, and walked only when it may hold a flaw: a NUL is written as
    # \u0000 (so is a literal backslash-u0000 text), and the fields of `parts` are one
    # level below the text's own.
    if b"\\u0000" in encoded or _deeper_than(encoded, MAX_DEPTH + 1) is not False:
        _refuse_unstorable(parts)
    return encoded


def check_storable(parts: Mapping[str, Any]) -> None:
    """Refuse, naming the field, what no database can store: a NUL character, a lone
    surrogate, objects and arrays nested more than `MAX_DEPTH` levels deep."""
    _encoded(parts)


def check_batch(context: dict[str, Any] | None, integrations: dict[str, Any] | None) -> None:
    """What a batch merges into every one of its events, checked once for the batch."""
    check_storable({"context": context or {}, "integrations": integrations or {}})


def parse_message(
    raw: Any,
    *,
    received_at: datetime,
    type_hint: str | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    batch_sent_at: datetime | None = None,
    max_bytes: int = 32 * 1024,
) -> Message:
    """Validate one event and return it normalised, or raise `InvalidEvent`.

    The batch-level context and integrations are merged in, but checked once for the
    batch by `check_batch`, not here for each event.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("each event must be a JSON object", field="(event)")
    encoded = _encoded(raw)
    if len(encoded) > max_bytes:
        raise InvalidEvent(
            f"event is {len(encoded)} bytes; the limit is {max_bytes} bytes per event",
            field="(event)",
        )
    msg_type = raw.get("type", type_hint) if type_hint is None else type_hint
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        raise InvalidEvent(
            f"type {msg_type!r} is not one of {', '.join(sorted(MESSAGE_TYPES))}", field="type"
        )
    for key in _OBJECT_FIELDS:
        if key in raw and raw[key] is not None and not isinstance(raw[key], dict):
            raise InvalidEvent(f"{key} must be a JSON object", field=key)

    user_id = _optional_id(raw, "userId")
    anonymous_id = _optional_id(raw, "anonymousId")
    if msg_type == "alias":
        # The id the alias links to must be one a profile can hold, as previousId must.
        if _optional_id(raw, "userId", MAX_ID_LENGTH) is None:
            raise InvalidEvent("alias needs userId, the id to link previousId to", field="userId")
        if _optional_id(raw, "previousId", MAX_ID_LENGTH) is None:
            raise InvalidEvent("alias needs previousId, the id being linked", field="previousId")
    elif user_id is None and anonymous_id is None:
        raise InvalidEvent(
            "every event needs a userId or an anonymousId", field="userId/anonymousId"
        )

    event_name: str | None = None
    if msg_type == "track":
        name = raw.get("event")
        if not isinstance(name, str) or not name.strip():
            raise InvalidEvent("track needs an event name (a non-empty string)", field="event")
        event_name = name.strip()
        if len(event_name) > MAX_NAME_LENGTH:
            raise InvalidEvent(
                f"event name is {len(event_name)} characters; at most {MAX_NAME_LENGTH}",
                field="event",
            )
    elif msg_type in ("page", "screen"):
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidEvent(f"{msg_type} name must be a string", field="name")
        event_name = name[:MAX_NAME_LENGTH] if name else name
    elif msg_type == "group" and _optional_id(raw, "groupId") is None:
        raise InvalidEvent("group needs a groupId", field="groupId")

    time_key = "originalTimestamp" if raw.get("originalTimestamp") is not None else "timestamp"
    original = _timestamp(raw, time_key)
    sent_at = _timestamp(raw, "sentAt") or batch_sent_at
    if original is None:
        timestamp = received_at
    elif sent_at is not None:
        # Segment's clock-skew correction: the device clock may be wrong, but the time
        # between the event and its sending is measured on that same clock.
        try:
            timestamp = received_at - (sent_at - original)
        except OverflowError:
            raise InvalidEvent(
                f"{time_key} and sentAt are too far apart to correct the device clock",
                field=time_key,
            ) from None
    else:
        timestamp = original
    if timestamp - received_at > MAX_AHEAD:
        raise InvalidEvent(
            f"{time_key} {iso(timestamp)} is more than {MAX_AHEAD.days} day ahead of its"
            " receipt;"
            + (
                " sentAt is earlier than the event: check both"
                if sent_at is not None
                else " fix the sending clock, or send sentAt so that Ariane can correct it"
            ),
            field=time_key,
        )
    if timestamp < EARLIEST:
        raise InvalidEvent(
            f"{time_key} {iso(timestamp)} is before {EARLIEST.date()}: a clock or a field"
            " never set;"
            + (
                " sentAt is later than the event by as much: check both"
                if sent_at is not None
                else " send the time of the event, or leave it out for the time of receipt"
            ),
            field=time_key,
        )

    message_id = _optional_id(raw, "messageId", MAX_NAME_LENGTH) or f"ariane-{uuid.uuid4()}"

    payload = dict(raw)
    payload["type"] = msg_type
    payload["messageId"] = message_id
    if batch_context:
        payload["context"] = {**batch_context, **(raw.get("context") or {})}
    if batch_integrations:
        payload["integrations"] = {**batch_integrations, **(raw.get("integrations") or {})}
    if original is not None:
        payload["originalTimestamp"] = iso(original)
    if sent_at is not None:
        payload["sentAt"] = _batch_iso(sent_at)
    payload["timestamp"] = payload["originalTimestamp"] if timestamp is original else iso(timestamp)
    payload["receivedAt"] = _batch_iso(received_at)
    payload.pop("writeKey", None)
    if user_id is not None:
        payload["userId"] = user_id
    if anonymous_id is not None:
        payload["anonymousId"] = anonymous_id

    return Message(
        type=msg_type,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        event=event_name,
        timestamp=timestamp,
        received_at=received_at,
        payload=payload,
    )
