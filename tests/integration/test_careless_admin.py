"""What careless clients send to the admin API (an `in` list of thousands of values, a
condition nested a thousand levels deep, NUL characters, numbers beyond 64 bits, a rule
naming a segment that does not exist) is answered with a 4xx naming the field, or works
as the same definition saved would; never with a 500. On both databases."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.domain.predicates import InvalidDefinition
from ariane.web.api.checks import CheckedRoute
from tests.integration.test_admin_api import DOCUMENTATION, basic


class Admin:
    """The admin API as a careless client uses it, and the tracking API to make people."""

    def __init__(self, client: TestClient, headers: dict[str, str], write_key: str) -> None:
        self.client = client
        self.headers = headers
        self.write_key = write_key

    def person(self, user: str, **traits: Any) -> str:
        message = {"type": "identify", "userId": user, "traits": traits}
        sent = self.client.post(
            "/v1/batch", json={"batch": [message]}, headers=basic(self.write_key)
        )
        assert sent.status_code == 200, sent.text
        found = self.client.get(
            "/api/profiles/lookup", params={"type": "user_id", "value": user}, headers=self.headers
        )
        assert found.status_code == 200, found.text
        profile_id: str = found.json()["id"]
        return profile_id

    def preview(self, condition: dict[str, Any]) -> Any:
        response = self.client.post(
            "/api/segments/preview",
            json={"condition": condition, "sample": 100},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def members(self, segment: str) -> set[str]:
        response = self.client.get(
            f"/api/segments/{segment}/members", params={"limit": 1000}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        return {member["profile_id"] for member in response.json()["members"]}


@pytest.fixture
def admin(client: TestClient, admin_token: dict[str, str], write_key: str) -> Admin:
    return Admin(client, admin_token, write_key)


# --- 1. long `in` lists -----------------------------------------------------------------------

PLANS = [f"plan-{index}" for index in range(1500)]


@pytest.mark.parametrize(
    "condition",
    [
        {"trait": "plan", "op": "in", "value": PLANS},
        {"trait": "seats", "op": "in", "value": [*range(2000), 2.5, True]},
        {"not": {"trait": "plan", "op": "not_in", "value": PLANS}},
        {
            "any": [
                {"trait": "plan", "op": "in", "value": PLANS[:1000]},
                {"trait": "vip", "op": "in", "value": [True]},
            ]
        },
    ],
    ids=["texts", "numbers", "not_in", "nested"],
)
def test_a_preview_of_an_in_list_of_thousands_of_values_counts_as_the_saved_segment(
    admin: Admin, condition: dict[str, Any]
) -> None:
    ada = admin.person("ada", plan="plan-7", seats=1999)
    bob = admin.person("bob", plan="plan-999", seats=2.5, vip=True)
    admin.person("cy", plan="free", seats=3000, vip=False)
    admin.person("dee", plan=7, seats="2", vip="true")
    preview = admin.preview(condition)
    saved = admin.client.post(
        "/api/segments", json={"name": "listed", "condition": condition}, headers=admin.headers
    )
    assert saved.status_code == 201, saved.text
    assert set(preview["sample"]) == admin.members("listed") == {ada, bob}
    assert preview["count"] == 2


def test_a_segment_with_a_long_in_list_backfills_and_keeps_up_with_events(admin: Admin) -> None:
    ada = admin.person("ada", plan="plan-1400")
    condition = {"trait": "plan", "op": "in", "value": PLANS}
    saved = admin.client.post(
        "/api/segments", json={"name": "listed", "condition": condition}, headers=admin.headers
    )
    assert saved.status_code == 201, saved.text
    assert admin.members("listed") == {ada}
    bob = admin.person("bob", plan="plan-0")
    admin.person("ada", plan="free")
    assert admin.members("listed") == {bob}
    assert admin.preview({"segment": "listed"})["sample"] == [bob]


def test_an_earn_rule_whose_condition_holds_a_long_in_list_applies(
    admin: Admin, container: Container
) -> None:
    rule = {
        "id": "listed",
        "event": "Review Posted",
        "points": 10,
        "when": {"trait": "plan", "op": "in", "value": PLANS},
    }
    container.programmes.apply({"id": "club", "earn_rules": [rule]})
    ada = admin.person("ada", plan="plan-1499")
    bob = admin.person("bob", plan="free")
    for member in (ada, bob):
        earned = admin.client.post(
            f"/api/loyalty/programmes/club/members/{member}/events",
            json={"event": "Review Posted"},
            headers={**admin.headers, "Idempotency-Key": f"review-{member}"},
        )
        assert earned.status_code == 200, earned.text
        assert earned.json()["points"] == (10 if member == ada else 0)


# --- 2. NUL characters ------------------------------------------------------------------------

PROGRAMME = {"id": "club", "rewards": [{"id": "gift", "cost": 0}]}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/api/profiles/{ada}/consents/mark%00eting", {"status": "granted"}, "purpose"),
        (
            "PUT",
            "/api/profiles/{ada}/consents/email",
            {"status": "granted", "source": "a\0"},
            "source",
        ),
        ("GET", "/api/profiles/ada%00", None, "profile_id"),
        ("GET", "/api/profiles/lookup?type=user_id&value=ada%00", None, "value"),
        ("GET", "/api/quarantine?source_id=web%00", None, "source_id"),
        ("GET", "/api/quarantine?web%00=1", None, "web\\u0000"),
        ("POST", "/api/segments", {"name": "tri\0al", "condition": {"segment": "x"}}, "name"),
        (
            "POST",
            "/api/segments",
            {"name": "trial", "description": "\0", "condition": {"trait": "a", "op": "exists"}},
            "description",
        ),
        ("GET", "/api/segments/tri%00al", None, "segment"),
        (
            "POST",
            "/api/segments/preview",
            {"condition": {"trait": "plan", "op": "eq", "value": "trial\0"}},
            "condition.value",
        ),
        (
            "POST",
            "/api/segments/preview",
            {"condition": {"all": [{"trait": "plan", "op": "in", "value": ["a", "b\0"]}]}},
            "condition.all[0].value[1]",
        ),
        (
            "POST",
            "/api/computed-traits",
            {"name": "orders", "kind": "count", "event": "Order\0"},
            "event",
        ),
        ("PUT", "/api/loyalty/programmes/club", {**PROGRAMME, "name": "Club\0"}, "name"),
        (
            "POST",
            "/api/loyalty/programmes/club/members/{ada}/events",
            {"event": "Review Posted", "properties": {"note\0": "fine"}},
            "properties.note\\u0000",
        ),
        (
            "POST",
            "/api/loyalty/programmes/club/members/{ada}/earn",
            {"points": 5, "reference": "R\0-1"},
            "reference",
        ),
        ("POST", "/api/loyalty/coupons/GIFT%00/burn", {"channel": "till"}, "code"),
        (
            "POST",
            "/api/loyalty/simulate",
            {"programme": "club", "event": "Review\0 Posted"},
            "event",
        ),
    ],
)
def test_a_nul_character_anywhere_in_a_request_is_422_naming_the_field(
    admin: Admin,
    container: Container,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
) -> None:
    container.programmes.apply(PROGRAMME)
    ada = admin.person("ada", plan="trial")
    response = admin.client.request(
        method,
        path.format(ada=ada),
        json=body,
        headers={**admin.headers, "Idempotency-Key": "nul-1"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid"
    assert response.json()["field"] == field
    assert "NUL" in response.json()["message"]
    # Nothing was stored on SQLite, which would have kept it.
    assert admin.client.get("/api/segments", headers=admin.headers).json()["segments"] == []
    consents = admin.client.get(f"/api/profiles/{ada}/consents", headers=admin.headers)
    assert consents.json()["history"] == []


def test_every_admin_api_route_is_checked_before_it_reads_its_request(
    client: TestClient,
) -> None:
    routes = list(iter_route_contexts(client.app.routes))  # type: ignore[attr-defined]
    admin = [r for r in routes if (r.path or "").startswith("/api") and r.path not in DOCUMENTATION]
    assert len(admin) > 40
    assert [r.path for r in admin if not isinstance(r.original_route, CheckedRoute)] == []


def test_every_error_an_admin_route_answers_is_documented_with_the_error_body(
    client: TestClient,
) -> None:
    spec = client.get("/api/openapi.json").json()
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["code", "message"]
    for path, item in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in item.items():
            answers = operation["responses"]
            assert {"401", "422"} <= answers.keys(), (method, path)
            for status, answer in answers.items():
                if status.startswith("4"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == error_body, (method, path, status)
    paths = spec["paths"]
    assert "409" in paths["/api/sources"]["post"]["responses"]
    assert "403" in paths["/api/profiles/{profile_id}"]["delete"]["responses"]
    assert "403" not in paths["/api/profiles/{profile_id}"]["get"]["responses"]
    assert {"408", "413"} <= paths["/api/segments/preview"]["post"]["responses"].keys()


# --- 3. numbers too large ---------------------------------------------------------------------


@pytest.mark.parametrize("points", [10**12 + 1, 2**63, 2**70])
@pytest.mark.parametrize("movement", ["earn", "spend", "adjust", "transfer"])
def test_points_beyond_the_most_one_movement_moves_are_422_naming_points(
    admin: Admin, container: Container, movement: str, points: int
) -> None:
    container.programmes.apply(PROGRAMME)
    ada = admin.person("ada")
    bob = admin.person("bob")
    signed = -points if movement == "adjust" else points
    response = admin.client.post(
        f"/api/loyalty/programmes/club/members/{ada}/{movement}",
        json={"points": signed, "to": bob} if movement == "transfer" else {"points": signed},
        headers={**admin.headers, "Idempotency-Key": f"{movement}-{points}"},
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid", "points")
    assert container.loyalty.balance("club", ada)["available"] == 0


def test_the_most_points_one_movement_moves_can_be_given_and_taken(
    admin: Admin, container: Container
) -> None:
    container.programmes.apply(PROGRAMME)
    ada = admin.person("ada")
    for movement, points in (("earn", 10**12), ("adjust", 10**12), ("adjust", -(10**12))):
        response = admin.client.post(
            f"/api/loyalty/programmes/club/members/{ada}/{movement}",
            json={"points": points},
            headers={**admin.headers, "Idempotency-Key": f"{movement}-{points}"},
        )
        assert response.status_code == 200, response.text
    assert container.loyalty.balance("club", ada)["available"] == 10**12


# --- 4. rules naming what does not exist ------------------------------------------------------

PURCHASES = {"id": "purchases", "event": "Order Completed", "points_per_unit": 1}


@pytest.mark.parametrize(
    ("rule", "field", "named"),
    [
        (
            {
                **PURCHASES,
                "multipliers": [
                    {"category": "rings", "factor": 2},
                    {"segment": "vips", "factor": 2},
                ],
            },
            "earn_rules[1].multipliers[1].segment",
            "'vips'",
        ),
        (
            {"id": "reviews", "event": "Review Posted", "points": 5, "when": {"segment": "vips"}},
            "earn_rules[1].when.segment",
            "'vips'",
        ),
        (
            {
                "id": "reviews",
                "event": "Review Posted",
                "points": 5,
                "when": {"computed": "orders_30d", "op": "gte", "value": 2},
            },
            "earn_rules[1].when.computed",
            "'orders_30d'",
        ),
    ],
)
def test_a_rule_naming_a_segment_or_computed_trait_that_does_not_exist_is_refused(
    admin: Admin, container: Container, rule: dict[str, Any], field: str, named: str
) -> None:
    admin.client.post(
        "/api/segments",
        json={"name": "vip", "condition": {"trait": "vip", "op": "eq", "value": True}},
        headers=admin.headers,
    )
    rules = [{**PURCHASES, "id": "base", "multipliers": [{"segment": "vip", "factor": 2}]}, rule]
    put = admin.client.put(
        "/api/loyalty/programmes/club", json={"earn_rules": rules}, headers=admin.headers
    )
    assert put.status_code == 422, put.text
    assert (put.json()["code"], put.json()["field"]) == ("invalid_definition", field)
    assert named in put.json()["message"]
    # As `ariane loyalty apply` reads a file: the path names the programme in it.
    with pytest.raises(InvalidDefinition) as refused:
        container.programmes.apply({"programmes": [{"id": "club", "earn_rules": rules}]})
    assert refused.value.field == f"programmes[0].{field}"
    listed = admin.client.get("/api/loyalty/programmes", headers=admin.headers)
    assert listed.json() == []


def test_a_computed_trait_an_earn_rule_reads_cannot_be_deleted(
    admin: Admin, container: Container
) -> None:
    trait = {"name": "orders", "kind": "count", "event": "Order Completed"}
    created = admin.client.post("/api/computed-traits", json=trait, headers=admin.headers)
    assert created.status_code == 201, created.text
    when = {"computed": "orders", "op": "gte", "value": 0}
    rule = {"id": "loyal-reviews", "event": "Review Posted", "points": 5, "when": when}
    container.programmes.apply({"id": "club", "earn_rules": [rule]})
    deleted = admin.client.delete("/api/computed-traits/orders", headers=admin.headers)
    assert deleted.status_code == 409, deleted.text
    assert deleted.json()["field"] == "name"
    assert "club" in deleted.json()["message"]
    assert "loyal-reviews" in deleted.json()["message"]
    ada = admin.person("ada")
    earned = admin.client.post(
        f"/api/loyalty/programmes/club/members/{ada}/events",
        json={"event": "Review Posted"},
        headers={**admin.headers, "Idempotency-Key": "review-1"},
    )
    assert earned.status_code == 200, earned.text
    assert earned.json()["points"] == 5


# --- 5. reads that are POSTs ------------------------------------------------------------------


def test_an_analyst_previews_segments_and_simulates_earning_but_changes_nothing(
    admin: Admin, container: Container, analyst_token: dict[str, str]
) -> None:
    container.programmes.apply(
        {"id": "club", "earn_rules": [{"id": "reviews", "event": "Review Posted", "points": 5}]}
    )
    ada = admin.person("ada", plan="trial")
    client = admin.client
    condition = {"trait": "plan", "op": "eq", "value": "trial"}
    preview = client.post(
        "/api/segments/preview", json={"condition": condition}, headers=analyst_token
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["sample"] == [ada]
    simulated = client.post(
        "/api/loyalty/simulate",
        json={"programme": "club", "event": "Review Posted", "profile_id": ada},
        headers=analyst_token,
    )
    assert simulated.status_code == 200, simulated.text
    assert simulated.json()["points"] == 5
    # What changes something stays an admin's.
    saved = client.post(
        "/api/segments", json={"name": "trial", "condition": condition}, headers=analyst_token
    )
    assert saved.status_code == 403, saved.text
    earned = client.post(
        f"/api/loyalty/programmes/club/members/{ada}/events",
        json={"event": "Review Posted"},
        headers={**analyst_token, "Idempotency-Key": "review-1"},
    )
    assert earned.status_code == 403, earned.text
    assert container.loyalty.balance("club", ada)["available"] == 0


# --- 6. structures nested too deep, text that is not text, numbers beyond 64 bits -------------


def nested(key: str, levels: int, leaf: str) -> str:
    """`{"key": {"key": ... leaf}}`, `levels` objects deep, as JSON text: the json module
    writes no structure deeper than the interpreter's recursion limit."""
    return f'{{"{key}": ' * levels + leaf + "}" * levels


