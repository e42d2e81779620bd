"""Identity resolution: which identifiers an event carries and which person they lead to.

The resolver works on an in-memory `IdentityIndex` that the storage layer fills with the
identifiers already known for a batch. It decides, event by event, whether to create a
profile, attach identifiers to one, or merge several — and records what it refused.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from ariane.domain.messages import Message
from ariane.settings import IdentitySettings

BUILTIN_TYPES = ("user_id", "anonymous_id", "email", "phone", "device_id")

_BLOCKED_VALUES = frozenset(
    {
        "-1",
        "null",
        "none",
        "nil",
        "nan",
        "undefined",
        "unknown",
        "anonymous",
        "guest",
        "true",
        "false",
        "[object object]",
        "n/a",
    }
)
_ZEROS_AND_DASHES = re.compile(r"^[0-]*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TYPE_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Identifier:
    type: str
    value: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.value)


def is_blocked(value: str) -> bool:
    return bool(_ZEROS_AND_DASHES.match(value)) or value.lower() in _BLOCKED_VALUES


def normalise_type(raw: str) -> str:
    return _TYPE_NAME.sub("_", raw.strip().lower()).strip("_")


def normalise(
    id_type: str, raw: Any, *, default_phone_region: str | None = None
) -> Identifier | None:
    """The canonical form of an identifier, or None when the value cannot identify anyone."""
    if raw is None or isinstance(raw, (bool, dict, list)):
        return None
    value = unicodedata.normalize("NFC", str(raw)).strip()
    if not value or is_blocked(value):
        return None
    if id_type == "email":
        value = value.lower()
        if not _EMAIL.match(value):
            return None
    elif id_type == "phone":
        try:
            number = phonenumbers.parse(value, default_phone_region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_possible_number(number):
            return None
        value = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Identifier(id_type, value)


def extract_identifiers(message: Message, settings: IdentitySettings) -> list[Identifier]:
    """Every identifier the event carries, highest priority first, without duplicates."""
    context = message.context
    sources: list[dict[str, Any]] = []
    context_traits = context.get("traits")
    if isinstance(context_traits, dict):
        sources.append(context_traits)
    if message.type == "identify":
        sources.append(message.traits)
    properties = message.properties

    candidates: list[tuple[str, Any]] = [
        ("user_id", message.user_id),
        ("anonymous_id", message.anonymous_id),
    ]
    for traits in sources:
        candidates.append(("email", traits.get("email")))
        candidates.append(("phone", traits.get("phone")))
        for custom in settings.custom_types:
            candidates.append((custom, traits.get(custom)))
    if message.type == "track":
        candidates.append(("email", properties.get("email")))
        candidates.append(("phone", properties.get("phone")))
    device = context.get("device")
    if isinstance(device, dict):
        candidates.append(("device_id", device.get("id")))
    external = context.get("externalIds")
    if isinstance(external, list):
        for item in external:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                candidates.append((normalise_type(item["type"]), item.get("id")))
    if message.type == "alias":
        candidates.append(("anonymous_id", message.payload.get("previousId")))

    seen: set[tuple[str, str]] = set()
    found: list[Identifier] = []
    for id_type, raw in candidates:
        ident = normalise(id_type, raw, default_phone_region=settings.default_phone_region)
        if ident is not None and ident.key not in seen:
            seen.add(ident.key)
            found.append(ident)
    found.sort(key=lambda i: -settings.priority(i.type))
    return found


def alias_lookups(message: Message) -> list[Identifier]:
    """`alias` names a previous id that may be a user id rather than an anonymous id."""
    previous = message.payload.get("previousId")
    if message.type != "alias" or previous is None:
        return []
    ident = normalise("user_id", previous)
    return [ident] if ident is not None else []


@dataclass(slots=True)
class Dropped:
    identifier: Identifier
    reason: str


@dataclass(slots=True)
class Merge:
    survivor: str
    absorbed: str
    identifiers: list[Identifier]


@dataclass(slots=True)
class Resolution:
    profile_id: str
    created: bool = False
    attached: list[Identifier] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


@dataclass
class IdentityIndex:
    """The identifiers known to a batch, and the limited-type values each profile holds."""

    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    held: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def load(self, rows: Iterable[tuple[str, str, str]]) -> None:
        for id_type, value, profile_id in rows:
            self.owners[(id_type, value)] = profile_id
            self.held.setdefault(profile_id, {}).setdefault(id_type, set()).add(value)


def _new_profile_id() -> str:
    return uuid.uuid4().hex


class Resolver:
    def __init__(self, settings: IdentitySettings, index: IdentityIndex) -> None:
        self.settings = settings
        self.index = index

    def _fits(self, held: dict[str, set[str]], adding: dict[str, set[str]]) -> bool:
        for id_type, limit in self.settings.limits.items():
            values = held.get(id_type, set()) | adding.get(id_type, set())
            if len(values) > limit:
                return False
        return True

    def resolve(self, identifiers: list[Identifier], lookups: list[Identifier]) -> Resolution:
        """Decide the profile for one event and update the index accordingly.

        Identifiers are taken from the highest priority down. Each either joins the
        working set (its profile, if it has one, is merged in) or, when that would put
        more values of a limited type on one person than allowed, is dropped.
        """
        index = self.index
        target: str | None = None
        working: dict[str, set[str]] = {}
        new: list[Identifier] = []
        absorbed: list[str] = []
        dropped: list[Dropped] = []

        ordered = sorted(
            [(i, True) for i in identifiers] + [(i, False) for i in lookups],
            key=lambda pair: -self.settings.priority(pair[0].type),
        )
        for ident, attachable in ordered:
            owner = index.owners.get(ident.key)
            if owner is None:
                if not attachable:
                    continue
                if self._fits(working, {ident.type: {ident.value}}):
                    working.setdefault(ident.type, set()).add(ident.value)
                    new.append(ident)
                else:
                    dropped.append(Dropped(ident, self._limit_reason(ident.type)))
                continue
            if owner == target or owner in absorbed:
                continue
            owner_held = index.held.get(owner, {})
            if not self._fits(working, owner_held):
                dropped.append(Dropped(ident, self._limit_reason(ident.type, merge=True)))
                continue
            for id_type, values in owner_held.items():
                working.setdefault(id_type, set()).update(values)
            if target is None:
                target = owner
            else:
                absorbed.append(owner)

        created = target is None
        profile_id = target if target is not None else _new_profile_id()
        merges: list[Merge] = []
        for other in absorbed:
            moved = [Identifier(t, v) for (t, v), p in index.owners.items() if p == other]
            for ident in moved:
                index.owners[ident.key] = profile_id
            merges.append(Merge(profile_id, other, moved))
            other_held = index.held.pop(other, {})
            mine = index.held.setdefault(profile_id, {})
            for id_type, values in other_held.items():
                mine.setdefault(id_type, set()).update(values)
        mine = index.held.setdefault(profile_id, {})
        for ident in new:
            index.owners[ident.key] = profile_id
            mine.setdefault(ident.type, set()).add(ident.value)
        return Resolution(profile_id, created, new, merges, dropped)

    def _limit_reason(self, id_type: str, *, merge: bool = False) -> str:
        limit = self.settings.limits.get(id_type)
        what = "merging these profiles" if merge else "attaching it"
        return f"{what} would give one profile more than {limit} {id_type} value(s)"
