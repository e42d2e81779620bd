"""Shared fixtures. Integration tests take `db_url` and run once per database."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container, build
from ariane.settings import Settings
from ariane.storage.database import Database
from ariane.storage.migrate import upgrade
from ariane.storage.tables import metadata
from ariane.web.app import create_app
from tests.smtp import smtp as smtp  # a fixture: a real SMTP server on localhost

POSTGRES_URL = os.environ.get(
    "ARIANE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Where every fake clock starts unless a test says otherwise: a fixed moment, so that no
# test passes or fails by the real date (a Monday in a month with no season's offer).
EPOCH = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or EPOCH

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def _postgres_available() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable ({type(exc).__name__})"
    return None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    problem = _postgres_available()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem}; under CI=true PostgreSQL tests must run")
        pytest.skip(problem)
    name = f"ariane_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    upgrade(db)
    db.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "ariane.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
        # The row migration 0003 seeds: definition changes and writers lock it.
        conn.execute(sa.text("INSERT INTO catalogue_version (id, version) VALUES (1, 0)"))
    engine.dispose()
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(db_url: str) -> Settings:
    # Timers are fired, loyalty events published and the bus drained by the tests
    # themselves, at moments the fake clock decides.
    return Settings(
        database_url=db_url,
        identity={"custom_types": ["loyalty_card"]},
        segment_timer_interval=0,
        loyalty_review_interval=0,
        bus_idle_interval=0,
    )


@pytest.fixture
def container(settings: Settings, clock: FakeClock) -> Iterator[Container]:
    built = build(settings, clock=clock)
    yield built
    built.close()


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container)) as test_client:
        yield test_client


@pytest.fixture
def write_key(container: Container) -> str:
    return container.access.create_source("web")[1]


@pytest.fixture
def admin_token(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {container.access.create_token('admin')[1]}"}


@pytest.fixture
def analyst_token(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {container.access.create_token('analyst')[1]}"}
