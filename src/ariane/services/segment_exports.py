"""A segment's members as a file, for the tools that take a list of people: CSV or
Parquet, with the identifiers and traits chosen as columns.

The file is read a page at a time, in profile id order, in one snapshot of the database:
it is the segment as it was at one moment however long the download takes, and memory
holds one page (one Parquet row group) whatever the size of the segment.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ariane.domain.clock import iso
from ariane.domain.errors import DomainError, NotFound
from ariane.domain.identity import normalise_type
from ariane.domain.predicates import MISSING, InvalidDefinition, lookup, parse_path
from ariane.services.profiles import ProfileService
from ariane.services.segments import SegmentService
from ariane.storage import profiles as profile_store
from ariane.storage import segment_exports as store
from ariane.storage import segments as segment_store
from ariane.storage.database import Connection, Database

FORMATS = ("csv", "parquet")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
# Members read at once, and the rows of a Parquet row group.
PAGE_SIZE = 10_000
MAX_IDENTIFIERS = 20
MAX_TRAITS = 100
_NAME_LIMIT = 200
_FIRST_COLUMNS = ("profile_id", "entered_at")


@dataclass(frozen=True, slots=True)
class Columns:
    """What a row holds after the profile id and the time of entry: the first value of
    each identifier type, then the value of each trait."""

    identifiers: tuple[str, ...] = ()
    traits: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [*_FIRST_COLUMNS, *self.identifiers, *self.traits]

    @property
    def paths(self) -> list[tuple[str, ...]]:
        return [tuple(name.split(".")) for name in self.traits]

    @property
    def keys(self) -> list[str]:
        """The top-level traits the rows read."""
        return list(dict.fromkeys(path[0] for path in self.paths))


@dataclass(frozen=True, slots=True)
class Member:
    profile_id: str
    entered_at: datetime
    identifiers: list[str | None]
    traits: list[Any]


def check_format(file_format: str) -> str:
    if file_format not in FORMATS:
        raise DomainError(
            f"format {file_format!r} is not one Ariane writes: csv or parquet", field="format"
        )
    return file_format


def choose_columns(
    identifiers: Sequence[str],
    traits: Sequence[str],
    known_types: Sequence[str],
    in_use: Callable[[str], bool],
) -> Columns:
    """The columns asked for, checked: known identifier types (named in any form that
    normalises to one, `userId`), usable trait names, each once."""
    if len(identifiers) > MAX_IDENTIFIERS:
        raise DomainError(f"at most {MAX_IDENTIFIERS} identifier columns", field="identifier")
    if len(traits) > MAX_TRAITS:
        raise DomainError(f"at most {MAX_TRAITS} trait columns", field="trait")
    types: list[str] = []
    for raw in identifiers:
        id_type = normalise_type(raw)
        if not id_type:
            raise DomainError(
                f"{raw!r} is no identifier type; name one, such as email", field="identifier"
            )
        if id_type in types:
            raise DomainError(f"identifier {id_type} is given twice", field="identifier")
        if id_type not in known_types and not in_use(id_type):
            raise DomainError(
                f"no identifier type {id_type!r}; the types are {', '.join(known_types)}, and"
                " those sent in context.externalIds",
                field="identifier",
            )
        types.append(id_type)
    taken = {*_FIRST_COLUMNS, *types}
    for name in traits:
        try:
            parse_path(name, "trait")
        except InvalidDefinition as error:
            raise DomainError(error.message, field="trait") from None
        if len(name) > _NAME_LIMIT:
            raise DomainError(f"trait names take at most {_NAME_LIMIT} characters", field="trait")
        if name in taken:
            raise DomainError(
                f"trait {name} would be a second column {name}: export it once", field="trait"
            )
        taken.add(name)
    return Columns(tuple(types), tuple(traits))


def cell_text(value: Any) -> str:
    """A value as CSV writes it: text as it is, nothing as an empty cell, anything else
    as JSON, its keys sorted (PostgreSQL keeps objects in an order of its own)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def parquet_kind(kinds: set[str]) -> str:
    """How a Parquet trait column holds values of these kinds (`storage.segment_exports`):
    natively when they are of one kind, otherwise as the text CSV writes."""
    if kinds <= {"string"}:
        return "string"
    if kinds == {"boolean"}:
        return "bool"
    if kinds == {"whole"}:
        return "int64"
    if kinds <= {"whole", "real"}:
        return "double"
    return "text"


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "string": lambda value: value,
    "bool": lambda value: value,
    "int64": lambda value: None if value is None else int(value),
    "double": lambda value: None if value is None else float(value),
    "text": lambda value: None if value is None else cell_text(value),
}


