"""How an export writes values: CSV cells, and the type of a Parquet trait column."""

from __future__ import annotations

import pytest

from ariane.services.segment_exports import cell_text, parquet_kind


@pytest.mark.parametrize(
    ("kinds", "kind"),
    [
        (set(), "string"),
        ({"string"}, "string"),
        ({"boolean"}, "bool"),
        ({"whole"}, "int64"),
        ({"real"}, "double"),
        ({"whole", "real"}, "double"),
        ({"nested"}, "text"),
        ({"string", "whole"}, "text"),
        ({"boolean", "whole"}, "text"),
        ({"real", "nested"}, "text"),
    ],
)
def test_a_trait_column_is_typed_natively_only_when_its_values_are_of_one_kind(
    kinds: set[str], kind: str
) -> None:
    assert parquet_kind(kinds) == kind


def test_a_cell_is_text_as_it_is_and_anything_else_as_json_with_sorted_keys() -> None:
    assert cell_text(None) == ""
    assert cell_text("") == ""
    assert cell_text('say "hi", then, go') == 'say "hi", then, go'
    assert cell_text(42) == "42"
    assert cell_text(2.5) == "2.5"
    assert cell_text(False) == "false"
    assert cell_text({"zip": "75001", "city": "Paris"}) == '{"city":"Paris","zip":"75001"}'
    assert cell_text(["b", 1, None]) == '["b",1,null]'
