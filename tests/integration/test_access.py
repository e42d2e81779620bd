"""Write keys rotate and tokens are revoked, and names fit their columns, on both databases."""

from __future__ import annotations

import base64
import functools
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.domain.errors import DomainError
from ariane.services.access import AccessService
from tests.conftest import FakeClock

EVENT = {"userId": "u", "event": "E"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def another_process(container: Container, clock: FakeClock) -> AccessService:
    """The access service of another process on the same database: its own key cache."""
    return AccessService(container.db, clock)


def test_a_rotated_key_is_refused_and_the_new_one_accepted(
    client: TestClient, container: Container, clock: FakeClock
) -> None:
    container.access = AccessService(container.db, clock, key_cache_seconds=0)
    source, old_key = container.access.create_source("web")
    assert client.post("/v1/track", json=EVENT, headers=basic(old_key)).status_code == 200

    rotated, new_key = another_process(container, clock).rotate_key("web")
    assert rotated == source
    assert new_key != old_key

    refused = client.post("/v1/track", json=EVENT, headers=basic(old_key))
    assert refused.status_code == 401
    assert "rotated" in refused.json()["message"]
    in_body = client.post("/v1/track", json={**EVENT, "writeKey": old_key})
    assert in_body.status_code == 401
    assert client.post("/v1/track", json=EVENT, headers=basic(new_key)).status_code == 200


def test_a_key_rotated_elsewhere_works_here_only_until_the_cache_expires(
    client: TestClient, container: Container, clock: FakeClock
) -> None:
    assert container.access.key_cache.total_seconds() == 10
    old_key = container.access.create_source("web")[1]
    assert client.post("/v1/track", json=EVENT, headers=basic(old_key)).status_code == 200
    another_process(container, clock).rotate_key("web")

    clock.advance(seconds=9)
    assert client.post("/v1/track", json=EVENT, headers=basic(old_key)).status_code == 200
    clock.advance(seconds=2)
    assert client.post("/v1/track", json=EVENT, headers=basic(old_key)).status_code == 401


def test_a_key_rotated_by_this_process_is_refused_at_once(
    client: TestClient, container: Container
) -> None:
    old_key = container.access.create_source("web")[1]
    assert client.post("/v1/track", json=EVENT, headers=basic(old_key)).status_code == 200
    new_key = container.access.rotate_key("web")[1]
    assert client.post("/v1/track", json=EVENT, headers=basic(old_key)).status_code == 401
    assert client.post("/v1/track", json=EVENT, headers=basic(new_key)).status_code == 200


def test_rotating_an_unknown_source_names_it(container: Container) -> None:
    with pytest.raises(DomainError) as raised:
        container.access.rotate_key("nope")
    assert raised.value.field == "name"
    assert "no source named 'nope'" in raised.value.message


def test_a_revoked_token_is_refused_at_once(client: TestClient, container: Container) -> None:
    token, secret = container.access.create_token("analyst", "bi")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/sources", headers=headers).status_code == 200

    revoked = container.access.revoke_token(token.id)
    assert (revoked.id, revoked.name, revoked.role) == (token.id, "bi", "analyst")
    assert client.get("/api/sources", headers=headers).status_code == 401
    assert token.id not in [t.id for t in container.access.list_tokens()]
    with pytest.raises(DomainError) as again:
        container.access.revoke_token(token.id)
    assert again.value.field == "id"


def test_finding_the_services_hands_no_work_to_a_thread(
    client: TestClient, admin_token: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hand-over to a worker thread and back costs a request CPU time and, when
    requests overlap in a process, a wait for the interpreter: the token check, which
    reads the database, takes one; the dependency every route has on the services
    (`container`), which waits for nothing, none."""
    handed: list[str] = []
    hand_over = anyio.to_thread.run_sync

    async def counted(work: Any, *args: Any, **kwargs: Any) -> Any:
        named = work.func if isinstance(work, functools.partial) else work
        handed.append(named.__name__)
        return await hand_over(work, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    assert client.get("/api/loyalty/programmes", headers=admin_token).status_code == 200
    assert handed.count("check") == 1
    assert "container" not in handed


def test_tokens_are_listed_without_their_secrets(container: Container, clock: FakeClock) -> None:
    first = container.access.create_token("admin", "ops")[0]
    clock.advance(seconds=1)
    second = container.access.create_token("analyst")[0]
    assert container.access.list_tokens() == [first, second]
    assert second.name == "analyst"
    assert second.created_at == clock()


def test_names_longer_than_their_column_are_refused(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    longest = "s" * 200
    created = client.post("/api/sources", json={"name": longest}, headers=admin_token)
    assert created.status_code == 201, created.text
    too_long = client.post("/api/sources", json={"name": "s" * 201}, headers=admin_token)
    assert too_long.status_code == 422
    assert too_long.json()["field"] == "name"
    assert "at most 200" in too_long.json()["message"]

    assert container.access.create_token("admin", "t" * 200)[0].name == "t" * 200
    with pytest.raises(DomainError) as raised:
        container.access.create_token("admin", "t" * 201)
    assert raised.value.field == "name"


@pytest.mark.parametrize("name", ["a\x00b", "tab\there", "two\nlines"])
def test_names_with_control_characters_are_refused(
    client: TestClient, admin_token: dict[str, str], name: str
) -> None:
    response = client.post("/api/sources", json={"name": name}, headers=admin_token)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "name"
    # A NUL is refused before the route reads the body, as anywhere in the admin API.
    said = "NUL character" if "\x00" in name else "control character"
    assert said in response.json()["message"]
