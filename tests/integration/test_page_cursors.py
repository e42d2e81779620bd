"""Every list that pages takes back only the cursors it gave, on both databases: anything
else (garbage, a number, one edited or cut short, one of another list) is 422 naming
`cursor` and saying what to do, never an empty or a first page that looks like an answer."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from tests.integration.test_admin_api import basic

ROUTES = ["profiles", "timeline", "segment members", "segment history", "loyalty history"]


class Lists:
    """Two of everything that pages, and the path of each list."""

    def __init__(self, client: TestClient, container: Container, token: dict[str, str]) -> None:
        self.client = client
        self.token = token
        key = container.access.create_source("web")[1]
        segment = client.post(
            "/api/segments",
            json={"name": "openers", "condition": {"event": "App Opened"}},
            headers=token,
        )
        assert segment.status_code == 201, segment.text
        batch = [
            {"type": "track", "userId": user, "event": "App Opened", "messageId": uuid.uuid4().hex}
            for user in ("ada", "ada", "bob")
        ]
        sent = client.post("/v1/batch", json={"batch": batch}, headers=basic(key))
        assert sent.status_code == 200, sent.text
        ada = client.get(
            "/api/profiles/lookup", params={"type": "user_id", "value": "ada"}, headers=token
        ).json()["id"]
        container.programmes.apply({"id": "club", "name": "Club"})
        container.loyalty.earn("club", ada, 10, "first")
        container.loyalty.earn("club", ada, 20, "second")
        self.paths = {
            "profiles": "/api/profiles",
            "timeline": f"/api/profiles/{ada}/events",
            "segment members": "/api/segments/openers/members",
            "segment history": "/api/segments/openers/history",
            "loyalty history": f"/api/loyalty/programmes/club/members/{ada}/history",
        }

    def get(self, route: str, **params: Any) -> Any:
        return self.client.get(self.paths[route], params=params, headers=self.token)

    def next_cursor(self, route: str) -> str:
        first = self.get(route, limit=1)
        assert first.status_code == 200, first.text
        cursor: str = first.json()["next_cursor"]
        assert cursor is not None
        return cursor


@pytest.fixture
def lists(client: TestClient, container: Container, analyst_token: dict[str, str]) -> Lists:
    admin = {"Authorization": f"Bearer {container.access.create_token('admin')[1]}"}
    made = Lists(client, container, admin)
    made.token = analyst_token
    return made


def items(body: dict[str, Any]) -> list[Any]:
    (found,) = (value for key, value in body.items() if isinstance(value, list))
    return found


@pytest.mark.parametrize("route", ROUTES)
def test_a_list_pages_on_with_the_cursor_it_gave(lists: Lists, route: str) -> None:
    first = lists.get(route, limit=1).json()
    rest = lists.get(route, limit=100, cursor=lists.next_cursor(route))
    assert rest.status_code == 200, rest.text
    assert rest.json()["next_cursor"] is None
    everything = lists.get(route, limit=100).json()
    assert items(first) + items(rest.json()) == items(everything)


def tampered(cursor: str) -> str:
    middle = len(cursor) // 2
    return cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]


BAD_CURSORS: dict[str, Callable[[Lists, str], str]] = {
    "garbage": lambda lists, route: "garbage!",
    "a word": lambda lists, route: "garbage",
    "negative": lambda lists, route: "-1",
    "zero": lambda lists, route: "0",
    "a number": lambda lists, route: "12",
    "empty": lambda lists, route: "",
    "tampered": lambda lists, route: tampered(lists.next_cursor(route)),
    "cut short": lambda lists, route: lists.next_cursor(route)[:-3],
    "lengthened": lambda lists, route: lists.next_cursor(route) + "AAAA",
    "of another list": lambda lists, route: lists.next_cursor(
        ROUTES[(ROUTES.index(route) + 1) % len(ROUTES)]
    ),
}


@pytest.mark.parametrize("kind", list(BAD_CURSORS))
@pytest.mark.parametrize("route", ROUTES)
def test_a_cursor_ariane_did_not_give_is_422_naming_it(lists: Lists, route: str, kind: str) -> None:
    response = lists.get(route, cursor=BAD_CURSORS[kind](lists, route))
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["code"], body["field"]) == ("invalid", "cursor")
    assert "without a cursor" in body["message"] and "next_cursor" in body["message"]
