"""Transactions: lost races retried after a growing pause and counted; no parameters in errors."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ariane.bootstrap import Container
from ariane.storage.database import Database, RetryTransaction, backoff
from ariane.storage.sqlite import SQLiteWriter
from ariane.storage.tables import sources

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def losing(times: int) -> tuple[list[int], Callable[[Connection], int]]:
    """Work that loses its race `times` times, then counts the sources."""
    calls: list[int] = []

    def work(conn: Connection) -> int:
        calls.append(1)
        if len(calls) <= times:
            raise RetryTransaction("lost")
        return int(conn.execute(sa.select(sa.func.count()).select_from(sources)).scalar_one())

    return calls, work


def test_a_lost_race_is_run_again_after_a_growing_pause_and_counted(db: Database) -> None:
    calls, work = losing(8)
    started = time.monotonic()
    assert db.write(work) == 0
    elapsed = time.monotonic() - started
    assert len(calls) == 9
    assert db.retries == 8
    # At least half of each ceiling: 0.5 + 1 + 2 + 4 + 8 + 16 + 32 + 50 ms.
    assert elapsed >= 0.1135


def test_the_last_attempt_gives_up(db: Database) -> None:
    calls, work = losing(5)
    with pytest.raises(RetryTransaction):
        db.write(work, attempts=3)
    assert len(calls) == 3
    assert db.retries == 2


def test_the_pause_doubles_from_a_millisecond_up_to_a_tenth_of_a_second() -> None:
    for attempt, ceiling in [(0, 0.001), (1, 0.002), (3, 0.008), (6, 0.064), (7, 0.1), (19, 0.1)]:
        pauses = [backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= pause <= ceiling for pause in pauses)
        assert len(set(pauses)) > 1, "the pause has no jitter"


def test_a_failing_statement_does_not_show_its_parameters(db: Database) -> None:
    secret = "ada.lovelace@example.org"
    with pytest.raises(DBAPIError) as raised, db.read() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table WHERE email = :email"), {"email": secret})
    assert "no_such_table" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)


def test_retries_are_exposed_in_metrics(container: Container, client: TestClient) -> None:
    _, work = losing(3)
    container.db.write(work)
    lines = client.get("/metrics").text.splitlines()
    assert "ariane_transaction_retries_total 3.0" in lines


def test_a_probe_finds_the_same_rows_as_in_whatever_the_values(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sources.insert(),
            [
                {"id": f"s{n}", "name": f"name-{n}", "write_key_hash": f"h{n}", "created_at": NOW}
                for n in range(4)
            ],
        )
    values = ["name-1", "name-1", "name-3", "absent"]
    probe = db.dialect.probe([sources.c.id], sources.c.name, values)
    with db.read() as conn:
        probed = sorted(conn.execute(probe).scalars())
        listed = sorted(
            conn.execute(sa.select(sources.c.id).where(sources.c.name.in_(values))).scalars()
        )
    assert probed == listed == ["s1", "s3"]


def in_transaction(conn: Connection) -> bool:
    """Whether the driver's connection under `conn` is inside a transaction."""
    raw: Any = conn.connection.dbapi_connection
    if hasattr(raw, "info"):  # psycopg
        return str(raw.info.transaction_status.name) != "IDLE"
    return bool(raw.in_transaction)


def test_a_lookup_reads_outside_a_transaction_and_hands_the_connection_back_as_it_was(
    db_url: str,
) -> None:
    """The token check's read: no BEGIN and COMMIT around its one statement. The one
    connection of the pool then runs transactions again: a write that fails undoes what
    it wrote, and a read sees one state."""
    database = Database(db_url, pool_size=1)
    try:
        with database.lookup() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(sources)).scalar() == 0
            assert not in_transaction(conn)

        def fails(conn: Connection) -> None:
            conn.execute(
                sources.insert().values(id="s1", name="till", write_key_hash="h", created_at=NOW)
            )
            assert in_transaction(conn)
            raise ValueError("changed my mind")

        with pytest.raises(ValueError):
            database.write(fails)
        with database.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(sources)).scalar() == 0
            assert in_transaction(conn)
    finally:
        database.dispose()


def test_a_forked_child_waits_for_the_sqlite_writer_its_parent_holds(tmp_path: Path) -> None:
    writer = SQLiteWriter(str(tmp_path / "forked.db"))
    with writer.hold():
        pass  # the lock file is open before the fork, as in a server that forks workers
    ready, told = os.pipe()
    with writer.hold():
        child = os.fork()
        if child == 0:
            with writer.hold():
                os.write(told, b"in")
            os._exit(0)
        time.sleep(0.5)
        os.set_blocking(ready, False)
        with pytest.raises(BlockingIOError):
            os.read(ready, 2)  # still waiting while the parent holds the lock
    arrived, _, _ = select.select([ready], [], [], 5)
    if not arrived:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the child never got the lock once the parent let it go")
    assert os.read(ready, 2) == b"in"
    assert os.waitpid(child, 0)[1] == 0
    writer.close()


_HOLD_ALONE = """
import sys
from ariane.storage.database import Database

with Database(sys.argv[1]).alone("round") as first:
    print(first, flush=True)
    sys.stdin.read()
"""


def test_one_process_at_a_time_is_alone_and_one_that_dies_lets_go_at_once(
    db_url: str,
) -> None:
    """`Database.alone` across processes: another process holding the name keeps this one
    out, and its death lets the name go, though it never said so."""
    db = Database(db_url)
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_ALONE, db_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "True"
            with db.alone("round") as first:
                assert not first
            with db.alone("another round") as first:
                assert first
            child.kill()
            child.wait()
            deadline = time.monotonic() + 10
            while True:
                with db.alone("round") as first:
                    if first:
                        break
                # PostgreSQL ends a dead client's session once it sees the socket shut.
                assert time.monotonic() < deadline, "the dead process's hold never went"
                time.sleep(0.05)
        finally:
            child.kill()
            db.dispose()


def test_a_block_alone_lets_go_when_it_ends_even_by_an_error(db_url: str) -> None:
    one, other = Database(db_url), Database(db_url)
    try:
        with pytest.raises(RuntimeError), one.alone("round") as first:
            assert first
            with other.alone("round") as second:
                assert not second
            # And this process's other threads wait their turn too.
            with one.alone("round") as again:
                assert not again
            raise RuntimeError("the round failed")
        with other.alone("round") as second:
            assert second
    finally:
        one.dispose()
        other.dispose()
