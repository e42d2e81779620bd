"""Importing events from files (JSON Lines, CSV, Parquet) through the ingestion pipeline.

Each row goes through the same validation, quarantine, messageId dedupe and identity
resolution as an event sent to the tracking API, in transactions of `batch_size` rows.

Flat formats name nested fields with dots: a CSV column `properties.revenue` becomes
`{"properties": {"revenue": ...}}`. A row without a messageId gets one derived from its
content and its position in the file, so running the same import twice stores nothing
twice.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from ariane.domain.clock import iso
from ariane.domain.errors import DomainError
from ariane.services.access import AccessService
from ariane.services.ingest import Envelope, IngestService
from ariane.storage import events as event_store
from ariane.storage.database import Database

FORMATS = ("jsonl", "csv", "parquet")


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a file: an event to ingest, or why the row could not be read."""

    number: int
    event: Any = None
    unreadable: str | None = None


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise DomainError(
        f"cannot tell the format of {path.name}; name it .jsonl, .csv or .parquet,"
        " or pass --format",
        field="file",
    )


def _checked_format(path: Path, file_format: str | None) -> str:
    if file_format is None:
        return detect_format(path)
    if file_format not in FORMATS:
        raise DomainError(f"format must be one of {', '.join(FORMATS)}", field="format")
    return file_format


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or value == "":
            continue
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise DomainError(
                    f"column {key!r} nests under {part!r}, which is also a plain column",
                    field="file",
                )
            target = child
        target[leaf] = value
    return nested


def _csv_value(column: str, text: str) -> Any:
    # CSV has no types. Top-level Segment fields are strings or objects; nested columns
    # (properties.revenue) also read numbers and booleans back as such. A number with
    # a leading zero or a plus sign (a postcode, a phone number) stays text.
    if not text:
        return None
    structured = text[0] in "[{"
    if "." in column and not structured:
        structured = text in ("true", "false") or text.lstrip("-").replace(".", "", 1).isdigit()
    if structured:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


def _plain(value: Any) -> Any:
    """Parquet values as JSON values: timestamps as ISO-8601, decimals as numbers."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


@contextmanager
def _unreadable_as_error(path: Path, file_format: str) -> Iterator[None]:
    import pyarrow as pa

    try:
        yield
    except (OSError, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        raise DomainError(
            f"cannot read {path.name} as {file_format}: {exc}; check the file or --format",
            field="file",
        ) from None


def read_rows(path: Path, file_format: str | None = None) -> Iterator[Row]:
    file_format = _checked_format(path, file_format)
    with _unreadable_as_error(path, file_format):
        yield from _read_rows(path, file_format)


def _read_rows(path: Path, file_format: str) -> Iterator[Row]:
    if file_format == "jsonl":
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield Row(number, orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    yield Row(number, line.decode("utf-8", errors="replace"), f"not JSON: {exc}")
    elif file_format == "csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield Row(number, _nest({k: _csv_value(k, v or "") for k, v in row.items() if k}))
    else:
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
            for record in batch.to_pylist():
                number += 1
                yield Row(number, _nest(_plain(record)))


def count_rows(path: Path, file_format: str | None = None) -> int:
    file_format = _checked_format(path, file_format)
    with _unreadable_as_error(path, file_format):
        return _count_rows(path, file_format)


def _count_rows(path: Path, file_format: str) -> int:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if file_format == "csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return sum(1 for _ in csv.DictReader(handle))
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _with_message_id(row: Row) -> Any:
    event = row.event
    if isinstance(event, dict) and event.get("messageId") in (None, ""):
        try:
            digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS))
        except TypeError:
            # Nested too deep or not valid Unicode: ingestion quarantines it, saying why.
            return event
        digest.update(f"#{row.number}".encode())
        event = {**event, "messageId": f"import-{digest.hexdigest()[:32]}"}
    return event


class EventImporter:
    def __init__(
        self,
        db: Database,
        access: AccessService,
        ingest: IngestService,
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.access = access
        self.ingest = ingest
        self.clock = clock

    def source_id(self, name: str) -> str:
        for source in self.access.list_sources():
            if source.name == name:
                return source.id
        raise DomainError(
            f"no source named {name!r}; create it with `ariane sources create {name}`",
            field="source",
        )

    def run(
        self,
        path: Path,
        source_id: str,
        *,
        file_format: str | None = None,
        batch_size: int = 500,
        progress: Callable[[int], None] = lambda done: None,
    ) -> ImportReport:
        """Import every row of `path`; `progress` is told how many rows each batch held."""
        if batch_size < 1:
            raise DomainError("batch size must be at least 1", field="batch_size")
        report = ImportReport()
        batch: list[Row] = []
        for row in read_rows(path, file_format):
            batch.append(row)
            if len(batch) >= batch_size:
                self._import_batch(source_id, batch, report)
                progress(len(batch))
                batch = []
        if batch:
            self._import_batch(source_id, batch, report)
            progress(len(batch))
        return report

    def _import_batch(self, source_id: str, batch: list[Row], report: ImportReport) -> None:
        received_at = self.clock()
        readable = [_with_message_id(row) for row in batch if row.unreadable is None]
        result = self.ingest.ingest(source_id, readable, Envelope(received_at=received_at))
        unreadable = [
            event_store.quarantine_row(
                source_id, row.event, f"row {row.number} is {row.unreadable}", "(row)", received_at
            )
            for row in batch
            if row.unreadable is not None
        ]
        if unreadable:
            # Rows that are not JSON name no one Ariane can read: no identifiers to keep.
            nobody: list[list[tuple[str, str]]] = [[] for _ in unreadable]
            self.db.write(lambda conn: event_store.insert_quarantine(conn, unreadable, nobody))
        report.rows += len(batch)
        report.accepted += result.accepted
        report.duplicates += result.duplicates
        report.quarantined += result.quarantined + len(unreadable)
