"""Reading profiles: the 360° view, lookups by identifier, the timeline, consents."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.conditions import AllOf, Node, TraitIs
from ariane.domain.consent import ConsentDecision, check_purpose, check_status, current_consents
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.events import consent_changed, profiles_merged
from ariane.domain.identity import BUILTIN_TYPES, Merge, normalise, normalise_type
from ariane.domain.predicates import InvalidDefinition, Test, parse_path
from ariane.domain.profiles import SEARCH_KEY_LENGTH, ProfileState, merge_profiles
from ariane.domain.segments import Touch
from ariane.services import paging
from ariane.services.segments import SegmentService
from ariane.settings import Settings
from ariane.storage import bus as bus_store
from ariane.storage import consents as consent_store
from ariane.storage import events as event_store
from ariane.storage import profiles as profile_store
from ariane.storage import segments as segment_store
from ariane.storage.database import Connection, Database

MAX_PAGE = 1000
# Audience events are named by their message id (`storage.segments.transition_rows`).
_MESSAGE_ID_WIDTH = 200
# A grant meant never to lapse has no expiry; a later one is a mistake, and one past the
# year 9999 cannot be stored.
MAX_CONSENT_YEARS = 100


# What each profile of a list shows: its first identifiers of each type and these traits;
# its 360° view shows everything.
IDENTIFIERS_SHOWN = 3
SUMMARY_TRAITS = ("name", "first_name", "last_name", "email", "phone")
MAX_TRAIT_FILTERS = 20
MAX_TRAIT_VALUE = 1000
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_EXACT_DOUBLE = 2**53


# Where a page of the timeline ended: an event's timestamp and id, or an Audience
# event's time and message id.
Position = tuple[datetime, int | str]


def timeline_cursor(timestamp: datetime, key: int | str) -> str:
    return paging.encode(paging.TIMELINE, iso(timestamp), key)


def timeline_position(cursor: str) -> Position:
    at_text, key = paging.decode(paging.TIMELINE, cursor, 2)
    if not isinstance(at_text, str):
        raise paging.invalid_cursor()
    if isinstance(key, str) and (
        not key.startswith(segment_store.AUDIENCE_PREFIX) or len(key) > _MESSAGE_ID_WIDTH
    ):
        raise paging.invalid_cursor()
    try:
        return parse_timestamp(at_text), key
    except ValueError:
        raise paging.invalid_cursor() from None


def _check_text(field: str, text: str, longest: int, otherwise: str) -> None:
    if not text.strip():
        raise DomainError(f"{field} is empty: {otherwise}", field=field)
    if len(text) > longest:
        raise DomainError(f"{field} takes at most {longest} characters", field=field)
    if "\x00" in text:
        raise DomainError(f"{field} may not hold a NUL character", field=field)


def _traits_condition(traits: Mapping[str, str]) -> Node | None:
    """Every trait of `traits` holds its value: the text itself, or the number or the
    true or false the text spells (`age=42` finds 42 and "42")."""
    if len(traits) > MAX_TRAIT_FILTERS:
        raise DomainError(
            f"at most {MAX_TRAIT_FILTERS} trait filters; narrow the list with a segment",
            field="trait",
        )
    tests: list[Node] = []
    for name, text in sorted(traits.items()):
        field = f"trait.{name}"
        try:
            path = parse_path(name, field)
        except InvalidDefinition as error:
            raise DomainError(error.message, field=field) from None
        if len(text) > MAX_TRAIT_VALUE or "\x00" in text:
            raise DomainError(
                f"{field} takes a text of at most {MAX_TRAIT_VALUE} characters, without NUL",
                field=field,
            )
        tests.append(TraitIs(path, Test("in", [text, *_spelled(text)])))
    return AllOf(tuple(tests)) if tests else None


def _spelled(text: str) -> list[Any]:
    """The JSON number, true or false that `text` is written as, if any."""
    if text in ("true", "false"):
        return [text == "true"]
    if not _NUMBER.fullmatch(text):
        return []
    number = int(text) if _INTEGER.fullmatch(text) else float(text)
    # Beyond, a double no longer holds every integer: compared as one, it would match others.
    return [number] if math.isfinite(number) and abs(number) <= _EXACT_DOUBLE else []


def live_profile_id(conn: Connection, profile_id: str) -> str:
    """The profile that now holds `profile_id`, following merges."""
    live = profile_store.resolve_profile_id(conn, profile_id)
    if live is None:
        raise NotFound(
            f"no profile {profile_id!r}; find one with /api/profiles/lookup", field="profile_id"
        )
    return live


class ProfileService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Callable[[], datetime],
        segments: SegmentService,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.segments = segments

    def view(self, profile_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            live = live_profile_id(conn, profile_id)
            row = profile_store.profile_row(conn, live)
            idents = profile_store.identities_listed(conn, live)
            merged = profile_store.absorbed_by(conn, live)
            history = consent_store.history(conn, live)
            now = self.clock()
            state = ProfileState(live, row.traits, row.computed, row.first_seen, row.last_seen)
            segmentation = self.segments.profile_view(conn, state, now)
        computed = {
            key: value
            for key, value in row.computed.items()
            if key not in ("features", "segments", "due")
        }
        computed["first_seen"] = row.first_seen
        computed["last_seen"] = row.last_seen
        return {
            "id": live,
            "identities": [{"type": t, "value": v, "first_seen": at} for t, v, at in idents],
            "traits": {k: cell["value"] for k, cell in sorted(row.traits.items())},
            "trait_sources": row.traits,
            "computed": computed,
            "computed_traits": segmentation["computed_traits"],
            "segments": segmentation["segments"],
            "consents": current_consents(history, now),
            "merged_ids": sorted(merged),
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }

    def search(
        self,
        *,
        segment: str | None = None,
        traits: Mapping[str, str] | None = None,
        q: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of the live profiles, in id order, that meet every filter given: in
        `segment` now, each trait of `traits` of that value, and an identifier, name or
        email starting with `q`. `next_cursor` is None on the last page."""
        if not 1 <= limit <= MAX_PAGE:
            raise DomainError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        after = None if cursor is None else paging.decode_text(paging.PROFILES, cursor)
        condition = _traits_condition(traits or {})
        if q is not None:
            _check_text("q", q, SEARCH_KEY_LENGTH, "leave q out to list every profile")
        if segment is not None:
            _check_text("segment", segment, 200, "name a segment, or leave segment out")
            # Members are read from the memberships, as GET /api/segments/{segment}/members.
            self.segments.catch_up()
        with self.db.read() as conn:
            segment_id = None
            if segment is not None:
                found = segment_store.segment_row(conn, segment)
                if found is None:
                    raise DomainError(
                        f"no segment has the id or name {segment!r}; GET /api/segments lists them",
                        field="segment",
                    )
                segment_id = found["id"]
            rows = profile_store.search(
                conn,
                limit=limit + 1,
                after=after,
                segment_id=segment_id,
                condition=condition,
                prefix=q,
                now=self.clock(),
            )
            page, more = rows[:limit], len(rows) > limit
            held = profile_store.identifiers_of(
                conn, [row["id"] for row in page], per_type=IDENTIFIERS_SHOWN
            )
        return {
            "profiles": [
                {
                    "id": row["id"],
                    "identifiers": held[row["id"]],
                    "traits": {
                        key: row["traits"][key]["value"]
                        for key in SUMMARY_TRAITS
                        if key in row["traits"]
                    },
                    "first_seen": row["first_seen"],
                    "last_seen": row["last_seen"],
                    "created_at": row["created_at"],
                }
                for row in page
            ],
            "next_cursor": paging.encode(paging.PROFILES, page[-1]["id"]) if more else None,
        }

    def lookup(self, id_type: str, value: str) -> str:
        """The profile holding an identifier, given in any form that normalises to it."""
        id_type = normalise_type(id_type)
        if not id_type:
            raise DomainError("type must name an identifier type, such as email", field="type")
        ident = normalise(
            id_type, value, default_phone_region=self.settings.identity.default_phone_region
        )
        if ident is None:
            raise DomainError(
                f"{value!r} cannot identify anyone as a {id_type} (see docs/identity.md)",
                field="value",
            )
        with self.db.read() as conn:
            owners = profile_store.find_owners(conn, [ident.key])
            # A type sent only in context.externalIds is known by the identifiers stored.
            known = self.known_types()
            if not owners and id_type not in known and not profile_store.type_in_use(conn, id_type):
                raise DomainError(
                    f"no identifier type {id_type!r}; the types are {', '.join(known)} (add"
                    " your own to identity.custom_types)",
                    field="type",
                )
        if not owners:
            raise NotFound(f"no profile holds {id_type} {ident.value!r}", field="value")
        return owners[0][2]

    def known_types(self) -> list[str]:
        """The identifier types Ariane reads: its own, then those configured."""
        identity = self.settings.identity
        configured = [*identity.custom_types, *identity.limits, *identity.priorities]
        return list(dict.fromkeys([*BUILTIN_TYPES, *sorted(map(normalise_type, configured))]))

    def events(
        self, profile_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the timeline, newest first; `next_cursor` is None on the last page."""
        if not 1 <= limit <= MAX_PAGE:
            raise DomainError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        before = timeline_position(cursor) if cursor is not None else None
        after_event = after_audience = None
        if before is not None:
            at, key = before
            after_event = (at, key if isinstance(key, int) else None)
            after_audience = (at, key if isinstance(key, str) else None)
        # People's own events, and the Audience events of their segments' history: each
        # newest first, merged. At one time, the Audience events come first.
        with self.db.read() as conn:
            live = live_profile_id(conn, profile_id)
            own = event_store.timeline(conn, live, limit=limit + 1, before=after_event)
            audience = segment_store.audience_timeline(
                conn, live, limit=limit + 1, before=after_audience
            )
        entries: list[tuple[datetime, int, int | str, dict[str, Any]]] = [
            (row["timestamp"], 0, row["id"], row["payload"]) for row in own
        ]
        entries += [(at, 1, message_id, event) for at, message_id, event in audience]
        entries.sort(key=lambda entry: (entry[0], entry[1], entry[2]), reverse=True)
        page, more = entries[:limit], len(entries) > limit
        last = page[-1] if more else None
        return {
            "profile_id": live,
            "events": [entry[3] for entry in page],
            "next_cursor": timeline_cursor(last[0], last[2]) if last else None,
        }

    def set_consent(
        self,
        profile_id: str,
        purpose: str,
        status: str,
        *,
        source: str,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record a decision taken outside events (a preference centre, a call centre)."""
        check_status(status)
        purpose = check_purpose(purpose)
        now = self.clock()
        if expires_at is not None:
            # A time without an offset is UTC, as for event timestamps.
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= now:
                raise DomainError(
                    f"expires_at must be in the future (now is {iso(now)})", field="expires_at"
                )
            if expires_at - now > timedelta(days=366 * MAX_CONSENT_YEARS):
                raise DomainError(
                    f"expires_at must be within {MAX_CONSENT_YEARS} years; leave it out for"
                    " a grant that does not lapse",
                    field="expires_at",
                )
        decision = ConsentDecision(purpose, status, now, source, expires_at)

        def work(conn: Connection) -> list[ConsentDecision]:
            live = live_profile_id(conn, profile_id)
            # The lock makes a concurrent merge or erasure of the profile wait for this
            # decision, or this decision wait for them; one that committed meanwhile
            # means starting again, to land on the survivor or to find no one.
            self.segments.catalogue(conn, hold=True)
            states = profile_store.lock_profiles(conn, [live])
            _, _, before, row = consent_store.insert(conn, live, decision)
            changed = consent_changed(row, live, purpose, status, decision.at, before)
            bus_store.record(conn, [changed])
            self.segments.reevaluate(conn, states, Touch(consent=True), now, "consent")
            return consent_store.history(conn, live)

        history = self.db.write(work)
        return {"purpose": purpose, **current_consents(history, now)[purpose]}

    def merge(self, survivor_id: str, absorbed_id: str, *, reason: str) -> dict[str, Any]:
        """Join two profiles known to be one person (a shop account and a web account),
        as identity resolution would: everything of `absorbed_id` goes to `survivor_id`,
        whose segments are evaluated again. Refused when together they would hold more
        values of a limited type than one person may (two user ids: two people)."""
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise DomainError("reason needs 1 to 200 characters", field="reason")

        def work(conn: Connection) -> str:
            now = self.clock()
            survivor = live_profile_id(conn, survivor_id)
            absorbed = live_profile_id(conn, absorbed_id)
            if survivor == absorbed:
                raise Conflict(
                    f"{survivor_id!r} and {absorbed_id!r} are one profile already",
                    field="absorbed",
                )
            # As in ingestion: the catalogue first, then the profiles, in id order.
            catalogue = self.segments.catalogue(conn, hold=True)
            states = profile_store.lock_profiles(conn, [survivor, absorbed])
            limits = self.settings.identity.limits
            held = profile_store.held_identifiers(conn, states, list(limits))
            for id_type, limit in sorted(limits.items()):
                values = sorted({value for kind, value, _ in held if kind == id_type})
                if len(values) > limit:
                    raise Conflict(
                        f"together the profiles hold {len(values)} {id_type} values, and one"
                        f" person holds at most {limit}: they are not one person",
                        field="absorbed",
                    )
            kept = states[survivor]
            merge_profiles(kept, states[absorbed], catalogue.merge_features(now))
            profile_store.record_merge(conn, Merge(survivor, absorbed, [], []), reason, None, now)
            bus_store.record(conn, [profiles_merged(survivor, absorbed, now)])
            profile_store.update_profiles(conn, [kept], now)
            self.segments.reevaluate(conn, {survivor: kept}, Touch(everything=True), now, "merge")
            return survivor

        survivor = self.db.write(work)
        return {"profile_id": survivor, "merged_ids": self.view(survivor)["merged_ids"]}

    def consent_history(self, profile_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            live = live_profile_id(conn, profile_id)
            history = consent_store.history(conn, live)
        return {
            "profile_id": live,
            "current": current_consents(history, self.clock()),
            "history": history,
        }
