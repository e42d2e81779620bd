"""Writes of many rows at once (`Dialect.insert_bulk`) and profile timers, kept in the
profile's row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ariane.domain.profiles import ProfileState
from ariane.storage.database import Database
from ariane.storage.profiles import claim_due, insert_profiles, update_profiles
from ariane.storage.tables import outbox, profiles

NOW = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
# Text the driver or PostgreSQL's array syntax could misread.
AWKWARD = ['a "quoted", {braced} \\ text', "NULL", "", "é€😀"]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    built = Database(db_url)
    yield built
    built.dispose()


def message(n: int, **values: Any) -> dict[str, Any]:
    return {
        "topic": "audience",
        "message_id": f"m{n}",
        "profile_id": f"p{n}",
        "payload": {"n": n},
        "created_at": NOW,
        **values,
    }


def stored(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(sa.select(outbox).order_by(outbox.c.id))
        return [dict(row._mapping) for row in rows]


def timers(db: Database) -> dict[str, datetime]:
    with db.read() as conn:
        query = sa.select(profiles.c.id, profiles.c.due_at).where(profiles.c.due_at.is_not(None))
        return {str(p): due for p, due in conn.execute(query)}


def test_values_come_back_as_they_went_in_and_ids_follow_the_rows(db: Database) -> None:
    rows = [
        message(
            0,
            topic=AWKWARD[0],
            payload={"nested": {"list": [1, 2.5, True, None, "é€😀"], "NULL": AWKWARD[0]}},
            created_at=NOW + timedelta(microseconds=1),
        ),
        message(
            1, profile_id=AWKWARD[1], payload=[AWKWARD[1], {}], created_at=NOW.replace(year=1999)
        ),
        message(2, profile_id=AWKWARD[2], payload="a string document"),
        message(
            3,
            profile_id=None,
            payload={AWKWARD[3]: AWKWARD[3]},
            created_at=NOW.astimezone(timezone(timedelta(hours=-3, minutes=-30))),
        ),
    ]
    assert db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, rows)) == 4
    found = stored(db)
    assert [r["message_id"] for r in found] == ["m0", "m1", "m2", "m3"]
    assert found[0]["id"] < found[1]["id"] < found[2]["id"] < found[3]["id"]
    for row, back in zip(rows, found, strict=True):
        assert {k: back[k] for k in row} == row
    assert found[3]["created_at"] == NOW
    assert found[3]["created_at"].tzinfo is UTC


def test_rows_that_hit_a_unique_key_are_skipped_and_not_counted(db: Database) -> None:
    db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, [message(1, payload={"first": 1})]))
    rows = [message(0), message(1, payload={"first": 0}), message(2), message(2)]
    assert db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, rows)) == 2
    found = stored(db)
    assert [r["message_id"] for r in found] == ["m1", "m0", "m2"]
    assert found[0]["payload"] == {"first": 1}


def test_rows_beyond_one_statement_go_in_the_next(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ariane.storage.postgres._BULK_CHUNK", 2)
    db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, [message(3)]))
    # m3 is taken: it is skipped in the second chunk, and m4 alone fills the third.
    rows = [message(n) for n in range(5)]
    assert db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, rows)) == 4
    assert [r["message_id"] for r in stored(db)] == ["m3", "m0", "m1", "m2", "m4"]


def test_no_rows_write_nothing(db: Database) -> None:
    assert db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, [])) == 0
    assert stored(db) == []


def test_a_value_too_long_for_its_column_is_refused_not_cut(db: Database) -> None:
    if db.dialect.name == "sqlite":
        pytest.skip("SQLite does not enforce the lengths of text columns")
    with pytest.raises(DBAPIError, match="too long"):
        db.write(lambda conn: db.dialect.insert_bulk(conn, outbox, [message(0, topic="t" * 101)]))
    assert stored(db) == []


def test_a_timer_is_written_with_its_profile_and_only_where_it_moved(db: Database) -> None:
    later = NOW + timedelta(days=1, microseconds=1)
    latest = later + timedelta(microseconds=1)
    names = ["kept", "moved", "stopped", "started", "never"]
    people = {name: ProfileState(name, computed={"n": 0}) for name in names}
    first = {"kept": NOW, "moved": NOW, "stopped": NOW}
    db.write(lambda conn: insert_profiles(conn, people.values(), NOW, first))
    assert timers(db) == first

    for state in people.values():
        state.computed["n"] = 1
    moves = {"moved": later, "stopped": None, "started": latest}
    db.write(lambda conn: update_profiles(conn, people.values(), later, moves))
    assert timers(db) == {"kept": NOW, "moved": later, "started": latest}
    # Every profile was written, those whose timer did not move too.
    with db.read() as conn:
        written = conn.execute(sa.select(profiles.c.id, profiles.c.computed)).all()
    assert {str(p): c for p, c in written} == {name: {"n": 1} for name in names}

    db.write(lambda conn: update_profiles(conn, people.values(), later, {}))
    assert timers(db) == {"kept": NOW, "moved": later, "started": latest}

    # Due ones are claimed earliest first; those not yet due wait.
    assert db.write(lambda conn: claim_due(conn, latest, 10)) == ["kept", "moved", "started"]
    assert db.write(lambda conn: claim_due(conn, later, 10)) == ["kept", "moved"]
    assert db.write(lambda conn: claim_due(conn, later, 1)) == ["kept"]
    assert db.write(lambda conn: claim_due(conn, NOW, 10)) == ["kept"]
    assert db.write(lambda conn: claim_due(conn, NOW - timedelta(microseconds=1), 10)) == []
