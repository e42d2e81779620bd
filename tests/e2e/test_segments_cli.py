"""`ariane segments` on both databases: definitions as code, listing, and export as
CSV or Parquet."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import sqlalchemy as sa
import yaml

from ariane.bootstrap import Container
from ariane.storage.tables import metadata
from tests.e2e import test_cli
from tests.e2e.test_cli import last_line, show, write_jsonl

# The `cli` fixture of test_cli: `ariane` run in-process on this test's database.
cli = test_cli.cli

DEFINITIONS = """\
# Segments of the trial funnel.
computed_traits:
  - name: features_7d
    description: Features used in the last week
    kind: count
    event: Feature Used
    within: P7D
  - name: spring_orders
    kind: count
    event: Order Completed
    between: [2024-03-01, 2024-06-01T00:00:00Z]

segments:
  # Declared before the segments it refers to: apply sorts them out.
  - name: trial_explorers
    description: On trial, and exploring
    condition:
      all:
        - segment: trial
        - segment: explorers
  - name: explorers
    description: |
      Used three features or more
      in the last week
    condition: {computed: features_7d, op: gte, value: 3}
  - name: trial
    condition:
      trait: plan
      op: eq
      value: trial
"""


def populate(cli: Any, tmp_path: Path) -> dict[str, str]:
    cli("sources", "create", "app")
    rows = [
        {"type": "identify", "userId": "ada", "traits": {"plan": "trial"}},
        {"type": "identify", "userId": "bob", "traits": {"plan": "trial"}},
        {"type": "identify", "userId": "cy", "traits": {"plan": "paid"}},
        *[{"type": "track", "userId": "ada", "event": "Feature Used"} for _ in range(3)],
        *[{"type": "track", "userId": "cy", "event": "Feature Used"} for _ in range(4)],
        {"type": "track", "userId": "bob", "event": "Feature Used"},
    ]
    cli("import", "events", str(write_jsonl(tmp_path / "events.jsonl", rows)), "--source", "app")
    return {
        user: show(cli, "--type", "user_id", "--value", user)["id"] for user in ("ada", "bob", "cy")
    }


def snapshot(container: Container) -> dict[str, list[Any]]:
    """Every row of every table, to tell that nothing changed."""
    with container.db.read() as conn:
        return {
            table.name: sorted(
                orjson.dumps(list(row), default=str) for row in conn.execute(sa.select(table))
            )
            for table in metadata.sorted_tables
        }


def test_apply_twice_changes_nothing_the_second_time(
    cli: Any, tmp_path: Path, container: Container
) -> None:
    people = populate(cli, tmp_path)
    path = tmp_path / "segments.yaml"
    path.write_text(DEFINITIONS)

    first = cli("segments", "apply", str(path)).stdout.splitlines()
    assert first == [
        "created\tfeatures_7d",
        "created\tspring_orders",
        "created\texplorers",
        "created\ttrial",
        "created\ttrial_explorers",
        "5 created, 0 updated, 0 unchanged",
    ]
    members = {
        name: {p for p, _ in container.segments.all_members(name)}
        for name in ("explorers", "trial", "trial_explorers")
    }
    assert members == {
        "explorers": {people["ada"], people["cy"]},
        "trial": {people["ada"], people["bob"]},
        "trial_explorers": {people["ada"]},
    }
    before = snapshot(container)

    second = cli("segments", "apply", str(path)).stdout.splitlines()
    assert second[-1] == "0 created, 0 updated, 5 unchanged"
    assert sorted(second[:-1]) == [
        "unchanged\texplorers",
        "unchanged\tfeatures_7d",
        "unchanged\tspring_orders",
        "unchanged\ttrial",
        "unchanged\ttrial_explorers",
    ]
    assert snapshot(container) == before

    # The same definitions as JSON are the same definitions.
    as_json = tmp_path / "segments.json"
    as_json.write_bytes(orjson.dumps(yaml.safe_load(DEFINITIONS)))
    assert last_line(cli("segments", "apply", str(as_json))) == "0 created, 0 updated, 5 unchanged"
    assert snapshot(container) == before

    edited = DEFINITIONS.replace("value: 3}", "value: 4}")
    path.write_text(edited)
    third = cli("segments", "apply", str(path)).stdout.splitlines()
    assert "updated\texplorers" in third
    assert third[-1] == "0 created, 1 updated, 4 unchanged"
    assert {p for p, _ in container.segments.all_members("explorers")} == {people["cy"]}
    assert {p for p, _ in container.segments.all_members("trial_explorers")} == set()


def test_apply_refuses_a_file_it_cannot_use(cli: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("segments: [unclosed\n")
    result = cli("segments", "apply", str(broken), ok=False)
    assert result.exit_code == 1
    assert "error (file): cannot read broken.yaml" in result.stderr

    wrong_shape = tmp_path / "wrong.yaml"
    wrong_shape.write_text("audiences: []\n")
    result = cli("segments", "apply", str(wrong_shape), ok=False)
    assert result.exit_code == 1
    assert "holds computed_traits and segments lists" in result.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "segments:\n  - name: dormant\n    condition: {event: App Opened, within: 3 days}\n"
    )
    result = cli("segments", "apply", str(bad), ok=False)
    assert result.exit_code == 1
    assert "error (segments[0].condition.within): '3 days' is not an ISO-8601 duration" in (
        result.stderr
    )
    assert cli("segments", "list").stdout == ""


def test_list_and_export(cli: Any, tmp_path: Path, container: Container) -> None:
    people = populate(cli, tmp_path)
    path = tmp_path / "segments.yaml"
    path.write_text(DEFINITIONS)
    cli("segments", "apply", str(path))

    listed = [line.split("\t") for line in cli("segments", "list").stdout.splitlines()]
    assert listed == [
        ["explorers", "2", "Used three features or more in the last week"],
        ["trial", "2", ""],
        ["trial_explorers", "1", "On trial, and exploring"],
    ]

    exported = cli("segments", "export", "explorers").stdout
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == ["profile_id", "entered_at"]
    assert sorted(r[0] for r in rows[1:]) == sorted([people["ada"], people["cy"]])
    entered = dict(container.segments.all_members("explorers"))
    for profile_id, at in rows[1:]:
        assert datetime.fromisoformat(at) == entered[profile_id]

    output = tmp_path / "out" / "trial.csv"
    output.parent.mkdir()
    by_id = container.segments.get_segment("trial")["id"]
    assert cli("segments", "export", by_id, "--output", str(output)).stdout == ""
    with output.open(newline="") as handle:
        saved = list(csv.reader(handle))
    assert saved[0] == ["profile_id", "entered_at"]
    assert sorted(r[0] for r in saved[1:]) == sorted([people["ada"], people["bob"]])

    missing = cli("segments", "export", "nope", ok=False)
    assert missing.exit_code == 1
    assert "error (segment): no segment 'nope'" in missing.stderr
    assert missing.stdout == ""
    nowhere = cli(
        "segments", "export", "trial", "--output", str(tmp_path / "no" / "dir.csv"), ok=False
    )
    assert nowhere.exit_code == 1
    assert "error (output): cannot write" in nowhere.stderr


def test_export_chosen_identifiers_and_traits_as_csv_or_parquet(
    cli: Any, tmp_path: Path, container: Container
) -> None:
    people = populate(cli, tmp_path)
    path = tmp_path / "segments.yaml"
    path.write_text(DEFINITIONS)
    cli("segments", "apply", str(path))
    columns = ("--identifier", "userId", "--trait", "plan")
    entered = dict(container.segments.all_members("trial"))

    exported = cli("segments", "export", "trial", *columns).stdout
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == ["profile_id", "entered_at", "user_id", "plan"]
    assert [(r[0], *r[2:]) for r in rows[1:]] == sorted(
        [(people["ada"], "ada", "trial"), (people["bob"], "bob", "trial")]
    )

    # Parquet by the file's suffix, or by --format whatever the suffix.
    for name, chosen in [("trial.parquet", ()), ("trial.data", ("--format", "parquet"))]:
        output = tmp_path / name
        done = cli("segments", "export", "trial", *columns, *chosen, "--output", str(output))
        assert done.stdout == ""
        table = pq.read_table(output)
        assert table.column_names == ["profile_id", "entered_at", "user_id", "plan"]
        assert table.to_pylist() == [
            {"profile_id": p, "entered_at": entered[p], "user_id": user, "plan": plan}
            for p, _, user, plan in rows[1:]
        ]

    to_stdout = cli("segments", "export", "trial", "--format", "parquet", ok=False)
    assert to_stdout.exit_code == 1
    assert "error (output): Parquet is binary and is written to a file" in to_stdout.stderr
    assert to_stdout.stdout == ""
    for args, error in [
        (("--identifier", "fax"), "error (identifier): no identifier type 'fax'"),
        (("--trait", "a..b"), "error (trait): 'a..b' is not a usable name"),
        (("--format", "xlsx"), "error (format): format 'xlsx' is not one Ariane writes"),
    ]:
        refused = cli("segments", "export", "trial", *args, ok=False)
        assert refused.exit_code == 1
        assert error in refused.stderr
        assert refused.stdout == ""


def test_discover_describes_groups_and_saves_them_as_segments(
    cli: Any, container: Container
) -> None:
    from tests.integration.test_discovery import population, send

    send(container, population(container.clock()))
    found = cli("segments", "discover", "--save", "trial-").stdout.splitlines()
    assert found[0].startswith("3 groups (silhouette by number of groups: 2: ")
    groups = [line.split("\t") for line in found[1:4]]
    assert all(int(size) == 60 and "first" in words for _, size, words in groups)
    assert sorted(found[4:]) == sorted(f"created\ttrial-{name}" for name, _, _ in groups)
    listed = cli("segments", "list").stdout.splitlines()
    assert sorted(line.split("\t")[:2] for line in listed) == sorted(
        [f"trial-{name}", "60"] for name, _, _ in groups
    )
    # Again, with nothing new: the same groups, saved as they are.
    again = cli("segments", "discover", "--save", "trial-").stdout.splitlines()
    assert sorted(again[4:]) == sorted(f"unchanged\ttrial-{name}" for name, _, _ in groups)


def test_discover_needs_people(cli: Any) -> None:
    result = cli("segments", "discover", ok=False)
    assert result.exit_code == 1
    assert "no track events yet" in result.stderr
