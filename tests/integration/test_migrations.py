"""The Alembic migrations build exactly the schema that `storage.tables` declares."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ariane.storage import events as event_store
from ariane.storage import segments as segment_store
from ariane.storage.database import Database
from ariane.storage.migrate import MIGRATIONS, alembic_config, upgrade
from ariane.storage.segments import audience_event
from ariane.storage.tables import (
    events,
    metadata,
    profiles,
    segment_changes,
    segment_history,
    segments,
)


def migrate(db: Database, step: Any, revision: str) -> None:
    """`command.upgrade` or `command.downgrade` to `revision`, in one transaction."""
    config = alembic_config(db)
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        step(config, revision)


def test_migrations_match_the_declared_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        db.dispose()
    assert differences == []


def test_migrations_do_not_depend_on_the_live_schema() -> None:
    """A migration is history: editing `tables.py` later must not change what it did."""
    revisions = sorted((MIGRATIONS / "versions").glob("*.py"))
    assert revisions
    for path in revisions:
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert not {name for name in imported if name.split(".")[0] == "ariane"}, path.name


def test_going_back_before_0007_queues_the_messages_of_changes_not_yet_applied(
    db_url: str,
) -> None:
    """Before 0007 a change's message went to the outbox when it was recorded: going
    back puts there those of the changes still waiting, so that none is lost."""
    db = Database(db_url)
    at = datetime(2026, 11, 24, 9, 0)
    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO segment_changes (segment_id, profile_id, change, cause, at,"
                    " message_id) VALUES ('s1', 'p1', 'entered', 'event', :at, 'audience-1'),"
                    " ('s1', 'p2', 'entered', 'event', :at, NULL)"
                ),
                {"at": at},
            )
        migrate(db, command.downgrade, "0006")
        with db.engine.connect() as conn:
            queued = conn.execute(
                sa.text("SELECT topic, message_id, profile_id, payload FROM outbox")
            ).all()
        assert [tuple(row) for row in queued] == [("audience", "audience-1", "p1", None)]
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM outbox"))
            conn.execute(sa.text("DELETE FROM segment_changes"))
        db.dispose()


def test_timers_move_into_the_profiles_rows_at_0008_and_back(db_url: str) -> None:
    db = Database(db_url)
    at = datetime(2026, 11, 24, 9, 0)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        with db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]

    try:
        migrate(db, command.downgrade, "0007")
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO profiles (id, traits, computed, created_at, updated_at)"
                    " VALUES ('p1', '{}', '{}', :at, :at), ('p2', '{}', '{}', :at, :at)"
                ),
                {"at": at},
            )
            conn.execute(
                sa.text("INSERT INTO profile_timers (profile_id, due_at) VALUES ('p1', :at)"),
                {"at": at},
            )
        migrate(db, command.upgrade, "0008")
        due = rows("SELECT id, due_at FROM profiles ORDER BY id")
        assert [(p, None if d is None else str(d)[:16]) for p, d in due] == [
            ("p1", "2026-11-24 09:00"),
            ("p2", None),
        ]
        migrate(db, command.downgrade, "0007")
        assert [(p, str(d)[:16]) for p, d in rows("SELECT * FROM profile_timers")] == [
            ("p1", "2026-11-24 09:00")
        ]
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM profiles"))
        db.dispose()


def test_computed_state_survives_0009_both_ways(db_url: str) -> None:
    """On PostgreSQL 0009 turns `profiles.computed` from jsonb into json, and back."""
    db = Database(db_url)
    state = '{"features": {"f": {"e": [[1, 2.5]]}}, "segments": {"s": "x"}}'

    def stored() -> Any:
        with db.engine.connect() as conn:
            return conn.execute(sa.select(profiles.c.computed)).scalar_one()

    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO profiles (id, traits, computed, created_at, updated_at)"
                    " VALUES ('p1', '{}', :state, :at, :at)"
                ),
                {"state": state, "at": datetime(2026, 11, 24)},
            )
        migrate(db, command.downgrade, "0008")
        assert stored() == {"features": {"f": {"e": [[1, 2.5]]}}, "segments": {"s": "x"}}
        migrate(db, command.upgrade, "0009")
        assert stored() == {"features": {"f": {"e": [[1, 2.5]]}}, "segments": {"s": "x"}}
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM profiles"))
        db.dispose()


def timeline_message_ids(db: Database, profile_id: str) -> list[str]:
    """The message ids of a person's timeline, newest first, as `ProfileService.events`
    reads them: the events, then the Audience events of changes and history."""
    with db.read() as conn:
        own = event_store.timeline(conn, profile_id, limit=100, before=None)
        audience = segment_store.audience_timeline(conn, profile_id, limit=100, before=None)
    return [m for _, m, _ in audience] + [row["message_id"] for row in own]


def test_going_back_before_0010_writes_the_audience_events_into_events(db_url: str) -> None:
    """From 0010 an Audience event is read from the history, or from the change not yet
    applied; 0009 reads it from `events`, so going back writes it there, as Ariane wrote
    it then."""
    db = Database(db_url)
    at = datetime(2026, 11, 24, 9, 0, 0, 123456, tzinfo=UTC)
    history = {
        "segment_id": "s1",
        "profile_id": "p1",
        "change": "entered",
        "cause": "event",
        "at": at,
        "message_id": "audience-1",
        "segment_name": "buyers",
    }
    try:
        with db.engine.begin() as conn:
            conn.execute(
                segments.insert().values(
                    id="s1",
                    name="buyers",
                    description="",
                    condition={},
                    created_at=at,
                    updated_at=at,
                )
            )
            conn.execute(segment_history.insert().values(history))
            # One from before 0010, whose event is in `events` already.
            conn.execute(
                segment_history.insert().values(
                    {**history, "message_id": None, "segment_name": None}
                )
            )
            waiting = {**history, "change": "exited", "cause": "time", "message_id": "audience-2"}
            del waiting["segment_name"]
            conn.execute(segment_changes.insert().values(waiting))
        migrate(db, command.downgrade, "0009")
        with db.engine.connect() as conn:
            written = conn.execute(
                sa.select(
                    events.c.source_id,
                    events.c.message_id,
                    events.c.profile_id,
                    events.c.event,
                    events.c.timestamp,
                    events.c.payload,
                ).order_by(events.c.id)
            ).all()
        expected = [
            audience_event(
                change="entered",
                message_id="audience-1",
                at=at,
                segment_id="s1",
                segment_name="buyers",
                cause="event",
                profile_id="p1",
            ),
            audience_event(
                change="exited",
                message_id="audience-2",
                at=at,
                segment_id="s1",
                segment_name="buyers",
                cause="time",
                profile_id="p1",
            ),
        ]
        assert [row.payload for row in written] == expected
        assert [(r.source_id, r.message_id, r.profile_id, r.event) for r in written] == [
            ("ariane", "audience-1", "p1", "Audience Entered"),
            ("ariane", "audience-2", "p1", "Audience Exited"),
        ]
        assert {row.timestamp for row in written} == {at}

        # Back at 0010 the change still waiting is its event again: the copy in `events`
        # goes, and the timeline shows each event once.
        migrate(db, command.upgrade, "0010")
        assert timeline_message_ids(db, "p1") == ["audience-2", "audience-1"]
        # An event written there again meanwhile (a process of the version before, still
        # running) is not written twice on the way back.
        with db.engine.begin() as conn:
            conn.execute(
                events.insert().values(
                    source_id="ariane",
                    message_id="audience-2",
                    profile_id="p1",
                    type="track",
                    event="Audience Exited",
                    timestamp=at,
                    received_at=at,
                    payload={},
                )
            )
        migrate(db, command.downgrade, "0009")
        with db.engine.connect() as conn:
            ids = conn.execute(sa.select(events.c.message_id).order_by(events.c.id))
            assert ids.scalars().all() == ["audience-1", "audience-2"]
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            for table in (events, segment_changes, segment_history, segments):
                conn.execute(table.delete())
        db.dispose()


def test_0017_deletes_the_loyalty_and_earn_messages_marked_sent(db_url: str) -> None:
    """Dealt with, they are now deleted rather than marked sent; those marked before go,
    and every other message stays."""
    db = Database(db_url)
    at = datetime(2026, 11, 24, 9, 0)
    queued = [
        ("loyalty", "loyalty-entry-1", at),
        ("loyalty", "loyalty-entry-2", None),
        ("earn", "earn-1", at),
        ("earn", "earn-2", None),
        ("audience", "audience-1", None),
    ]
    try:
        migrate(db, command.downgrade, "0016")
        with db.engine.begin() as conn:
            for topic, message_id, sent in queued:
                conn.execute(
                    sa.text(
                        "INSERT INTO outbox (topic, message_id, profile_id, payload,"
                        " created_at, dispatched_at) VALUES (:topic, :message_id, 'p1',"
                        " NULL, :at, :sent)"
                    ),
                    {"topic": topic, "message_id": message_id, "at": at, "sent": sent},
                )
        migrate(db, command.upgrade, "0017")
        with db.engine.connect() as conn:
            left = conn.execute(sa.text("SELECT message_id FROM outbox ORDER BY id")).scalars()
            assert list(left) == ["loyalty-entry-2", "earn-2", "audience-1"]
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM outbox"))
        db.dispose()


def test_0018_fills_the_search_keys_and_puts_identifiers_in_code_order(db_url: str) -> None:
    """The name and email traits of every live profile get their search keys; identifier
    values sort by character code on both databases, whatever PostgreSQL's locale."""
    db = Database(db_url)
    at = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def trait(value: Any) -> dict[str, Any]:
        return {"value": value, "at": "2026-11-26T09:00:00.000000Z", "source": "s"}

    rows = [
        ("p1", None, {"name": trait("Ada Lovelace"), "email": trait("Ada@Example.org")}),
        ("p2", None, {"name": trait(" Émile Straße "), "plan": trait("trial")}),
        ("p3", None, {"name": trait(42), "email": trait("")}),
        ("p4", "p1", {}),
    ]
    try:
        migrate(db, command.downgrade, "0017")
        with db.engine.begin() as conn:
            for profile_id, merged_into, traits in rows:
                conn.execute(
                    profiles.insert().values(
                        id=profile_id,
                        merged_into=merged_into,
                        traits=traits,
                        computed={},
                        created_at=at,
                        updated_at=at,
                    )
                )
            for value in ("b", "B", "é", "a"):
                conn.execute(
                    sa.text(
                        "INSERT INTO identities (value, type, profile_id, created_at)"
                        " VALUES (:value, 'user_id', 'p1', :at)"
                    ),
                    {"value": value, "at": at},
                )
        migrate(db, command.upgrade, "0018")
        with db.engine.connect() as conn:
            keys = conn.execute(
                sa.text("SELECT id, search_name, search_email FROM profiles ORDER BY id")
            ).all()
            assert [tuple(row) for row in keys] == [
                ("p1", "ada lovelace", "ada@example.org"),
                ("p2", "émile strasse", None),
                ("p3", None, None),
                ("p4", None, None),
            ]
            ordered = conn.execute(sa.text("SELECT value FROM identities ORDER BY value"))
            assert list(ordered.scalars()) == ["B", "a", "b", "é"]
        migrate(db, command.downgrade, "0017")
        with db.engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("profiles")}
            assert not {"search_name", "search_email"} & columns
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM identities"))
            conn.execute(sa.text("DELETE FROM profiles"))
        db.dispose()


