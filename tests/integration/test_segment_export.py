"""GET /api/segments/{segment}/export on both databases: a segment's members as CSV or
Parquet, with the identifiers and traits chosen, read a page at a time."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.services import segment_exports
from tests.conftest import FakeClock
from tests.integration.test_segments_api import Api

TRIAL = {"trait": "plan", "op": "eq", "value": "trial"}


@pytest.fixture
def api(client: TestClient, admin_token: dict[str, str], write_key: str) -> Api:
    return Api(client, admin_token, write_key)


def people(api: Api, clock: FakeClock) -> dict[str, str]:
    """Ada and Bob on trial, Cy paying: Ada has held two emails, Bob none."""
    ada = api.send(
        "ada",
        plan="trial",
        name="Ada",
        email="ada@first.example",
        age=36,
        score=1,
        vip=True,
        address={"city": "Paris", "zip": "75001"},
        tags=["beta", "admin"],
        code="A1",
    )
    clock.advance(minutes=1)
    api.send("ada", email="ada@second.example")
    bob = api.send("bob", plan="trial", name="Bob", age=41, score=2.5, vip=False, code=7)
    cy = api.send("cy", plan="paid", name="Cy", email="cy@example.com")
    api.create("trial", TRIAL)
    return {"ada": ada, "bob": bob, "cy": cy}


def export(api: Api, segment: str = "trial", **params: Any) -> Any:
    response = api.client.get(f"/api/segments/{segment}/export", params=params, headers=api.admin)
    assert response.status_code == 200, response.text
    return response


def entered(api: Api, segment: str = "trial") -> dict[str, datetime]:
    page = api.get(f"/api/segments/{segment}/members", params={"limit": 1000})
    return {m["profile_id"]: datetime.fromisoformat(m["entered_at"]) for m in page["members"]}


def read_csv(text: str) -> list[list[Any]]:
    """The rows, each time of entry (UTC, ISO-8601) read as a time."""
    header, *rows = csv.reader(io.StringIO(text))
    return [header, *([p, datetime.fromisoformat(at), *rest] for p, at, *rest in rows)]


def test_csv_holds_the_chosen_identifiers_then_traits_in_profile_id_order(
    api: Api, clock: FakeClock
) -> None:
    who = people(api, clock)
    response = export(
        api,
        identifier=["email", "userId"],
        trait=["name", "address.city", "age", "vip", "tags", "address", "missing"],
    )
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="trial-2026-03-02.csv"'
    rows = read_csv(response.text)
    # The email identifier is the first Ada held, not the last she sent.
    assert rows[0] == [
        "profile_id",
        "entered_at",
        "email",
        "user_id",
        "name",
        "address.city",
        "age",
        "vip",
        "tags",
        "address",
        "missing",
    ]
    at = entered(api)
    expected = {
        who["ada"]: [
            who["ada"],
            at[who["ada"]],
            "ada@first.example",
            "ada",
            "Ada",
            "Paris",
            "36",
            "true",
            '["beta","admin"]',
            '{"city":"Paris","zip":"75001"}',
            "",
        ],
        who["bob"]: [who["bob"], at[who["bob"]], "", "bob", "Bob", "", "41", "false", "", "", ""],
    }
    assert rows[1:] == [expected[p] for p in sorted(expected)]


def test_no_columns_chosen_is_the_profile_id_and_time_of_entry(api: Api, clock: FakeClock) -> None:
    who = people(api, clock)
    rows = read_csv(export(api).text)
    assert rows == [["profile_id", "entered_at"], *sorted(map(list, entered(api).items()))]
    assert sorted(r[0] for r in rows[1:]) == sorted([who["ada"], who["bob"]])

    api.create("nobody", {"trait": "plan", "op": "eq", "value": "gold"})
    empty = export(api, "nobody", identifier="email", trait="name")
    assert empty.text == "profile_id,entered_at,email,name\r\n"


def test_parquet_columns_are_typed_by_what_the_members_hold(api: Api, clock: FakeClock) -> None:
    who = people(api, clock)
    response = export(
        api,
        format="parquet",
        identifier=["email", "user_id"],
        trait=["name", "age", "score", "vip", "address", "address.zip", "code", "tags", "none"],
    )
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert response.headers["content-disposition"] == (
        'attachment; filename="trial-2026-03-02.parquet"'
    )
    table = pq.read_table(io.BytesIO(response.content))
    assert table.schema == pa.schema(
        [
            ("profile_id", pa.string()),
            ("entered_at", pa.timestamp("us", tz="UTC")),
            ("email", pa.string()),
            ("user_id", pa.string()),
            ("name", pa.string()),
            ("age", pa.int64()),
            # A whole number and a fraction: doubles.
            ("score", pa.float64()),
            ("vip", pa.bool_()),
            # Objects, arrays and mixed kinds: the text CSV has.
            ("address", pa.string()),
            ("address.zip", pa.string()),
            ("code", pa.string()),
            ("tags", pa.string()),
            ("none", pa.string()),
        ]
    )
    rows = {row["profile_id"]: row for row in table.to_pylist()}
    assert {p: row.pop("entered_at") for p, row in rows.items()} == entered(api)
    assert rows[who["ada"]] == {
        "profile_id": who["ada"],
        "email": "ada@first.example",
        "user_id": "ada",
        "name": "Ada",
        "age": 36,
        "score": 1.0,
        "vip": True,
        "address": '{"city":"Paris","zip":"75001"}',
        "address.zip": "75001",
        "code": "A1",
        "tags": '["beta","admin"]',
        "none": None,
    }
    assert rows[who["bob"]] == {
        "profile_id": who["bob"],
        "email": None,
        "user_id": "bob",
        "name": "Bob",
        "age": 41,
        "score": 2.5,
        "vip": False,
        "address": None,
        "address.zip": None,
        "code": "7",
        "tags": None,
        "none": None,
    }
    assert table.column("profile_id").to_pylist() == sorted(rows)


def test_a_number_column_is_int64_only_if_every_value_is_whole_within_64_bits(
    api: Api,
) -> None:
    ada = api.send("ada", plan="trial", weight=3.0, big=2**64 - 1, least=-(2**63))
    bob = api.send("bob", plan="trial", weight=4, big=5, least=1)
    api.create("trial", TRIAL)
    response = export(api, format="parquet", trait=["weight", "big", "least"])
    table = pq.read_table(io.BytesIO(response.content)).drop_columns(["entered_at"])
    assert table.schema.types[1:] == [pa.int64(), pa.float64(), pa.int64()]
    rows = {row.pop("profile_id"): row for row in table.to_pylist()}
    assert rows == {
        ada: {"weight": 3, "big": float(2**64 - 1), "least": -(2**63)},
        bob: {"weight": 4, "big": 5.0, "least": 1},
    }


def test_a_segment_larger_than_a_page_is_read_page_by_page(
    api: Api, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_exports, "PAGE_SIZE", 2)
    ids = sorted(api.send(f"user-{n}", plan="trial", rank=n) for n in range(5))
    api.create("trial", TRIAL)

    rows = list(csv.reader(io.StringIO(export(api, identifier="user_id", trait="rank").text)))
    assert [r[0] for r in rows[1:]] == ids
    assert sorted(r[2:] for r in rows[1:]) == [[f"user-{n}", str(n)] for n in range(5)]
    # What is sent is written a page at a time: the header with the first.
    chunks = container.segment_exports.export("trial", traits=["rank"]).chunks("csv")
    assert [chunk.count(b"\r\n") for chunk in chunks] == [3, 2, 1]

    parquet = pq.ParquetFile(io.BytesIO(export(api, format="parquet", trait="rank").content))
    # A row group per page: 2, 2 and 1 members.
    assert [parquet.metadata.row_group(g).num_rows for g in range(3)] == [2, 2, 1]
    assert parquet.metadata.num_row_groups == 3
    table = parquet.read()
    assert table.column("profile_id").to_pylist() == ids
    assert sorted(table.column("rank").to_pylist()) == list(range(5))


def test_a_name_beyond_ascii_is_given_in_both_forms_of_rfc_6266(api: Api, clock: FakeClock) -> None:
    api.send("ada", plan="trial")
    api.create("essai été", TRIAL)
    response = export(api, "essai été")
    assert response.headers["content-disposition"] == (
        'attachment; filename="essai_t_-2026-03-02.csv";'
        " filename*=UTF-8''essai%20%C3%A9t%C3%A9-2026-03-02.csv"
    )


def test_columns_that_cannot_be_exported_are_422_naming_the_field(
    api: Api, client: TestClient, clock: FakeClock
) -> None:
    people(api, clock)
    cases: list[tuple[dict[str, str | list[str]], str, str]] = [
        ({"identifier": "fax"}, "identifier", "no identifier type 'fax'"),
        ({"identifier": "!!"}, "identifier", "no identifier type"),
        ({"identifier": ["email", "Email"]}, "identifier", "given twice"),
        ({"trait": "address..city"}, "trait", "is not a usable name"),
        ({"trait": "tags[0]"}, "trait", "is not a usable name"),
        ({"trait": "x" * 201}, "trait", "at most 200 characters"),
        ({"identifier": "email", "trait": "email"}, "trait", "a second column email"),
        ({"trait": "entered_at"}, "trait", "a second column entered_at"),
        ({"trait": ["name"] * 101}, "trait", "at most 100 trait columns"),
        ({"format": "xlsx"}, "format", ""),
        ({"traits": "name"}, "traits", "unknown parameter 'traits'"),
    ]
    for params, field, says in cases:
        response = client.get("/api/segments/trial/export", params=params, headers=api.admin)
        assert response.status_code == 422, params
        assert response.json()["field"] == field, params
        assert says in response.json()["message"], (params, response.json())

    # The types Ariane reads, configured or not yet held by anyone, and any held.
    assert export(api, identifier=["loyalty_card", "phone"]).text.startswith(
        "profile_id,entered_at,loyalty_card,phone\r\n"
    )

    missing = client.get("/api/segments/nope/export", headers=api.admin)
    assert missing.status_code == 404
    assert missing.json() == {
        "code": "not_found",
        "message": "no segment 'nope'",
        "field": "segment",
    }


def test_only_admins_export_personal_data(
    api: Api, client: TestClient, analyst_token: dict[str, str], clock: FakeClock
) -> None:
    people(api, clock)
    refused = client.get("/api/segments/trial/export", headers=analyst_token)
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    assert client.get("/api/segments/trial/export").status_code == 401
    # The members' ids alone stay open to analysts.
    assert client.get("/api/segments/trial/members", headers=analyst_token).status_code == 200
