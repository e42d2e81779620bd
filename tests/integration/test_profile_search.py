"""GET /api/profiles on both databases: the live profiles, filtered by segment, trait
and the start of an identifier, name or email, in pages; and lookups by a type Ariane
does not know."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.storage import profiles as profile_store
from tests.integration.test_admin_api import basic


class People:
    """People made through the tracking API, and the profile list as an analyst reads it."""

    def __init__(self, client: TestClient, token: dict[str, str], write_key: str) -> None:
        self.client = client
        self.token = token
        self.write_key = write_key

    def send(self, *messages: dict[str, Any]) -> None:
        batch = [{"messageId": uuid.uuid4().hex, **message} for message in messages]
        sent = self.client.post("/v1/batch", json={"batch": batch}, headers=basic(self.write_key))
        assert sent.status_code == 200, sent.text

    def identify(self, user_id: str, **traits: Any) -> str:
        self.send({"type": "identify", "userId": user_id, "traits": traits})
        return self.lookup("user_id", user_id)

    def lookup(self, id_type: str, value: str) -> str:
        found = self.client.get(
            "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=self.token
        )
        assert found.status_code == 200, found.text
        profile_id: str = found.json()["id"]
        return profile_id

    def page(self, **params: Any) -> dict[str, Any]:
        response = self.client.get("/api/profiles", params=params, headers=self.token)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def ids(self, **params: Any) -> list[str]:
        return [profile["id"] for profile in self.page(limit=1000, **params)["profiles"]]

    def error(self, params: Any) -> dict[str, Any]:
        response = self.client.get("/api/profiles", params=params, headers=self.token)
        assert response.status_code == 422, response.text
        body: dict[str, Any] = response.json()
        assert body["code"] == "invalid"
        return body


@pytest.fixture
def people(client: TestClient, analyst_token: dict[str, str], write_key: str) -> People:
    return People(client, analyst_token, write_key)


@pytest.fixture(params=["few", "many"])
def prefix_plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`q` is answered by gathering the profiles whose texts start with it when they are
    few, and by walking the profiles in id order when they are many: both, alike."""
    if request.param == "many":
        monkeypatch.setattr(profile_store, "_MANY", 1)


def test_an_analyst_lists_live_profiles_in_id_order_each_summed_up(people: People) -> None:
    ada = people.identify(
        "u-ada", name="Ada Lovelace", email="Ada@Example.org", plan="trial", phone="+44 20 1"
    )
    people.send({"type": "track", "userId": "u-ada", "anonymousId": "anon-1", "event": "Opened"})
    bob = people.identify("u-bob")

    page = people.page()
    assert [p["id"] for p in page["profiles"]] == sorted([ada, bob])
    assert page["next_cursor"] is None
    summary = next(p for p in page["profiles"] if p["id"] == ada)
    assert summary["identifiers"] == {
        "anonymous_id": ["anon-1"],
        "email": ["ada@example.org"],
        "user_id": ["u-ada"],
    }
    # A few traits that say who the person is; the 360° view has them all.
    assert summary["traits"] == {
        "name": "Ada Lovelace",
        "email": "Ada@Example.org",
        "phone": "+44 20 1",
    }
    assert summary["first_seen"] <= summary["last_seen"]
    assert set(summary) == {"id", "identifiers", "traits", "first_seen", "last_seen", "created_at"}


def test_a_profile_shows_its_first_three_identifiers_of_each_type(people: People) -> None:
    people.send(
        *(
            {"type": "track", "userId": "many", "anonymousId": f"anon-{n}", "event": "Seen"}
            for n in range(5)
        )
    )
    (summary,) = people.page()["profiles"]
    assert len(summary["identifiers"]["anonymous_id"]) == 3
    assert summary["identifiers"]["user_id"] == ["many"]