def test_0019_types_the_loyalty_events_and_starts_the_earn_rules_at_the_first_queued(
    db_url: str,
) -> None:
    """The outbox's loyalty messages become typed events; the events queued for the earn
    rules go, the rules' handler starting at the first of them; Audience messages go."""
    db = Database(db_url)
    at = datetime(2026, 11, 24, 9, 0)
    earned = {
        "type": "track",
        "event": "Points Earned",
        "messageId": "loyalty-entry-1",
        "timestamp": "2026-11-24T09:00:00.000000Z",
        "properties": {"programme": "club", "points": 5, "reference": "R-1"},
    }
    try:
        migrate(db, command.downgrade, "0018")
        with db.engine.begin() as conn:
            for n in range(1, 4):
                conn.execute(
                    sa.text(
                        "INSERT INTO events (source_id, message_id, profile_id, type, event,"
                        " timestamp, received_at, payload) VALUES ('web', :m, 'p1', 'track',"
                        " 'Order Completed', :at, :at, '{}')"
                    ),
                    {"m": f"m-{n}", "at": at},
                )
            rows = [
                ("loyalty", "loyalty-entry-1", orjson.dumps(earned).decode()),
                ("earn", "earn-2", '{"source_id": "web", "message_id": "m-2"}'),
                ("earn", "earn-3", '{"source_id": "web", "message_id": "m-3"}'),
                ("audience", "audience-1", None),
            ]
            for topic, message_id, payload in rows:
                conn.execute(
                    sa.text(
                        "INSERT INTO outbox (topic, message_id, profile_id, payload, created_at)"
                        " VALUES (:topic, :message_id, 'p1', :payload, :at)"
                    ),
                    {"topic": topic, "message_id": message_id, "payload": payload, "at": at},
                )
            second = conn.execute(
                sa.text("SELECT id FROM events WHERE message_id = 'm-2'")
            ).scalar_one()
        migrate(db, command.upgrade, "0019")
        with db.engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT topic, message_id, payload FROM outbox ORDER BY id")
            ).all()
            position = conn.execute(
                sa.text("SELECT tx, position FROM bus_positions WHERE handler = 'earn-rules'")
            ).one()
        [(topic, message_id, payload)] = left
        typed = payload if isinstance(payload, dict) else orjson.loads(payload)
        assert (topic, message_id) == ("PointsEarned", "loyalty-entry-1")
        assert typed == {"programme": "club", "properties": {"points": 5, "reference": "R-1"}}
        assert tuple(position) == (0, second - 1)
    finally:
        upgrade(db)
        with db.engine.begin() as conn:
            for table in ("outbox", "events", "bus_positions"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
        db.dispose()
