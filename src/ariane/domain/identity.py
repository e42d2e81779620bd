"""Identity resolution: which identifiers an event carries and which person they lead to.

The resolver works on an in-memory `IdentityIndex` that the storage layer fills with the
identifiers already known for a batch. It decides, event by event, whether to create a
profile, attach identifiers to one, or merge several — and records what it refused.
Limits are never exceeded by a merge: two profiles holding different user ids (with the
default limit of one) stay apart, and the event's lowest-priority identifier that would
join them is dropped instead.
"""

from __future__ import annotations

import random
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import phonenumbers

from ariane.domain.errors import InvalidEvent
from ariane.domain.messages import MAX_ID_LENGTH, Message
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
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TYPE_NAME = re.compile(r"[^a-z0-9]+")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# The widths of identities.type and identities.value: a longer one cannot be stored.
MAX_TYPE_LENGTH = 64
MAX_VALUE_LENGTH = MAX_ID_LENGTH


class Identifier(NamedTuple):
    # A tuple: built for every identifier of every event, and a dict key as it is.
    type: str
    value: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.value)


def is_blocked(value: str) -> bool:
    # Stripping zeros and dashes leaves nothing exactly when the value matches ^[0-]*$.
    return not value.strip("0-") or value.lower() in _BLOCKED_VALUES


def normalise_type(raw: str) -> str:
    """`userId`, `User ID` and `user_id` all name the type `user_id`."""
    return _TYPE_NAME.sub("_", _CAMEL_HUMP.sub("_", raw.strip()).lower()).strip("_")


def normalise(
    id_type: str, raw: Any, *, default_phone_region: str | None = None
) -> Identifier | None:
    """The canonical form of an identifier, or None when the value cannot identify anyone."""
    if not id_type or len(id_type) > MAX_TYPE_LENGTH:
        return None
    if raw is None or isinstance(raw, (bool, dict, list)):
        return None
    value = str(raw)
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            # A lone surrogate: not valid Unicode, and no database stores it.
            return None
        value = unicodedata.normalize("NFC", value)
    value = value.strip()
    if not value or len(value) > MAX_VALUE_LENGTH or is_blocked(value) or "\x00" in value:
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
    """Every identifier the event carries, highest priority first, without duplicates.

    As in Segment, `email` is also read from `properties` of a track event. An alias's
    `previousId` is not among them: see `previous_identifiers`.
    """
    context = message.context
    # An identify call's own traits come before the ones its context repeats: when both
    # name a value of a limited type, the identify's is kept.
    sources: list[dict[str, Any]] = []
    if message.type == "identify":
        sources.append(message.traits)
    context_traits = context.get("traits")
    if isinstance(context_traits, dict):
        sources.append(context_traits)

    candidates: list[tuple[str, Any]] = [
        ("user_id", message.user_id),
        ("anonymous_id", message.anonymous_id),
    ]
    trait_types = ("email", "phone", *settings.custom_types)
    for traits in sources:
        candidates.extend((t, traits[t]) for t in trait_types if traits.get(t) is not None)
    if message.type == "track":
        properties = message.properties
        candidates.extend((t, properties[t]) for t in ("email", "phone") if t in properties)
    device = context.get("device")
    if isinstance(device, dict):
        candidates.append(("device_id", device.get("id")))
    external = context.get("externalIds")
    if isinstance(external, list):
        for item in external:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                candidates.append((normalise_type(item["type"]), item.get("id")))

    seen: set[tuple[str, str]] = set()
    found: list[Identifier] = []
    for id_type, raw in candidates:
        if raw is None:
            continue
        ident = normalise(id_type, raw, default_phone_region=settings.default_phone_region)
        if ident is not None and ident.key not in seen:
            seen.add(ident.key)
            found.append(ident)
    found.sort(key=lambda i: -settings.priority(i.type))
    return found


def no_identifier(message: Message) -> InvalidEvent:
    """Why an event that names no one is refused: a userId or anonymousId too long to be
    an id, or ids that are missing or placeholders."""
    for key, value in (("userId", message.user_id), ("anonymousId", message.anonymous_id)):
        if value is not None and len(value) > MAX_VALUE_LENGTH:
            return InvalidEvent(
                f"{key} is {len(value)} characters long; at most {MAX_VALUE_LENGTH}", field=key
            )
    return InvalidEvent(
        "no usable identifier: userId and anonymousId are missing or placeholders such as"
        " 'undefined', 'null' or '0'; send the real id",
        field="userId/anonymousId",
    )


def previous_identifiers(message: Message) -> list[Identifier]:
    """What an alias's `previousId` may be: a user id if a profile holds it as one, else an
    anonymous id. The resolver takes the first of these that is known."""
    previous = message.payload.get("previousId") if message.type == "alias" else None
    found = [normalise(id_type, previous) for id_type in ("user_id", "anonymous_id")]
    return [ident for ident in found if ident is not None]


def identifiers_of_rejected(raw: Any, settings: IdentitySettings) -> list[Identifier]:
    """Best effort: whom a rejected event names, so that erasure finds it in quarantine.

    The event failed validation, so nothing about its shape is trusted: only objects are
    read as objects, every place an identifier may stand is looked at (traits as for an
    identify, properties as for a track, an alias's previous id), and nothing raises.
    """
    if not isinstance(raw, dict):
        return []

    def section(key: str) -> dict[str, Any]:
        value = raw.get(key)
        return value if isinstance(value, dict) else {}

    payload = {key: section(key) for key in ("context", "traits", "properties")}
    found: dict[tuple[str, str], Identifier] = {}
    for kind in ("identify", "track"):
        view = Message(
            type=kind,
            message_id="",
            user_id=_scalar(raw.get("userId")),
            anonymous_id=_scalar(raw.get("anonymousId")),
            event=None,
            timestamp=_EPOCH,
            received_at=_EPOCH,
            payload=payload,
        )
        for ident in extract_identifiers(view, settings):
            found[ident.key] = ident
    for id_type in ("user_id", "anonymous_id"):
        previous = normalise(id_type, raw.get("previousId"))
        if previous is not None:
            found[previous.key] = previous
    return list(found.values())


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Dropped:
    identifier: Identifier
    reason: str