class SegmentExportService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        segments: SegmentService,
        profiles: ProfileService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.segments = segments
        self.profiles = profiles

    def export(
        self, segment: str, *, identifiers: Sequence[str] = (), traits: Sequence[str] = ()
    ) -> SegmentExport:
        """The members of a segment, with the identifiers and traits chosen as columns:
        checked now, so that a fault is answered before any of the file is sent."""
        known = self.profiles.known_types()
        with self.db.read() as conn:
            row = segment_store.segment_row(conn, segment)
            if row is None:
                raise NotFound(f"no segment {segment!r}", field="segment")
            columns = choose_columns(
                identifiers,
                traits,
                known,
                lambda id_type: profile_store.type_in_use(conn, id_type),
            )
        return SegmentExport(self.db, self.segments, row, columns, self.clock())


class SegmentExport:
    """One export, its columns checked; `chunks` reads and writes it as it is sent."""

    def __init__(
        self,
        db: Database,
        segments: SegmentService,
        segment: Mapping[str, Any],
        columns: Columns,
        now: datetime,
    ) -> None:
        self.db = db
        self.segments = segments
        self.segment_id: str = segment["id"]
        self.segment_name: str = segment["name"]
        self.columns = columns
        self.now = now

    def filename(self, file_format: str) -> str:
        return f"{self.segment_name}-{self.now:%Y-%m-%d}.{file_format}"

    def chunks(self, file_format: str) -> Iterator[bytes]:
        """The file, a page of members at a time."""
        if check_format(file_format) == "parquet":
            return self._parquet()
        return self._csv()

    def _csv(self) -> Iterator[bytes]:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(self.columns.names)
        with self._snapshot() as conn:
            for page in self._pages(conn):
                for member in page:
                    writer.writerow(
                        [
                            member.profile_id,
                            iso(member.entered_at),
                            *(value or "" for value in member.identifiers),
                            *map(cell_text, member.traits),
                        ]
                    )
                yield _take(text)
        # The header alone, when the segment is empty.
        if text.tell():
            yield _take(text)

    def _parquet(self) -> Iterator[bytes]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = {
            "string": pa.string(),
            "bool": pa.bool_(),
            "int64": pa.int64(),
            "double": pa.float64(),
            "text": pa.string(),
        }
        with self._snapshot() as conn:
            kinds = [
                parquet_kind(found)
                for found in store.trait_kinds(conn, self.segment_id, self.columns.paths)
            ]
            schema = pa.schema(
                [
                    ("profile_id", pa.string()),
                    ("entered_at", pa.timestamp("us", tz="UTC")),
                    *((id_type, pa.string()) for id_type in self.columns.identifiers),
                    *(
                        (name, arrow[kind])
                        for name, kind in zip(self.columns.traits, kinds, strict=True)
                    ),
                ]
            )
            sink = _Spout()
            writer = pq.ParquetWriter(sink, schema)
            for page in self._pages(conn):
                identifiers = list(zip(*(m.identifiers for m in page), strict=True))
                traits = list(zip(*(m.traits for m in page), strict=True))
                columns = [
                    [m.profile_id for m in page],
                    [m.entered_at for m in page],
                    *identifiers,
                    *(
                        [_CONVERT[kind](value) for value in column]
                        for kind, column in zip(kinds, traits, strict=True)
                    ),
                ]
                arrays = [
                    pa.array(column, type=field.type)
                    for column, field in zip(columns, schema, strict=True)
                ]
                table = pa.Table.from_arrays(arrays, schema=schema)
                writer.write_table(table, row_group_size=len(page))
                yield sink.take()
            writer.close()
        yield sink.take()

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        # Pending entries and exits are applied first, as for every read of members.
        self.segments.catch_up()
        with self.db.read() as conn:
            if segment_store.segment_row(conn, self.segment_id) is None:
                raise NotFound(f"segment {self.segment_name!r} was deleted", field="segment")
            yield conn

    def _pages(self, conn: Connection) -> Iterator[list[Member]]:
        keys, paths = self.columns.keys, self.columns.paths
        after: str | None = None
        while True:
            rows = store.members_page(conn, self.segment_id, keys, limit=PAGE_SIZE, after=after)
            if not rows:
                return
            held: dict[str, dict[str, list[str]]] = {}
            if self.columns.identifiers:
                held = profile_store.identifiers_of(
                    conn,
                    [profile_id for profile_id, _, _ in rows],
                    per_type=1,
                    types=self.columns.identifiers,
                )
            page = []
            for profile_id, entered_at, cells in rows:
                values = {
                    key: cell["value"]
                    for key, cell in zip(keys, cells, strict=True)
                    if isinstance(cell, Mapping) and "value" in cell
                }
                ids = held.get(profile_id, {})
                page.append(
                    Member(
                        profile_id,
                        entered_at,
                        [next(iter(ids.get(t, [])), None) for t in self.columns.identifiers],
                        [_present(lookup(values, path)) for path in paths],
                    )
                )
            yield page
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1][0]


def _present(value: Any) -> Any:
    return None if value is MISSING else value


def _take(text: io.StringIO) -> bytes:
    data = text.getvalue().encode()
    text.seek(0)
    text.truncate()
    return data


class _Spout(io.RawIOBase):
    """Where the Parquet writer writes: what it wrote since the last `take`. It counts
    every byte, as the writer places the row groups by the position it reports."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
