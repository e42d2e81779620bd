"""Reading events from files (JSON Lines, CSV, Parquet) into the ingestion pipeline.

Flat formats name nested fields with dots: a CSV column `properties.revenue` becomes
`{"properties": {"revenue": ...}}`. Each row goes through the same validation,
quarantine, dedupe and identity resolution as an event sent to the API.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ariane.domain.errors import DomainError

FORMATS = ("jsonl", "csv", "parquet")


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise DomainError(
        f"cannot tell the format of {path.name}; use .jsonl, .csv or .parquet, or --format",
        field="file",
    )


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or value == "":
            continue
        parts = key.split(".")
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return nested


def _csv_value(text: str) -> Any:
    # CSV has no types: numbers, booleans and JSON objects are read back as such.
    if text == "":
        return None
    if (
        text[0] in "[{"
        or text in ("true", "false")
        or text.lstrip("-").replace(".", "", 1).isdigit()
    ):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


def read_events(path: Path, file_format: str | None = None) -> Iterator[Any]:
    file_format = file_format or detect_format(path)
    if file_format == "jsonl":
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield {"_ariane_unreadable": f"line {number}: {exc}"}
    elif file_format == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                yield _nest({k: _csv_value(v) for k, v in row.items() if k})
    elif file_format == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=1000):
            for row in batch.to_pylist():
                yield _nest(row)
    else:
        raise DomainError(f"format must be one of {', '.join(FORMATS)}", field="format")


def count_rows(path: Path, file_format: str | None = None) -> int | None:
    file_format = file_format or detect_format(path)
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if file_format == "csv" else lines
