"""Definitions as code: the computed traits and segments a document (a YAML or JSON
file) declares, brought about by `apply` through the same saves as the API's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ariane.domain.computed import parse_feature
from ariane.domain.conditions import Names, check_size, evaluation_order, parse_condition, to_json
from ariane.domain.errors import DomainError
from ariane.services.segment_catalogue import Catalogues
from ariane.services.segment_definitions import SegmentDefinitions, check_name
from ariane.storage import segments as store
from ariane.storage.database import Database


class SegmentsAsCode:
    def __init__(
        self, db: Database, catalogues: Catalogues, definitions: SegmentDefinitions
    ) -> None:
        self.db = db
        self.catalogues = catalogues
        self.definitions = definitions

    def apply(self, document: Any) -> dict[str, list[str]]:
        """Bring segments and computed traits to what a document declares; what is already
        as declared is left alone, so applying a file twice changes nothing the second time.
        Definitions the document does not mention are kept."""
        if not isinstance(document, dict) or not set(document) <= {"computed_traits", "segments"}:
            raise DomainError(
                "a definitions file holds computed_traits and segments lists", field="document"
            )
        traits = _items(document, "computed_traits")
        segments = _items(document, "segments")
        outcome: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
        with self.db.read() as conn:
            known_traits = {r["name"]: r for r in store.computed_rows(conn)}
            known_segments = {r["name"]: r for r in store.segment_rows(conn)}
        for index, item in enumerate(traits):
            name = check_name(item.get("name"), f"computed_traits[{index}]")
            body = {k: v for k, v in item.items() if k not in ("name", "description")}
            feature = parse_feature(body, f"computed_traits[{index}]")
            row = known_traits.get(name)
            if (
                row is not None
                and row["definition"] == feature.to_json()
                and row["description"] == (item.get("description") or "")
            ):
                outcome["unchanged"].append(name)
                continue
            self.definitions.save_computed(name, item)
            outcome["updated" if row is not None else "created"].append(name)
        declared = {
            check_name(item.get("name"), f"segments[{i}]"): item for i, item in enumerate(segments)
        }
        # Checked before anything is saved, so that a fault names its place in the file.
        names = Names(
            set(known_segments) | set(declared),
            set(known_traits) | {str(t.get("name")).strip() for t in traits},
        )
        for index, item in enumerate(segments):
            path = f"segments[{index}].condition"
            check_size(parse_condition(item.get("condition"), names, path), path)
        for name in _declaration_order(declared):
            item = declared[name]
            row = known_segments.get(name)
            if row is not None and self._same_segment(row, item):
                outcome["unchanged"].append(name)
                continue
            self.definitions.save_segment(
                name,
                item.get("description"),
                item.get("condition"),
                key=None if row is None else row["id"],
            )
            outcome["updated" if row is not None else "created"].append(name)
        return outcome

    def _same_segment(self, row: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
        if row["description"] != (item.get("description") or ""):
            return False
        with self.db.read() as conn:
            catalogue = self.catalogues.current(conn)
        try:
            node = parse_condition(
                item.get("condition"), Names(set(catalogue.segments), set(catalogue.computed))
            )
        except DomainError:
            return False
        return bool(to_json(node) == row["condition"])


def _items(document: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = document.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DomainError(f"{key} is a list of definitions", field=key)
    return items


def _declaration_order(declared: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Segments of one file, each after those of the file it refers to."""
    graph: dict[str, set[str]] = {}
    for name, item in declared.items():
        graph[name] = {r for r in _mentions(item.get("condition")) if r in declared}
    return evaluation_order(graph)


def _mentions(node: Any) -> set[str]:
    """Segment names a raw (not yet checked) condition refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("segment"), str):
            found.add(node["segment"])
        for value in node.values():
            found |= _mentions(value)
    elif isinstance(node, list):
        for value in node:
            found |= _mentions(value)
    return found