@dataclass(slots=True)
class Merge:
    """`absorbed` joins `survivor`; `linked_by` are the event's identifiers that led to
    it, `identifiers` every identifier of the absorbed profile the batch knew."""

    survivor: str
    absorbed: str
    linked_by: list[Identifier]
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
    """The identifiers known to a batch: who owns each one, and what each profile holds.

    `held` must list, for every profile in `owners`, at least all its values of limited
    types, so that limits can be checked without asking the database again.
    """

    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    held: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def load(self, rows: Iterable[tuple[str, str, str]]) -> None:
        for id_type, value, profile_id in rows:
            self.owners[(id_type, value)] = profile_id
            self.held.setdefault(profile_id, {}).setdefault(id_type, set()).add(value)


def _new_profile_id() -> str:
    """32 hex characters: microseconds since the epoch, then 72 random bits.

    Ids that grow with time put each batch's new profiles next to each other in every
    index keyed by profile id, instead of scattering them over random pages.
    """
    # Unique, not secret: the fast generator is enough (os.urandom showed in profiles).
    return f"{time.time_ns() // 1000:014x}{random.getrandbits(72):018x}"


class Resolver:
    def __init__(self, settings: IdentitySettings, index: IdentityIndex) -> None:
        self.settings = settings
        self.index = index

    def _excess(
        self, held: dict[str, set[str]], adding: dict[str, set[str]]
    ) -> tuple[str, int] | None:
        """The limited type (and how many values) joining `adding` to `held` would overfill.

        A side already over a limit (the limit was lowered after it was reached) may still
        be joined by one that brings no new value of that type.
        """
        for id_type, limit in self.settings.limits.items():
            theirs = adding.get(id_type)
            if not theirs:
                continue
            mine = held.get(id_type, set())
            count = len(mine | theirs)
            if count > limit and count > len(mine) and count > len(theirs):
                return id_type, count
        return None

    def _take(self, working: dict[str, set[str]], adding: dict[str, set[str]]) -> None:
        for id_type in self.settings.limits:
            values = adding.get(id_type)
            if values:
                working.setdefault(id_type, set()).update(values)

    def resolve(
        self, identifiers: Sequence[Identifier], previous: Sequence[Identifier] = ()
    ) -> Resolution:
        """Decide the profile for one event and update the index accordingly.

        Identifiers are taken from the highest priority down. Each either joins the
        working set (its profile, if it has one, is merged in) or, when that would put
        more values of a limited type on one person than allowed, is dropped. The profile
        of the highest-priority known identifier survives a merge.
        """
        index = self.index
        owners = index.owners
        candidates = list(identifiers)
        if previous:
            meant = next((i for i in previous if i.key in owners), previous[-1])
            if all(i.key != meant.key for i in candidates):
                candidates.append(meant)
                candidates.sort(key=lambda i: -self.settings.priority(i.type))
        if candidates:
            # The usual case, a known person seen again, decided without the bookkeeping.
            known = owners.get(candidates[0].key)
            if known is not None and all(owners.get(i.key) == known for i in candidates):
                return Resolution(known)

        target: str | None = None
        working: dict[str, set[str]] = {}
        new: list[Identifier] = []
        absorbed: dict[str, list[Identifier]] = {}
        dropped: list[Dropped] = []
        for ident in candidates:
            owner = owners.get(ident.key)
            if owner is None:
                adding = {ident.type: {ident.value}}
                excess = self._excess(working, adding)
                if excess is None:
                    self._take(working, adding)
                    new.append(ident)
                else:
                    dropped.append(Dropped(ident, self._attach_refused(*excess)))
                continue
            if owner == target:
                continue
            if owner in absorbed:
                absorbed[owner].append(ident)
                continue
            owner_held = index.held.get(owner, {})
            excess = self._excess(working, owner_held)
            if excess is not None:
                dropped.append(Dropped(ident, self._merge_refused(*excess)))
                continue
            self._take(working, owner_held)
            if target is None:
                target = owner
            else:
                absorbed[owner] = [ident]

        profile_id = target if target is not None else _new_profile_id()
        mine = index.held.setdefault(profile_id, {})
        merges: list[Merge] = []
        for other, linked_by in absorbed.items():
            moved: list[Identifier] = []
            for id_type, values in index.held.pop(other, {}).items():
                mine.setdefault(id_type, set()).update(values)
                for value in values:
                    owners[(id_type, value)] = profile_id
                    moved.append(Identifier(id_type, value))
            merges.append(Merge(profile_id, other, linked_by, moved))
        for ident in new:
            owners[ident.key] = profile_id
            mine.setdefault(ident.type, set()).add(ident.value)
        return Resolution(profile_id, target is None, new, merges, dropped)

    def _attach_refused(self, id_type: str, count: int) -> str:
        limit = self.settings.limits[id_type]
        return (
            f"attaching it would give the profile {count} {id_type} values;"
            f" the limit is {limit} (identity.limits)"
        )

    def _merge_refused(self, id_type: str, count: int) -> str:
        limit = self.settings.limits[id_type]
        return (
            f"it belongs to another profile; merging the two would give one profile {count}"
            f" {id_type} values, the limit is {limit} (identity.limits)"
        )
