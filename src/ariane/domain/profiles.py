"""The live profile: traits with their provenance, and built-in computed values.

Each trait remembers the timestamp and source of the event that set it, so that an
older event arriving late never overwrites a newer value, and a merge keeps, field by
field, the most recent value.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ariane.domain.messages import Message

# How much of a name or an email a search compares (see `search_key`).
SEARCH_KEY_LENGTH = 200


@dataclass(slots=True)
class ProfileState:
    id: str
    traits: dict[str, dict[str, Any]] = field(default_factory=dict)
    computed: dict[str, Any] = field(default_factory=dict)
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def trait_values(self) -> dict[str, Any]:
        return {key: cell["value"] for key, cell in self.traits.items()}

    def search_keys(self) -> tuple[str | None, str | None]:
        """The `name` and `email` traits as a search compares them (`search_key`)."""
        name, email = (self.traits.get(key, {}).get("value") for key in ("name", "email"))
        return search_key(name), search_key(email)


def search_key(text: Any) -> str | None:
    """A text as a search for names compares it, by prefix: without case (`Ada`, `ADA`,
    `ada`), one form of each character (NFKC), outer spaces left out, and at most
    SEARCH_KEY_LENGTH characters; None for an empty text or for anything but text."""
    if not isinstance(text, str):
        return None
    # Written with every profile: most names and emails are ASCII, which NFKC leaves
    # as they are and which casefold() lowers as lower() does, faster.
    if text.isascii():
        key = text.lower().strip()
    else:
        key = unicodedata.normalize("NFKC", text).casefold().strip()
    return key[:SEARCH_KEY_LENGTH] or None


def set_trait(
    traits: dict[str, dict[str, Any]], key: str, value: Any, at: str, source: str
) -> bool:
    current = traits.get(key)
    if current is not None and current["at"] > at:
        return False
    traits[key] = {"value": value, "at": at, "source": source}
    return True


def identical(one: Any, other: Any) -> bool:
    """Equal as JSON values: `1`, `1.0` and `true` are not the same trait value."""
    if isinstance(one, bool) or isinstance(other, bool):
        return one is other
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(identical(one[k], other[k]) for k in one)
    if isinstance(one, list) and isinstance(other, list):
        return len(one) == len(other) and all(map(identical, one, other))
    return type(one) is type(other) and bool(one == other)


def apply_message(profile: ProfileState, message: Message, source: str) -> set[str]:
    """Fold one accepted event into the profile; the traits whose value it changed."""
    at: str = message.payload["timestamp"]
    changed: set[str] = set()
    context_traits = message.context.get("traits")
    sets = [context_traits] if isinstance(context_traits, dict) else []
    if message.type == "identify":
        sets.append(message.traits)
    for values in sets:
        for key, value in values.items():
            before = profile.traits.get(key)
            if set_trait(profile.traits, key, value, at, source) and (
                before is None or not identical(before["value"], value)
            ):
                changed.add(key)

    computed = profile.computed
    if message.type == "track" and message.event is not None:
        counts = computed.setdefault("event_counts", {})
        counts[message.event] = counts.get(message.event, 0) + 1
    type_counts = computed.setdefault("type_counts", {})
    type_counts[message.type] = type_counts.get(message.type, 0) + 1

    if profile.first_seen is None or message.timestamp < profile.first_seen:
        profile.first_seen = message.timestamp
    if profile.last_seen is None or message.timestamp > profile.last_seen:
        profile.last_seen = message.timestamp
    return changed


def _sum_counts(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + value


# Merges the feature states of two profiles (see domain/computed.py), given the
# survivor's first_seen once merged.
FeatureMerge = Callable[[dict[str, Any], Mapping[str, Any], datetime | None], None]


def merge_profiles(
    survivor: ProfileState, absorbed: ProfileState, merge_features: FeatureMerge | None = None
) -> None:
    """Fold `absorbed` into `survivor`: nothing lost, nothing counted twice.

    The survivor holds the segments either held, from the earlier entry, until it is
    evaluated again: a person already in a segment does not enter it a second time.
    """
    for key, cell in absorbed.traits.items():
        set_trait(survivor.traits, key, cell["value"], cell["at"], cell["source"])
    for key in ("event_counts", "type_counts"):
        if absorbed.computed.get(key):
            _sum_counts(survivor.computed.setdefault(key, {}), absorbed.computed[key])
    seen_first = [t for t in (survivor.first_seen, absorbed.first_seen) if t is not None]
    seen_last = [t for t in (survivor.last_seen, absorbed.last_seen) if t is not None]
    survivor.first_seen = min(seen_first) if seen_first else None
    survivor.last_seen = max(seen_last) if seen_last else None
    if absorbed.computed.get("segments"):
        held = survivor.computed.setdefault("segments", {})
        for segment_id, entered in absorbed.computed["segments"].items():
            held[segment_id] = min(held.get(segment_id, entered), entered)
    if merge_features is not None:
        merge_features(
            survivor.computed.setdefault("features", {}),
            absorbed.computed.get("features", {}),
            survivor.first_seen,
        )