EXISTS = '{"trait": "plan", "op": "exists"}'


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        (
            "POST",
            "/api/segments/preview",
            f'{{"condition": {nested("not", 1000, EXISTS)}}}',
            "body",
        ),
        (
            "POST",
            "/api/segments/preview",
            f'{{"condition": {nested("not", 150, EXISTS)}}}',
            "condition" + ".not" * 99,
        ),
        (
            "POST",
            "/api/segments",
            f'{{"name": "deep", "condition": {nested("not", 5000, EXISTS)}}}',
            "body",
        ),
        (
            "PUT",
            "/api/loyalty/programmes/club",
            '{"earn_rules": [{"id": "r", "event": "E", "points": 1, "when": WHEN}]}'.replace(
                "WHEN", nested("not", 990, EXISTS)
            ),
            "body",
        ),
        (
            "POST",
            "/api/loyalty/programmes/club/members/{ada}/events",
            f'{{"event": "Review Posted", "properties": {nested("a", 300, "1")}}}',
            "properties" + ".a" * 99,
        ),
        (
            "POST",
            "/api/loyalty/simulate",
            '{"programme": "club", "event": "E", "properties": {"list": [DEEP]}}'.replace(
                "DEEP", nested("a", 500, "1")
            ),
            "properties.list[0]" + ".a" * 97,
        ),
    ],
)
def test_a_body_nested_hundreds_of_levels_deep_is_422_naming_where(
    admin: Admin,
    container: Container,
    method: str,
    path: str,
    body: str,
    field: str,
) -> None:
    container.programmes.apply(PROGRAMME)
    ada = admin.person("ada", plan="trial")
    response = admin.client.request(
        method,
        path.format(ada=ada),
        content=body,
        headers={**admin.headers, "Content-Type": "application/json", "Idempotency-Key": "k"},
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid", field)
    assert "deeper than 100 levels" in response.json()["message"]


def test_a_condition_nested_deeper_than_conditions_go_names_its_node(admin: Admin) -> None:
    deep = admin.client.post(
        "/api/segments/preview",
        content=f'{{"condition": {nested("not", 40, EXISTS)}}}',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert deep.status_code == 422, deep.text
    assert deep.json()["code"] == "invalid_definition"
    assert deep.json()["field"] == "condition" + ".not" * 32


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "said"),
    [
        (
            "POST",
            "/api/segments",
            '{"name": "a\\ud800", "condition": {"segment": "x"}}',
            "name",
            "surrogate",
        ),
        (
            "POST",
            "/api/segments/preview",
            '{"condition": {"trait": "plan", "op": "in", "value": ["\\udfff"]}}',
            "condition.value[0]",
            "surrogate",
        ),
        (
            "PUT",
            "/api/loyalty/programmes/club",
            '{"name": "Club", "rewards": [{"id": "gift", "cost": 0, "name": "\\udbff!"}]}',
            "rewards[0].name",
            "surrogate",
        ),
        (
            "POST",
            "/api/loyalty/programmes/club/members/{ada}/events",
            '{"event": "Order Completed", "properties": {"order_id": 12345678901234567890123}}',
            "properties.order_id",
            "64 bits",
        ),
        (
            "POST",
            "/api/segments/preview",
            '{"condition": {"event": "App Opened", "count": {"lte": 100000000000000000000}}}',
            "condition.count.lte",
            "64 bits",
        ),
        (
            "POST",
            "/api/loyalty/simulate",
            '{"programme": "club", "event": "E", "properties": {"revenue": NaN}}',
            "properties.revenue",
            "NaN",
        ),
        (
            "POST",
            "/api/segments/preview",
            '{"condition": {"trait": "score", "op": "lt", "value": -Infinity}}',
            "condition.value",
            "NaN",
        ),
    ],
)
def test_text_that_is_not_text_and_numbers_no_database_holds_are_422_naming_the_field(
    admin: Admin,
    container: Container,
    method: str,
    path: str,
    body: str,
    field: str,
    said: str,
) -> None:
    container.programmes.apply(PROGRAMME)
    ada = admin.person("ada", plan="trial")
    response = admin.client.request(
        method,
        path.format(ada=ada),
        content=body,
        headers={**admin.headers, "Content-Type": "application/json", "Idempotency-Key": "k"},
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid", field)
    assert said in response.json()["message"]


def test_a_body_that_is_not_utf8_is_422_naming_the_body(admin: Admin) -> None:
    response = admin.client.post(
        "/api/segments/preview",
        content=b'{"condition": {"trait": "plan", "op": "eq", "value": "\xff"}}',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid", "body")
    assert "not valid UTF-8 at byte 54" in response.json()["message"]


# --- 6. conditions of a thousand tests --------------------------------------------------------


def plan_is(plan: str) -> dict[str, Any]:
    return {"trait": "plan", "op": "eq", "value": plan}


@pytest.mark.parametrize(
    "condition",
    [
        {"any": [plan_is(plan) for plan in PLANS[:1000]]},
        {
            "all": [
                {"trait": "plan", "op": "starts_with", "value": "plan-"},
                *({"not": plan_is(plan)} for plan in PLANS[1:1000]),
            ]
        },
        {
            "any": [
                {"all": [plan_is(plan), {"trait": "plan", "op": "exists"}]} for plan in PLANS[:333]
            ]
        },
        {
            "event": "Review Posted",
            "where": [{"property": "stars", "op": "ne", "value": n} for n in range(999)],
        },
    ],
    ids=["any", "all", "nested", "where"],
)
def test_a_condition_of_a_thousand_tests_previews_as_the_saved_segment(
    admin: Admin, condition: dict[str, Any]
) -> None:
    ada = admin.person("ada", plan="plan-0")
    admin.person("bob", plan="free")
    sent = admin.client.post(
        "/v1/batch",
        json={
            "batch": [
                {
                    "type": "track",
                    "userId": "ada",
                    "event": "Review Posted",
                    "properties": {"stars": 1000},
                }
            ]
        },
        headers=basic(admin.write_key),
    )
    assert sent.status_code == 200, sent.text
    preview = admin.preview(condition)
    saved = admin.client.post(
        "/api/segments", json={"name": "large", "condition": condition}, headers=admin.headers
    )
    assert saved.status_code == 201, saved.text
    assert set(preview["sample"]) == admin.members("large") == {ada}


@pytest.mark.parametrize(
    ("condition", "field"),
    [
        ({"any": [plan_is(plan) for plan in PLANS[:1001]]}, "condition"),
        ({"any": [plan_is(f"p{n}") for n in range(12000)]}, "condition"),
        (
            {
                "all": [
                    {"trait": "plan", "op": "exists"},
                    {
                        "event": "E",
                        "where": [{"property": "p", "op": "ne", "value": n} for n in range(1000)],
                    },
                ]
            },
            "condition",
        ),
    ],
)
def test_a_condition_of_more_than_a_thousand_tests_is_refused_before_it_is_saved(
    admin: Admin, container: Container, condition: dict[str, Any], field: str
) -> None:
    for path, body in (
        ("/api/segments/preview", {"condition": condition}),
        ("/api/segments", {"name": "large", "condition": condition}),
    ):
        refused = admin.client.post(path, json=body, headers=admin.headers)
        assert refused.status_code == 422, refused.text
        assert (refused.json()["code"], refused.json()["field"]) == ("invalid_definition", field)
        assert "at most 1,000 tests" in refused.json()["message"]
    rule = {"id": "large", "event": "Review Posted", "points": 5, "when": condition}
    put = admin.client.put(
        "/api/loyalty/programmes/club", json={"earn_rules": [rule]}, headers=admin.headers
    )
    assert put.status_code == 422, put.text
    assert put.json()["field"] == "earn_rules[0].when"


# --- 6. amounts no arithmetic holds -----------------------------------------------------------


@pytest.mark.parametrize(
    "properties",
    [
        {"order_id": "R-1", "revenue": "1e9999999"},
        {"order_id": "R-1", "total": "9e999999", "shipping": "-9e999999"},
        {"order_id": "R-1", "products": [{"sku": "A", "price": "9e999999", "quantity": "9e999"}]},
        {"order_id": "R-1", "products": [{"sku": "A", "price": "9e999999"}] * 20},
    ],
)
def test_a_sale_worth_more_than_any_arithmetic_holds_is_422_naming_properties(
    admin: Admin, container: Container, properties: dict[str, Any]
) -> None:
    container.programmes.apply({"id": "club", "earn_rules": [PURCHASES]})
    ada = admin.person("ada")
    sale = {"event": "Order Completed", "properties": properties}
    for path, body in (
        (f"/api/loyalty/programmes/club/members/{ada}/events", sale),
        ("/api/loyalty/simulate", {**sale, "programme": "club", "profile_id": ada}),
    ):
        response = admin.client.post(
            path, json=body, headers={**admin.headers, "Idempotency-Key": "sale-1"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "properties"
        assert "more than 1,000,000,000,000" in response.json()["message"]


def test_a_return_worth_more_than_any_arithmetic_holds_takes_back_what_the_sale_earned(
    admin: Admin, container: Container
) -> None:
    container.programmes.apply({"id": "club", "earn_rules": [PURCHASES]})
    ada = admin.person("ada")
    item = {"sku": "A", "price": 100, "quantity": 1}
    headers = {**admin.headers, "Idempotency-Key": "sale-1"}
    sale = {"event": "Order Completed", "properties": {"order_id": "R-1", "products": [item]}}
    sold = admin.client.post(
        f"/api/loyalty/programmes/club/members/{ada}/events", json=sale, headers=headers
    )
    assert sold.json()["points"] == 100, sold.text
    returned = admin.client.post(
        f"/api/loyalty/programmes/club/members/{ada}/returns",
        json={"order_id": "R-1", "products": [{**item, "price": "9e999999", "quantity": "9e9"}]},
        headers={**admin.headers, "Idempotency-Key": "return-1"},
    )
    assert returned.status_code == 200, returned.text
    assert returned.json()["points"] == 100
    assert container.loyalty.balance("club", ada)["available"] == 0


# --- 6. names of the wrong type ---------------------------------------------------------------

MODEL = {
    "features": [{"event": "App Opened", "within": "P3D"}],
    "center": [0],
    "scale": [1],
    "centroids": {"idle": [0], "busy": [5]},
}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/segments/preview", {"condition": {"segment": []}}, "condition.segment"),
        (
            "POST",
            "/api/segments",
            {"name": "s", "condition": {"not": {"computed": [None], "op": "exists"}}},
            "condition.not.computed",
        ),
        (
            "POST",
            "/api/segments/preview",
            {"condition": {"behaviour": MODEL, "group": ["idle"]}},
            "condition.group",
        ),
        (
            "PUT",
            "/api/loyalty/programmes/club",
            {
                "rewards": [{"id": "gift", "cost": 0}],
                "earn_rules": [{"id": "r", "event": "E", "reward": ["gift"]}],
            },
            "earn_rules[0].reward",
        ),
    ],
)
def test_a_name_of_the_wrong_type_in_a_definition_is_422_naming_it(
    admin: Admin, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    response = admin.client.request(method, path, json=body, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid_definition", field)