def test_segment_lists_its_members_now_by_id_or_name(
    people: People, client: TestClient, admin_token: dict[str, str]
) -> None:
    created = client.post(
        "/api/segments",
        json={"name": "trials", "condition": {"trait": "plan", "op": "eq", "value": "trial"}},
        headers=admin_token,
    )
    assert created.status_code == 201, created.text
    ada = people.identify("ada", plan="trial")
    bob = people.identify("bob", plan="trial")
    people.identify("cy", plan="paid")
    assert people.ids(segment="trials") == sorted([ada, bob])
    assert people.ids(segment=created.json()["id"]) == sorted([ada, bob])

    people.identify("bob", plan="paid")
    assert people.ids(segment="trials") == [ada]


def test_a_trait_filter_matches_the_value_exactly(people: People) -> None:
    trial = people.identify("trial", plan="trial", age=42, vip=True, address={"city": "Paris"})
    spelled = people.identify("spelled", plan="Trial", age="42", vip="true")
    people.identify("other", plan="trial-2", age=42.5, vip=False, address={"city": "Parisian"})
    people.identify("bare")

    assert people.ids(**{"trait.plan": "trial"}) == [trial]
    assert people.ids(**{"trait.plan": "tri"}) == []
    # A number or true/false written in the query finds the number and the text alike.
    assert people.ids(**{"trait.age": "42"}) == sorted([trial, spelled])
    assert people.ids(**{"trait.vip": "true"}) == sorted([trial, spelled])
    assert people.ids(**{"trait.address.city": "Paris"}) == [trial]
    assert people.ids(**{"trait.nothing": "x"}) == []


@pytest.mark.usefixtures("prefix_plan")
def test_q_finds_the_start_of_an_identifier_a_name_or_an_email(people: People) -> None:
    ada = people.identify("cust-0042", name="Ada Lovelace", email="Countess@Example.org")
    emile = people.identify("cust-0043", name="Émile Zola")
    people.send({"type": "identify", "anonymousId": "a1b2c3", "traits": {"name": "Straße"}})
    anonymous = people.lookup("anonymous_id", "a1b2c3")

    assert people.ids(q="cust-004") == sorted([ada, emile])
    assert people.ids(q="cust-0042") == [ada]
    assert people.ids(q="a1b") == [anonymous]
    # Names and emails without case; identifiers as they are stored.
    assert people.ids(q="ada") == [ada]
    assert people.ids(q="ADA LOVE") == [ada]
    assert people.ids(q="émile") == [emile]
    assert people.ids(q="EMILE") == []
    assert people.ids(q="strass") == [anonymous]
    assert people.ids(q="COUNTESS@") == [ada]
    assert people.ids(q="CUST-0042") == []
    # The start, not any part.
    assert people.ids(q="lovelace") == []
    assert people.ids(q="zzz") == []


@pytest.mark.usefixtures("prefix_plan")
def test_filters_combine(people: People, client: TestClient, admin_token: dict[str, str]) -> None:
    created = client.post(
        "/api/segments",
        json={"name": "openers", "condition": {"event": "App Opened"}},
        headers=admin_token,
    )
    assert created.status_code == 201, created.text
    ada = people.identify("ada", name="Ada", plan="trial")
    adam = people.identify("adam", name="Adam", plan="paid")
    people.identify("adele", name="Adele", plan="trial")
    people.identify("bob", name="Bob", plan="trial")
    for user in ("ada", "adam", "bob"):
        people.send({"type": "track", "userId": user, "event": "App Opened"})

    assert people.ids(q="ad", segment="openers") == sorted([ada, adam])
    assert people.ids(q="ad", **{"trait.plan": "trial", "segment": "openers"}) == [ada]
    assert people.ids(q="ad", **{"trait.plan": "paid", "trait.name": "Adam"}) == [adam]
    assert people.ids(q="ad", **{"trait.plan": "paid", "trait.name": "Ada"}) == []


