"""Identity resolution as pure functions: identifiers, normalisation, and the resolver."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ariane.domain.identity import (
    MAX_VALUE_LENGTH,
    Identifier,
    IdentityIndex,
    Resolver,
    extract_identifiers,
    normalise,
    normalise_type,
    previous_identifiers,
)
from ariane.domain.messages import Message, parse_message
from ariane.settings import IdentitySettings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def message(**raw: Any) -> Message:
    return parse_message(raw, received_at=NOW)


def ids(*pairs: tuple[str, str]) -> list[Identifier]:
    return [Identifier(t, v) for t, v in pairs]


# -- normalisation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "0",
        "000000",
        "00000000-0000-0000-0000-000000000000",
        "-",
        "-1",
        "null",
        "NULL",
        "None",
        "nan",
        "NaN",
        "undefined",
        "anonymous",
        "Guest",
        "true",
        "False",
        "[object Object]",
        " undefined ",
    ],
)
@pytest.mark.parametrize("id_type", ["user_id", "anonymous_id", "device_id", "loyalty_card"])
def test_blocked_values_never_become_identifiers(id_type: str, value: str) -> None:
    assert normalise(id_type, value) is None


@pytest.mark.parametrize("raw", [None, True, False, {"id": "x"}, ["x"]])
def test_values_that_are_not_scalars_are_not_identifiers(raw: Any) -> None:
    assert normalise("user_id", raw) is None


def test_ids_are_trimmed_and_unicode_normalised_but_keep_their_case() -> None:
    decomposed = "Jose\u0301"
    assert normalise("user_id", f"  {decomposed}\t") == Identifier("user_id", "Jos\u00e9")
    assert normalise("user_id", "AbC") == Identifier("user_id", "AbC")
    assert normalise("user_id", 42) == Identifier("user_id", "42")


def test_an_identifier_too_long_to_store_is_not_one() -> None:
    assert normalise("user_id", "u" * MAX_VALUE_LENGTH) is not None
    assert normalise("user_id", "u" * (MAX_VALUE_LENGTH + 1)) is None
    assert normalise("t" * 65, "value") is None


def test_emails_are_lowercased_and_checked() -> None:
    assert normalise("email", "  Ada.Lovelace@Example.COM ") == Identifier(
        "email", "ada.lovelace@example.com"
    )
    for bad in ("ada", "ada@", "@example.com", "ada@example", "a b@example.com"):
        assert normalise("email", bad) is None, bad


def test_phones_become_e164() -> None:
    assert normalise("phone", "+33 6 12 34 56 78") == Identifier("phone", "+33612345678")
    assert normalise("phone", "+1 (415) 555-2671") == Identifier("phone", "+14155552671")
    # A national number needs a region to mean anything.
    assert normalise("phone", "06 12 34 56 78") is None
    assert normalise("phone", "06 12 34 56 78", default_phone_region="FR") == Identifier(
        "phone", "+33612345678"
    )
    assert normalise("phone", "not a phone", default_phone_region="FR") is None
    assert normalise("phone", "12", default_phone_region="FR") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("user_id", "user_id"),
        ("userId", "user_id"),
        ("User ID", "user_id"),
        ("ga4ClientId", "ga4_client_id"),
        ("GA_CLIENT_ID", "ga_client_id"),
        ("deviceID", "device_id"),
        (" loyalty-card ", "loyalty_card"),
    ],
)
def test_type_names_are_normalised(raw: str, expected: str) -> None:
    assert normalise_type(raw) == expected


# -- what an event carries -----------------------------------------------------------


def test_every_kind_of_identifier_is_read_highest_priority_first() -> None:
    settings = IdentitySettings(
        custom_types=["loyalty_card", "instagram"], default_phone_region="FR"
    )
    event = message(
        type="identify",
        userId="u-1",
        anonymousId="anon-1",
        traits={"email": "ADA@example.com", "phone": "06 12 34 56 78", "instagram": "@ada"},
        context={
            "device": {"id": "dev-1"},
            "traits": {"loyalty_card": "LC-9"},
            "externalIds": [
                {"id": "ga-1", "type": "ga_client_id", "collection": "users"},
                {"id": "ADA@example.com", "type": "email"},
                {"id": "nope", "type": 3},
                "not an object",
            ],
        },
    )
    assert extract_identifiers(event, settings) == ids(
        ("user_id", "u-1"),
        ("email", "ada@example.com"),
        ("phone", "+33612345678"),
        ("instagram", "@ada"),
        ("loyalty_card", "LC-9"),
        ("ga_client_id", "ga-1"),
        ("device_id", "dev-1"),
        ("anonymous_id", "anon-1"),
    )


def test_traits_give_identifiers_only_on_identify_and_context_traits_always() -> None:
    settings = IdentitySettings(custom_types=["loyalty_card"])
    page = message(
        type="page",
        anonymousId="a",
        traits={"email": "x@example.com", "loyalty_card": "LC-1"},
        context={"traits": {"email": "y@example.com"}},
    )
    assert extract_identifiers(page, settings) == ids(
        ("email", "y@example.com"), ("anonymous_id", "a")
    )


def test_an_identify_calls_own_traits_come_before_its_context_traits() -> None:
    event = message(
        type="identify",
        userId="u",
        traits={"phone": "+33 6 12 34 56 78"},
        context={"traits": {"phone": "+33 6 99 99 99 99"}},
    )
    phones = [i.value for i in extract_identifiers(event, IdentitySettings()) if i.type == "phone"]
    assert phones == ["+33612345678", "+33699999999"]


def test_track_properties_email_is_read_as_segment_does() -> None:
    event = message(type="track", userId="u", event="Order", properties={"email": "B@x.io"})
    assert ("email", "b@x.io") in [i.key for i in extract_identifiers(event, IdentitySettings())]


def test_unknown_trait_names_are_not_identifiers_unless_declared() -> None:
    event = message(type="identify", userId="u", traits={"loyalty_card": "LC-1"})
    assert extract_identifiers(event, IdentitySettings()) == ids(("user_id", "u"))
    declared = IdentitySettings(custom_types=["loyalty_card"])
    assert Identifier("loyalty_card", "LC-1") in extract_identifiers(event, declared)


def test_blocked_values_are_left_out_and_duplicates_counted_once() -> None:
    event = message(
        type="identify",
        userId="undefined",
        anonymousId="a-1",
        traits={"email": "null", "phone": "0"},
        context={"device": {"id": "00000000-0000-0000-0000-000000000000"}},
    )
    assert extract_identifiers(event, IdentitySettings()) == ids(("anonymous_id", "a-1"))
    twice = message(
        type="identify",
        userId="u",
        traits={"email": "a@b.co"},
        context={"traits": {"email": "A@B.CO"}, "externalIds": [{"id": "u", "type": "userId"}]},
    )
    assert extract_identifiers(twice, IdentitySettings()) == ids(
        ("user_id", "u"), ("email", "a@b.co")
    )


def test_priorities_come_from_settings() -> None:
    settings = IdentitySettings(priorities={"anonymous_id": 500, "user_id": 1})
    event = message(type="track", userId="u", anonymousId="a", event="E")
    assert extract_identifiers(event, settings) == ids(("anonymous_id", "a"), ("user_id", "u"))


def test_alias_previous_id_may_be_a_user_id_or_an_anonymous_id() -> None:
    alias = message(type="alias", userId="new", previousId="old")
    assert extract_identifiers(alias, IdentitySettings()) == ids(("user_id", "new"))
    assert previous_identifiers(alias) == ids(("user_id", "old"), ("anonymous_id", "old"))
    assert previous_identifiers(message(type="alias", userId="u", previousId="null")) == []
    assert previous_identifiers(message(type="track", userId="u", event="E")) == []


# -- the resolver --------------------------------------------------------------------


def resolver(*rows: tuple[str, str, str], **settings: Any) -> Resolver:
    index = IdentityIndex()
    index.load(rows)
    return Resolver(IdentitySettings(**settings), index)


def test_no_match_creates_a_profile_holding_every_identifier() -> None:
    r = resolver()
    first = r.resolve(ids(("user_id", "u"), ("anonymous_id", "a")))
    assert first.created
    assert first.attached == ids(("user_id", "u"), ("anonymous_id", "a"))
    assert r.index.owners == {
        ("user_id", "u"): first.profile_id,
        ("anonymous_id", "a"): first.profile_id,
    }
    again = r.resolve(ids(("anonymous_id", "a")))
    assert (again.profile_id, again.created, again.attached) == (first.profile_id, False, [])


def test_one_match_attaches_the_new_identifiers() -> None:
    r = resolver(("anonymous_id", "a", "P"))
    result = r.resolve(ids(("user_id", "u"), ("email", "e@x.io"), ("anonymous_id", "a")))
    assert (result.profile_id, result.created, result.merges) == ("P", False, [])
    assert result.attached == ids(("user_id", "u"), ("email", "e@x.io"))
    assert r.index.owners[("email", "e@x.io")] == "P"


def test_several_matches_merge_into_the_profile_of_the_highest_priority_identifier() -> None:
    r = resolver(
        ("anonymous_id", "a", "ANON"),
        ("email", "e@x.io", "MAIL"),
        ("user_id", "u", "USER"),
        ("device_id", "d", "ANON"),
    )
    result = r.resolve(ids(("user_id", "u"), ("email", "e@x.io"), ("anonymous_id", "a")))
    assert result.profile_id == "USER"
    assert [(m.survivor, m.absorbed) for m in result.merges] == [
        ("USER", "MAIL"),
        ("USER", "ANON"),
    ]
    assert result.merges[1].linked_by == ids(("anonymous_id", "a"))
    assert set(result.merges[1].identifiers) == set(ids(("anonymous_id", "a"), ("device_id", "d")))
    # Identifiers of the absorbed profiles now lead to the survivor, also those the event
    # did not carry.
    assert set(r.index.owners.values()) == {"USER"}
    assert r.index.held["USER"]["device_id"] == {"d"}
    assert "ANON" not in r.index.held


def test_two_user_ids_are_never_merged_and_the_lower_priority_link_is_dropped() -> None:
    r = resolver(
        ("user_id", "alice", "A"),
        ("anonymous_id", "shared-tablet", "A"),
        ("user_id", "bob", "B"),
    )
    result = r.resolve(ids(("user_id", "bob"), ("anonymous_id", "shared-tablet")))
    assert (result.profile_id, result.merges) == ("B", [])
    assert [d.identifier for d in result.dropped] == ids(("anonymous_id", "shared-tablet"))
    reason = result.dropped[0].reason
    assert "2 user_id values" in reason and "limit is 1" in reason
    assert r.index.owners[("anonymous_id", "shared-tablet")] == "A"


def test_a_new_user_id_on_a_known_device_of_someone_else_makes_a_new_person() -> None:
    r = resolver(("user_id", "alice", "A"), ("device_id", "tv", "A"))
    result = r.resolve(ids(("user_id", "carol"), ("device_id", "tv")))
    assert result.created and result.profile_id != "A"
    assert result.attached == ids(("user_id", "carol"))
    assert [d.identifier for d in result.dropped] == ids(("device_id", "tv"))


def test_a_second_new_user_id_on_one_event_is_dropped() -> None:
    r = resolver()
    result = r.resolve(ids(("user_id", "u1"), ("user_id", "u2")))
    assert result.attached == ids(("user_id", "u1"))
    assert [d.identifier for d in result.dropped] == ids(("user_id", "u2"))
    assert "attaching it would give the profile 2 user_id values" in result.dropped[0].reason


def test_a_conflict_drops_only_the_conflicting_identifier() -> None:
    r = resolver(
        ("user_id", "u", "U"),
        ("email", "other@x.io", "OTHER"),
        ("user_id", "v", "OTHER"),
        ("phone", "+33612345678", "PHONE"),
    )
    result = r.resolve(ids(("user_id", "u"), ("email", "other@x.io"), ("phone", "+33612345678")))
    assert result.profile_id == "U"
    assert [d.identifier.type for d in result.dropped] == ["email"]
    assert [(m.survivor, m.absorbed) for m in result.merges] == [("U", "PHONE")]


def test_limits_are_configurable_per_type() -> None:
    r = resolver(
        ("email", "a@x.io", "A"),
        ("email", "b@x.io", "B"),
        limits={"user_id": 1, "email": 1},
    )
    result = r.resolve(ids(("email", "a@x.io"), ("email", "b@x.io")))
    assert (result.profile_id, result.merges) == ("A", [])
    assert [d.identifier for d in result.dropped] == ids(("email", "b@x.io"))

    unlimited = resolver(("user_id", "u1", "A"), ("user_id", "u2", "B"), limits={"user_id": 2})
    merged = unlimited.resolve(ids(("user_id", "u1"), ("user_id", "u2")))
    assert [(m.survivor, m.absorbed) for m in merged.merges] == [("A", "B")]


def test_priorities_decide_which_identifier_wins_a_conflict() -> None:
    rows = [
        ("user_id", "u1", "A"),
        ("device_id", "d", "A"),
        ("user_id", "u2", "B"),
        ("email", "e@x.io", "B"),
    ]
    event = ids(("email", "e@x.io"), ("device_id", "d"))
    assert resolver(*rows).resolve(event).profile_id == "B"
    by_device = resolver(*rows, priorities={"device_id": 90, "email": 10})
    ordered = sorted(event, key=lambda i: -by_device.settings.priority(i.type))
    result = by_device.resolve(ordered)
    assert result.profile_id == "A"
    assert [d.identifier.type for d in result.dropped] == ["email"]


def test_a_profile_over_a_lowered_limit_can_still_be_reached() -> None:
    r = resolver(("user_id", "u1", "A"), ("user_id", "u2", "A"), ("anonymous_id", "a", "B"))
    result = r.resolve(ids(("user_id", "u1"), ("anonymous_id", "a")))
    assert result.profile_id == "A"
    assert [(m.survivor, m.absorbed) for m in result.merges] == [("A", "B")]
    assert result.dropped == []
    refused = r.resolve(ids(("user_id", "u1"), ("user_id", "u3")))
    assert [d.identifier for d in refused.dropped] == ids(("user_id", "u3"))


def test_alias_links_the_anonymous_previous_id_to_the_user() -> None:
    r = resolver(("anonymous_id", "old", "ANON"), ("user_id", "u", "USER"))
    alias = message(type="alias", userId="u", previousId="old")
    result = r.resolve(extract_identifiers(alias, r.settings), previous_identifiers(alias))
    assert result.profile_id == "USER"
    assert [(m.survivor, m.absorbed) for m in result.merges] == [("USER", "ANON")]


def test_alias_of_an_unknown_previous_id_attaches_it_as_an_anonymous_id() -> None:
    r = resolver(("user_id", "u", "USER"))
    alias = message(type="alias", userId="u", previousId="cookie-1")
    result = r.resolve(extract_identifiers(alias, r.settings), previous_identifiers(alias))
    assert result.attached == ids(("anonymous_id", "cookie-1"))


def test_alias_between_two_user_ids_is_refused_and_attaches_nothing() -> None:
    r = resolver(("user_id", "old", "OLD"), ("user_id", "new", "NEW"))
    alias = message(type="alias", userId="new", previousId="old")
    result = r.resolve(extract_identifiers(alias, r.settings), previous_identifiers(alias))
    assert (result.profile_id, result.merges, result.attached) == ("NEW", [], [])
    assert [d.identifier for d in result.dropped] == ids(("user_id", "old"))


def test_merges_within_one_batch_chain_to_a_single_survivor() -> None:
    r = resolver(("user_id", "u", "USER"))
    phone = r.resolve(ids(("anonymous_id", "phone")))
    tablet = r.resolve(ids(("anonymous_id", "tablet")))
    both = r.resolve(
        ids(("email", "e@x.io"), ("anonymous_id", "phone"), ("anonymous_id", "tablet"))
    )
    assert both.profile_id == phone.profile_id
    assert [(m.survivor, m.absorbed) for m in both.merges] == [
        (phone.profile_id, tablet.profile_id)
    ]
    signed_in = r.resolve(ids(("user_id", "u"), ("email", "e@x.io")))
    assert signed_in.profile_id == "USER"
    assert [(m.survivor, m.absorbed) for m in signed_in.merges] == [("USER", phone.profile_id)]
    assert set(r.index.owners.values()) == {"USER"}
    assert r.index.held["USER"]["anonymous_id"] == {"phone", "tablet"}


def test_configured_limits_and_priorities_are_laid_over_the_defaults() -> None:
    configured = IdentitySettings(limits={"email": 3}, priorities={"loyalty_card": 90})
    assert configured.limits == {"user_id": 1, "email": 3}
    assert configured.priority("loyalty_card") == 90
    assert configured.priority("user_id") == 100
    assert IdentitySettings(limits={"user_id": 2}).limits == {"user_id": 2}
