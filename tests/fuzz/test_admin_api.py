"""Schemathesis against /api/openapi.json, as an admin, on both databases: no request is
answered with a 5xx, nor with a status, a content type or a body its route does not
document, and what breaks a route's schema is refused with a 4xx.

Each operation is fuzzed three ways: with data that fits its schema, with data that does
not, and, where its path names things, with the path naming things that exist (a
profile, a loyalty member, a coupon, a segment...), so that the generated bodies reach
the code behind the lookups. Nothing is left out: deletions run last.

Schemathesis's own pytest entry for a schema made by a fixture
(`schemathesis.pytest.from_fixture`) fails under pytest 9 (`Function._nodeid` is gone),
so the operations are driven from their Hypothesis strategies here.
"""

from __future__ import annotations

import base64
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

CONFIG = schemathesis.Config.from_dict(
    {
        # The admin token is sent with every request; no other is generated.
        "generation": {"with-security-parameters": False},
        "checks": {
            # The schema says what a value looks like, not whether it names something
            # that exists or makes a valid definition (a cursor Ariane gave, a condition
            # over a trait): such requests are answered 404, 409 or 422, each documented.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]},
        },
    }
)
# Per operation and way: enough for about a minute on each database.
EXAMPLES = 10
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # A failure is shown as generated: shrinking dozens of operations would take minutes.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
PROGRAMME = {
    "id": "club",
    "name": "Club",
    "expiry": {"validity": "P365D"},
    "rewards": [
        {"id": "voucher", "cost": 10, "pool": "vouchers"},
        {"id": "tote", "cost": 5, "stock": 5},
    ],
    "coupon_pools": [{"id": "vouchers", "generate": {"count": 20, "prefix": "V-", "length": 8}}],
}
SEGMENT = {"name": "buyers", "condition": {"event": "Order Completed", "count": {"gte": 1}}}
TRAIT = {"name": "orders", "kind": "count", "event": "Order Completed"}
DESTINATION = {
    "type": "webhook",
    "receives": {"events": {"types": ["track"]}},
    "settings": {"url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
}


def existing(client: TestClient, write_key: str, admin: dict[str, str]) -> dict[str, str]:
    """Things for the paths to name, made through the public API: path parameter → value."""

    def made(method: str, path: str, body: Any, **headers: str) -> Any:
        response = client.request(method, path, json=body, headers={**admin, **headers})
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    basic = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    batch = [
        {"type": "identify", "userId": "ada", "traits": {"email": "ada@example.com"}},
        {"type": "track", "userId": "ada", "event": "Order Completed"},
    ]
    assert client.post("/v1/batch", json={"batch": batch}, headers=basic).status_code == 200
    ada = made("GET", "/api/profiles/lookup?type=user_id&value=ada", None)["id"]
    made("PUT", "/api/loyalty/programmes/club", PROGRAMME)
    member = f"/api/loyalty/programmes/club/members/{ada}"
    made("POST", f"{member}/earn", {"points": 1000}, **{"Idempotency-Key": "earn"})
    bought = made("POST", f"{member}/redeem", {"reward": "voucher"}, **{"Idempotency-Key": "buy"})
    made("POST", "/api/segments", SEGMENT)
    made("POST", "/api/computed-traits", TRAIT)
    made("PUT", "/api/destinations/crm", DESTINATION)
    return {
        "profile_id": ada,
        "programme": "club",
        "pool": "vouchers",
        "code": bought["coupon"]["code"],
        "segment": "buyers",
        "name": "orders",
        "destination": "crm",
        "purpose": "email",
    }


def test_the_admin_api_answers_every_request_as_its_schema_says(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    known = existing(client, write_key, admin_token)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", client.app, config=CONFIG)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) > 40
    failures: list[str] = []
    # Deletions last, so that the other operations find what they name.
    for operation in sorted(operations, key=lambda o: o.method.upper() == "DELETE"):
        names = {parameter.name for parameter in operation.path_parameters}
        ways = {mode.value: operation.as_strategy(mode) for mode in GenerationMode}
        if names and names <= known.keys():
            fixed = {name: known[name] for name in names}
            ways["existing"] = operation.as_strategy(path_parameters=fixed)
        for way, cases in ways.items():

            @FUZZ
            @given(case=cases)
            def answered_as_documented(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(headers=admin_token)

            try:
                answered_as_documented()
            except Unsatisfiable:
                # Nothing breaks the schema of an operation that takes no parameter, or
                # only path parameters of any text.
                assert way == "negative", operation.label
            except (Exception, BaseExceptionGroup) as failure:
                failures.append(f"{operation.label} ({way}): {failure}")
    assert not failures, "\n\n".join(failures)
