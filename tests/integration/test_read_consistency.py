"""A read sees one state of the database, and a crafted page cursor is refused, not a 500."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError

from ariane.bootstrap import Container
from ariane.storage.tables import consents
from tests.integration.test_consent import profile_id, send


def count_consents(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(consents)).scalar_one())


def test_a_read_does_not_see_what_commits_while_it_runs(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    send(client, write_key, "identify", userId="steady")
    pid = profile_id(client, admin_token, "steady")
    with container.db.read() as conn:
        before = count_consents(conn)
        container.profiles.set_consent(pid, "sms", "granted", source="test")
        during = count_consents(conn)
    with container.db.read() as conn:
        after = count_consents(conn)
    assert (before, during, after) == (0, 0, 1)


def test_a_read_cannot_write_on_postgresql(db_url: str, container: Container) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no read-only transactions")
    with pytest.raises(DBAPIError) as raised, container.db.read() as conn:
        conn.execute(sa.text("DELETE FROM consents"))
    assert getattr(raised.value.orig, "sqlstate", None) == "25006"  # read_only_sql_transaction
    # The connection goes back to the pool able to write again.
    container.access.create_source("after-a-read")


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "crafted",
    [
        cursor("9999-12-31T23:59:59.000000-05:00|1"),
        cursor("0001-01-01T00:00:00.000000+01:00|1"),
        cursor(f"2026-01-01T00:00:00.000000Z|{2**64}"),
        cursor("2026-01-01T00:00:00.000000Z|-1"),
        cursor("2026-01-01T00:00:00.000000Z"),
        # An Audience event's message id is at most 200 characters.
        cursor("2026-01-01T00:00:00.000000Z|audience-" + "0" * 200),
        "not base64 at all!",
    ],
)
def test_a_crafted_timeline_cursor_is_422(
    client: TestClient, write_key: str, admin_token: dict[str, str], crafted: str
) -> None:
    send(client, write_key, "track", userId="pager", event="Seen")
    pid = profile_id(client, admin_token, "pager")
    page = client.get(
        f"/api/profiles/{pid}/events", params={"cursor": crafted}, headers=admin_token
    )
    assert page.status_code == 422, page.text
    assert page.json()["field"] == "cursor"
