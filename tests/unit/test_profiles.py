"""The live profile: traits with provenance, counters, first/last seen, and merges."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from ariane.domain.messages import Message, parse_message
from ariane.domain.profiles import ProfileState, apply_message, merge_profiles, set_trait

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(minutes: int, **raw: Any) -> Message:
    raw.setdefault("userId", "u")
    raw["timestamp"] = at(minutes)
    return parse_message(raw, received_at=T0 + timedelta(days=1))


def test_identify_and_context_traits_are_kept_with_time_and_source() -> None:
    profile = ProfileState("p")
    apply_message(profile, event(0, type="identify", traits={"plan": "pro"}), "web")
    apply_message(
        profile, event(1, type="track", event="E", context={"traits": {"city": "Lyon"}}), "app"
    )
    assert profile.traits == {
        "plan": {"value": "pro", "at": at(0), "source": "web"},
        "city": {"value": "Lyon", "at": at(1), "source": "app"},
    }
    assert profile.trait_values() == {"plan": "pro", "city": "Lyon"}


def test_traits_of_a_track_event_body_are_not_profile_traits() -> None:
    profile = ProfileState("p")
    apply_message(profile, event(0, type="track", event="E", traits={"plan": "x"}), "web")
    apply_message(profile, event(0, type="group", groupId="g", traits={"plan": "y"}), "web")
    assert profile.traits == {}


def test_an_older_event_arriving_late_never_overwrites_a_newer_value() -> None:
    profile = ProfileState("p")
    apply_message(profile, event(10, type="identify", traits={"plan": "pro"}), "web")
    apply_message(profile, event(5, type="identify", traits={"plan": "free", "age": 30}), "crm")
    assert profile.traits["plan"] == {"value": "pro", "at": at(10), "source": "web"}
    # A field the newer event did not set is still taken from the older one.
    assert profile.traits["age"] == {"value": 30, "at": at(5), "source": "crm"}
    apply_message(profile, event(20, type="identify", traits={"plan": "team"}), "crm")
    assert profile.traits["plan"]["value"] == "team"


def test_set_trait_accepts_a_value_of_the_same_instant() -> None:
    traits: dict[str, dict[str, Any]] = {}
    assert set_trait(traits, "k", 1, at(0), "a")
    assert set_trait(traits, "k", 2, at(0), "b")
    assert not set_trait(traits, "k", 3, at(-1), "c")
    assert traits["k"] == {"value": 2, "at": at(0), "source": "b"}


def test_counts_by_event_name_and_type_and_first_last_seen_in_event_time() -> None:
    profile = ProfileState("p")
    for minutes, raw in [
        (5, {"type": "track", "event": "Viewed"}),
        (1, {"type": "track", "event": "Viewed"}),
        (9, {"type": "track", "event": "Bought"}),
        (3, {"type": "page", "name": "Home"}),
    ]:
        apply_message(profile, event(minutes, **raw), "web")
    assert profile.computed == {
        "event_counts": {"Viewed": 2, "Bought": 1},
        "type_counts": {"track": 3, "page": 1},
    }
    assert (profile.first_seen, profile.last_seen) == (
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=9),
    )


def profile_with(pid: str, *events: tuple[int, dict[str, Any]]) -> ProfileState:
    profile = ProfileState(pid)
    for minutes, raw in events:
        apply_message(profile, event(minutes, **raw), pid)
    return profile


def test_a_merge_keeps_each_traits_most_recent_value_whichever_side_survives() -> None:
    older = profile_with(
        "old", (1, {"type": "identify", "traits": {"name": "Ada", "plan": "free"}})
    )
    newer = profile_with("new", (2, {"type": "identify", "traits": {"plan": "pro"}}))
    for survivor, absorbed in [(older, newer), (newer, older)]:
        kept = copy.deepcopy(survivor)
        merge_profiles(kept, copy.deepcopy(absorbed))
        assert kept.trait_values() == {"name": "Ada", "plan": "pro"}
        assert kept.traits["plan"]["source"] == "new"
        assert kept.traits["name"]["source"] == "old"


def test_a_merge_sums_counters_once_and_spans_both_histories() -> None:
    a = profile_with(
        "a",
        (5, {"type": "track", "event": "Viewed"}),
        (6, {"type": "track", "event": "Viewed"}),
    )
    b = profile_with(
        "b",
        (2, {"type": "track", "event": "Viewed"}),
        (9, {"type": "track", "event": "Bought"}),
        (3, {"type": "page"}),
    )
    merge_profiles(a, b)
    assert a.computed == {
        "event_counts": {"Viewed": 3, "Bought": 1},
        "type_counts": {"track": 4, "page": 1},
    }
    assert a.first_seen == T0 + timedelta(minutes=2)
    assert a.last_seen == T0 + timedelta(minutes=9)


def test_merging_an_empty_profile_changes_nothing() -> None:
    a = profile_with("a", (5, {"type": "track", "event": "Viewed"}))
    before = copy.deepcopy(a)
    merge_profiles(a, ProfileState("empty"))
    assert a == before
    empty = ProfileState("empty")
    merge_profiles(empty, copy.deepcopy(before))
    assert (empty.computed, empty.first_seen, empty.last_seen) == (
        before.computed,
        before.first_seen,
        before.last_seen,
    )
