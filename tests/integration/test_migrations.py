"""The Alembic migrations build exactly the schema that `storage.tables` declares."""

from __future__ import annotations

import ast
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ariane.storage.database import Database
from ariane.storage.migrate import MIGRATIONS, alembic_config, upgrade
from ariane.storage.tables import metadata, profiles


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
