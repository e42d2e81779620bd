"""The `ariane` command on both databases: sources, tokens, profiles, file imports,
loyalty, journeys and channels."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from ariane.bootstrap import Container
from ariane.cli import app
from ariane.services.ingest import Envelope
from ariane.storage.tables import loyalty_lots, quarantine
from tests.smtp import SMTPServer


@pytest.fixture
def cli(db_url: str) -> Any:
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> Result:
        result = runner.invoke(
            app, list(args), env={"ARIANE_DATABASE_URL": db_url, "ARIANE_CONFIG": None}
        )
        if ok:
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    return run


def last_line(result: Result) -> str:
    return result.stdout.strip().splitlines()[-1]


def show(cli: Any, *args: str) -> Any:
    return orjson.loads(cli("profile", "show", *args).stdout)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def test_sources_create_prints_the_write_key_last(cli: Any, container: Container) -> None:
    write_key = last_line(cli("sources", "create", "web"))
    source = container.access.source_for_key(write_key)
    assert source is not None and source.name == "web"
    cli("sources", "create", "shop")
    listed = [line.split("\t") for line in cli("sources", "list").stdout.splitlines()]
    assert [row[1] for row in listed] == ["web", "shop"]
    assert listed[0][0] == source.id

    again = cli("sources", "create", "web", ok=False)
    assert again.exit_code == 1
    assert "a source named 'web' exists already" in again.stderr


@pytest.mark.parametrize("role", ["admin", "analyst"])
def test_tokens_create_prints_the_token_last(cli: Any, container: Container, role: str) -> None:
    secret = last_line(cli("tokens", "create", "--role", role, "--name", "ci"))
    token = container.access.token_for_secret(secret)
    assert token is not None and (token.role, token.name) == (role, "ci")


def test_tokens_create_rejects_an_unknown_role(cli: Any) -> None:
    result = cli("tokens", "create", "--role", "root", ok=False)
    assert result.exit_code == 1
    assert "error (role): role must be one of admin, analyst" in result.stderr
    assert result.stdout == ""


def test_sources_rotate_key_prints_the_new_key_last(cli: Any, container: Container) -> None:
    old_key = last_line(cli("sources", "create", "web"))
    rotated = cli("sources", "rotate-key", "web")
    new_key = last_line(rotated)
    assert new_key.startswith("wk_") and new_key != old_key
    assert "servers refuse the old one within 10 seconds" in rotated.stdout
    assert container.access.source_for_key(old_key) is None
    source = container.access.source_for_key(new_key)
    assert source is not None and source.name == "web"

    unknown = cli("sources", "rotate-key", "nope", ok=False)
    assert unknown.exit_code == 1
    assert "error (name): no source named 'nope'; `ariane sources list` shows them" in (
        unknown.stderr
    )


def test_tokens_list_shows_no_secret_and_revoke_stops_a_token(
    cli: Any, container: Container
) -> None:
    ops = last_line(cli("tokens", "create", "--role", "admin", "--name", "ops"))
    bi = last_line(cli("tokens", "create", "--role", "analyst", "--name", "bi"))
    listed = cli("tokens", "list").stdout
    assert ops not in listed and bi not in listed
    rows = [line.split("\t") for line in listed.splitlines()]
    assert sorted((row[1], row[2]) for row in rows) == [("bi", "analyst"), ("ops", "admin")]
    bi_id = next(row[0] for row in rows if row[1] == "bi")
    assert all(datetime.fromisoformat(row[3]) for row in rows)

    revoked = cli("tokens", "revoke", bi_id)
    assert f"analyst token bi (id {bi_id}) revoked" in revoked.stdout
    assert container.access.token_for_secret(bi) is None
    assert container.access.token_for_secret(ops) is not None
    assert [line.split("\t")[1] for line in cli("tokens", "list").stdout.splitlines()] == ["ops"]

    again = cli("tokens", "revoke", bi_id, ok=False)
    assert again.exit_code == 1
    assert f"error (id): no token with id '{bi_id}'" in again.stderr


def test_names_over_200_characters_are_refused(cli: Any, container: Container) -> None:
    source = cli("sources", "create", "s" * 201, ok=False)
    assert source.exit_code == 1
    assert "error (name): name is 201 characters long" in source.stderr
    token = cli("tokens", "create", "--role", "admin", "--name", "t" * 201, ok=False)
    assert token.exit_code == 1
    assert "error (name): name is 201 characters long" in token.stderr
    assert container.access.list_sources() == [] and container.access.list_tokens() == []
    last_line(cli("sources", "create", "s" * 200))


def test_profile_show_by_id_email_or_any_identifier(cli: Any, tmp_path: Path) -> None:
    cli("sources", "create", "web")
    events = [
        {
            "type": "identify",
            "userId": "u-1",
            "traits": {"email": "Ada@Example.com", "plan": "pro"},
        },
        {"type": "track", "userId": "u-1", "event": "Signed Up"},
    ]
    cli("import", "events", str(write_jsonl(tmp_path / "e.jsonl", events)), "--source", "web")

    by_email = show(cli, "--email", "ada@example.com")
    assert by_email["traits"] == {"email": "Ada@Example.com", "plan": "pro"}
    assert by_email["computed"]["event_counts"] == {"Signed Up": 1}
    assert show(cli, by_email["id"]) == by_email
    assert show(cli, "--type", "user_id", "--value", "u-1") == by_email

    missing = cli("profile", "show", "--email", "nobody@example.com", ok=False)
    assert missing.exit_code == 1
    assert "no profile holds email 'nobody@example.com'" in missing.stderr
    neither = cli("profile", "show", ok=False)
    assert neither.exit_code == 1
    assert "give a profile id, --email, or --type with --value" in neither.stderr


def test_import_jsonl_quarantines_dedupes_and_resolves_identities(
    cli: Any, tmp_path: Path, container: Container
) -> None:
    cli("sources", "create", "crm")
    path = tmp_path / "events.jsonl"
    lines = [
        orjson.dumps({"type": "page", "anonymousId": "visit-1", "messageId": "m1"}),
        orjson.dumps(
            {
                "type": "identify",
                "anonymousId": "visit-1",
                "userId": "u-9",
                "traits": {"email": "bo@example.com"},
                "messageId": "m2",
            }
        ),
        orjson.dumps({"type": "track", "userId": "u-9", "event": "Paid", "messageId": "m3"}),
        orjson.dumps({"type": "track", "userId": "u-9", "event": "Paid", "messageId": "m3"}),
        orjson.dumps({"type": "track", "userId": "u-9", "messageId": "m4"}),
        b"{not json",
        orjson.dumps({"type": "track", "userId": "u-9", "event": "No id"}),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")

    first = cli("import", "events", str(path), "--source", "crm", "--batch-size", "3")
    assert last_line(first) == "7 rows: accepted 4, duplicates 1, quarantined 2"
    assert "importing" in first.stderr and "7/7" in first.stderr

    profile = show(cli, "--email", "bo@example.com")
    assert {(i["type"], i["value"]) for i in profile["identities"]} == {
        ("anonymous_id", "visit-1"),
        ("email", "bo@example.com"),
        ("user_id", "u-9"),
    }
    assert profile["computed"]["event_counts"] == {"Paid": 1, "No id": 1}
    assert profile["computed"]["type_counts"] == {"page": 1, "identify": 1, "track": 2}

    with container.db.read() as conn:
        reasons = {
            row.field: row.reason
            for row in conn.execute(sa.select(quarantine.c.field, quarantine.c.reason))
        }
    assert reasons["event"] == "track needs an event name (a non-empty string)"
    assert reasons["(row)"].startswith("row 6 is not JSON")

    # Running the same import again stores nothing twice, rows without a messageId included.
    again = cli("import", "events", str(path), "--source", "crm")
    assert last_line(again) == "7 rows: accepted 0, duplicates 5, quarantined 2"
    assert show(cli, "--email", "bo@example.com")["computed"] == profile["computed"]


def test_import_csv_with_dotted_columns(cli: Any, tmp_path: Path, container: Container) -> None:
    cli("sources", "create", "shop")
    path = tmp_path / "orders.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "type",
                "userId",
                "event",
                "timestamp",
                "properties.revenue",
                "properties.coupon",
                "properties.paid",
                "traits.email",
                "traits.postcode",
            ]
        )
        writer.writerow(
            ["identify", "c-1", "", "2024-03-01T09:00:00Z", "", "", "", "cy@example.com", "06100"]
        )
        writer.writerow(
            [
                "track",
                "c-1",
                "Order Completed",
                "2024-03-02T10:30:00Z",
                "42.5",
                "0042",
                "true",
                "",
                "",
            ]
        )
        writer.writerow(["track", "", "Order Completed", "", "1", "", "", "", ""])

    result = cli("import", "events", str(path), "--source", "shop")
    assert last_line(result) == "3 rows: accepted 2, duplicates 0, quarantined 1"

    profile = show(cli, "--email", "cy@example.com")
    assert profile["traits"] == {"email": "cy@example.com", "postcode": "06100"}
    assert profile["computed"]["event_counts"] == {"Order Completed": 1}
    order = container.profiles.events(profile["id"])["events"][0]
    assert order["properties"] == {"revenue": 42.5, "coupon": "0042", "paid": True}
    assert order["timestamp"] == "2024-03-02T10:30:00.000000Z"


def test_import_parquet(cli: Any, tmp_path: Path, container: Container) -> None:
    cli("sources", "create", "warehouse")
    table = pa.table(
        {
            "type": ["identify", "track", "track"],
            "userId": ["p-1", "p-1", "p-2"],
            "event": [None, "Subscribed", "Subscribed"],
            "timestamp": pa.array(
                [
                    datetime(2024, 5, 1, 8, 0, tzinfo=UTC),
                    datetime(2024, 5, 1, 8, 5, 30, 250000, tzinfo=UTC),
                    datetime(2024, 5, 2, 12, 0, tzinfo=UTC),
                ],
                type=pa.timestamp("us", tz="UTC"),
            ),
            "traits.email": ["pia@example.com", None, None],
            "properties": [
                None,
                {"plan": "yearly", "price": 99.0},
                {"plan": "monthly", "price": 9.0},
            ],
        }
    )
    path = tmp_path / "export.parquet"
    pq.write_table(table, path)

    result = cli("import", "events", str(path), "--source", "warehouse")
    assert last_line(result) == "3 rows: accepted 3, duplicates 0, quarantined 0"
    assert "3/3" in result.stderr

    profile = show(cli, "--email", "pia@example.com")
    assert profile["computed"]["event_counts"] == {"Subscribed": 1}
    events = container.profiles.events(profile["id"])["events"]
    subscribed = next(e for e in events if e["type"] == "track")
    assert subscribed["properties"] == {"plan": "yearly", "price": 99.0}
    assert subscribed["timestamp"] == "2024-05-01T08:05:30.250000Z"
    assert show(cli, "--type", "user_id", "--value", "p-2")["id"] != profile["id"]


def test_import_errors_name_what_to_fix(cli: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [{"type": "track", "userId": "u", "event": "E"}])
    no_source = cli("import", "events", str(path), "--source", "nope", ok=False)
    assert no_source.exit_code == 1
    assert "no source named 'nope'; create it with `ariane sources create nope`" in (
        no_source.stderr
    )

    cli("sources", "create", "web")
    odd = tmp_path / "events.txt"
    odd.write_text("{}\n")
    unknown = cli("import", "events", str(odd), "--source", "web", ok=False)
    assert unknown.exit_code == 1
    assert "cannot tell the format of events.txt" in unknown.stderr
    forced = cli("import", "events", str(odd), "--source", "web", "--format", "jsonl")
    assert last_line(forced) == "1 row: accepted 0, duplicates 0, quarantined 1"
    bad_format = cli("import", "events", str(odd), "--source", "web", "--format", "xml", ok=False)
    assert "format must be one of jsonl, csv, parquet" in bad_format.stderr


def test_import_of_an_unreadable_file_says_so(cli: Any, tmp_path: Path) -> None:
    cli("sources", "create", "web")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet")
    result = cli("import", "events", str(broken), "--source", "web", ok=False)
    assert result.exit_code == 1
    assert "cannot read broken.parquet as parquet" in result.stderr

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("type,userId,event\ntrack,u,Caf\xe9\n".encode("latin-1"))
    result = cli("import", "events", str(latin1), "--source", "web", ok=False)
    assert result.exit_code == 1
    assert "cannot read latin1.csv as csv" in result.stderr


def test_loyalty_check_proves_the_lots_agree_with_the_ledger_or_names_where_not(
    cli: Any, container: Container
) -> None:
    assert cli("loyalty", "check").stdout.strip() == "lots and ledger agree"
    container.ingest.ingest(
        container.access.create_source("shop")[0].id,
        [{"type": "identify", "userId": "ada", "messageId": "m-1"}],
        Envelope(received_at=container.clock()),
    )
    ada = container.profiles.lookup("user_id", "ada")
    container.programmes.apply({"programmes": [{"id": "club"}, {"id": "staff"}]})
    container.loyalty.earn("club", ada, 100, "order-1")
    container.loyalty.spend("club", ada, 30, "reward-1")
    assert cli("loyalty", "check").stdout.strip() == "lots and ledger agree"

    # A lot changed behind the ledger's back.
    container.db.write(
        lambda conn: conn.execute(
            loyalty_lots.update().values(remaining=loyalty_lots.c.remaining + 5)
        )
    )
    found = cli("loyalty", "check", ok=False)
    assert found.exit_code == 1
    assert found.stdout.splitlines() == [
        f"club\t{ada}\tlot 1: 75 left, but 100 earned less 30 taken",
        f"club\t{ada}\tthe ledger sums to 70 points, the lots hold 75",
    ]
    assert "2 disagreement(s)" in found.stderr
    assert cli("loyalty", "check", "--programme", "staff").stdout.strip() == "lots and ledger agree"


def test_loyalty_apply_declares_programmes_idempotently_and_names_a_fault(
    cli: Any, container: Container, tmp_path: Path
) -> None:
    file = tmp_path / "club.yaml"
    file.write_text(
        "id: club\n"
        "name: Club Bijoux\n"
        "expiry: {return_window: P30D, validity: P365D}\n"
        "rewards:\n"
        "  - {id: voucher-10, cost: 500, per_member: 1, pool: vouchers}\n"
        "coupon_pools:\n"
        "  - {id: vouchers, generate: {count: 20, prefix: BJX-}}\n"
    )
    assert cli("loyalty", "apply", str(file)).stdout.splitlines() == [
        "created\tclub\tversion 1, 20 code(s) generated"
    ]
    assert cli("loyalty", "apply", str(file)).stdout.splitlines() == ["unchanged\tclub\tversion 1"]
    assert container.programmes.get("club")["coupon_pools"]["vouchers"]["free"] == 20

    file.write_text(file.read_text().replace("cost: 500", "cost: 400"))
    assert cli("loyalty", "apply", str(file)).stdout.splitlines() == ["updated\tclub\tversion 2"]

    file.write_text(file.read_text().replace("cost: 400", "cost: lots"))
    failed = cli("loyalty", "apply", str(file), ok=False)
    assert failed.exit_code == 1
    assert "programme.rewards[0].cost" in failed.stderr
    assert container.programmes.get("club")["definition"]["rewards"][0]["cost"] == 400


def test_journeys_apply_and_a_channel_test_send(
    cli: Any, container: Container, tmp_path: Path, smtp: SMTPServer
) -> None:
    file = tmp_path / "cart.yaml"
    file.write_text(
        "channels:\n"
        "  - name: email\n"
        "    type: email\n"
        f"    settings: {{host: 127.0.0.1, port: {smtp.port}, from: 'Shop <news@shop.test>',"
        " password: s3cret}\n"
        "templates:\n"
        "  - {name: reminder, subject: 'Your cart', text: 'Still there'}\n"
        "journeys:\n"
        "  - id: cart\n"
        "    entry: {event: Cart Abandoned, key: properties.cartId}\n"
        "    steps:\n"
        "      - wait: {event: Order Completed, keyed: true, timeout: PT1H}\n"
        "        on_event: exit\n"
        "      - send: {channel: email, template: reminder}\n"
    )
    assert cli("journeys", "apply", str(file)).stdout.splitlines() == ["created\tcart\tversion 1"]
    assert cli("journeys", "apply", str(file)).stdout.splitlines() == ["unchanged\tcart\tversion 1"]
    assert cli("journeys", "list").stdout.splitlines() == ["cart\tversion 1\tenabled"]
    sent = cli("channels", "test", "email", "--to", "ada@example.com", "--template", "reminder")
    assert last_line(sent).startswith("sent\ttest.email.")
    [email] = smtp.mailbox.emails()
    assert (email["To"], email["Subject"]) == ("ada@example.com", "Your cart")
    # A fault names the node; a secret is never printed.
    file.write_text(file.read_text().replace("timeout: PT1H", "timeout: soon"))
    failed = cli("journeys", "apply", str(file), ok=False)
    assert failed.exit_code == 1
    assert "journeys[0].steps[0].wait.timeout" in failed.stderr
    assert "s3cret" not in failed.stdout + failed.stderr