@pytest.mark.usefixtures("prefix_plan")
@pytest.mark.parametrize("filters", [{}, {"q": "pager-"}, {"trait.plan": "trial"}])
def test_paging_sees_each_profile_once_while_new_ones_arrive(
    people: People, filters: dict[str, str]
) -> None:
    before = {people.identify(f"pager-{n:02}", plan="trial") for n in range(11)}
    people.identify("someone-else", plan="paid")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **filters}
        if cursor is not None:
            params["cursor"] = cursor
        page = people.page(**params)
        seen += [p["id"] for p in page["profiles"]]
        pages += 1
        # People keep arriving between pages: they come later in id order, or not at all.
        people.identify(f"pager-new-{pages}", plan="trial")
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["profiles"]) == 3
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    expected = before if filters else before | {people.lookup("user_id", "someone-else")}
    assert expected <= set(seen)


def test_a_merged_profile_is_not_listed(people: People, container: Container) -> None:
    people.send(
        {
            "type": "identify",
            "anonymousId": "shop-7",
            "traits": {"name": "Ada Shop", "email": "ada@shop.example", "store": "Lyon"},
        }
    )
    shop = people.lookup("anonymous_id", "shop-7")
    web = people.identify("web-7", name="Ada Web")
    container.profiles.merge(web, shop, reason="same person, seen at the till")

    assert people.ids() == [web]
    assert people.ids(q="ada") == [web]
    # What the absorbed profile held is the survivor's now.
    assert people.ids(q="shop-7") == [web]
    assert people.ids(q="ada@shop") == [web]
    assert people.ids(**{"trait.store": "Lyon"}) == [web]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a\x00"}, "q"),
        ({"segment": ""}, "segment"),
        ({"segment": "no-such-segment"}, "segment"),
        ({"trait.": "x"}, "trait."),
        ({'trait.a"b': "x"}, 'trait.a"b'),
        ({"trait.a..b": "x"}, "trait.a..b"),
        ({"trait.plan": "x" * 1001}, "trait.plan"),
        ({"trait.plan": "a\x00"}, "trait.plan"),
        ({f"trait.t{n}": "x" for n in range(21)}, "trait"),
        ({"segmnet": "trials"}, "segmnet"),
        ([("q", "a"), ("q", "b")], "q"),
        ([("trait.plan", "a"), ("trait.plan", "b")], "trait.plan"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(people: People, params: Any, field: str) -> None:
    people.identify("someone", plan="trial")
    assert people.error(params)["field"] == field


def test_lookup_of_a_type_ariane_does_not_know_is_422_listing_the_known_types(
    people: People,
) -> None:
    people.identify("ada", loyalty_card="LC-1")
    response = people.client.get(
        "/api/profiles/lookup", params={"type": "nosuch", "value": "x"}, headers=people.token
    )
    assert response.status_code == 422
    body = response.json()
    assert (body["code"], body["field"]) == ("invalid", "type")
    # Ariane's own types and those configured (tests configure loyalty_card).
    for known in ("user_id", "anonymous_id", "email", "phone", "device_id", "loyalty_card"):
        assert known in body["message"]


@pytest.mark.parametrize(
    ("id_type", "value"), [("email", "nobody@example.org"), ("loyalty_card", "LC-9")]
)
def test_lookup_of_a_known_type_that_no_one_holds_is_404(
    people: People, id_type: str, value: str
) -> None:
    people.identify("ada", loyalty_card="LC-1")
    response = people.client.get(
        "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=people.token
    )
    assert response.status_code == 404
    assert response.json()["field"] == "value"


def test_a_type_sent_only_in_external_ids_is_known_by_the_identifiers_stored(
    people: People,
) -> None:
    people.send(
        {
            "type": "identify",
            "userId": "ada",
            "context": {"externalIds": [{"type": "crm_id", "id": "CRM-1"}]},
        }
    )
    assert people.lookup("crm_id", "CRM-1") == people.lookup("user_id", "ada")
    missing = people.client.get(
        "/api/profiles/lookup", params={"type": "crm_id", "value": "CRM-2"}, headers=people.token
    )
    assert missing.status_code == 404
