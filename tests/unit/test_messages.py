"""Segment-spec messages: timestamps of any precision, clock-skew correction, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.errors import InvalidEvent
from ariane.domain.messages import (
    EARLIEST,
    MAX_DEPTH,
    MAX_ID_LENGTH,
    check_batch,
    check_storable,
    parse_message,
)

RECEIVED = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00.1Z", datetime(2024, 5, 1, 10, 0, 0, 100_000, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123Z", datetime(2024, 5, 1, 10, 0, 0, 123_000, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123456Z", datetime(2024, 5, 1, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123456789Z", datetime(2024, 5, 1, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-05-01T12:00:00+0200", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T04:30:00.5-05:30", datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01 10:00:00,25z", datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2024-05-01T10:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_iso_8601_of_any_precision_and_offset(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "text", ["yesterday", "", "2024-13-01T00:00:00Z", "2024-05-01T25:00:00Z", "1714557600"]
)
def test_what_is_not_iso_8601_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_iso_text_is_fixed_width_utc_so_text_order_is_time_order() -> None:
    assert iso(parse_timestamp("2024-05-01T12:00:00+0200")) == "2024-05-01T10:00:00.000000Z"
    moments = [parse_timestamp(f"2024-05-01T10:00:0{s}.{s}Z") for s in range(1, 9)]
    assert sorted(iso(m) for m in reversed(moments)) == [iso(m) for m in moments]


def parse(**raw: Any) -> Any:
    raw.setdefault("type", "track")
    raw.setdefault("userId", "u")
    raw.setdefault("event", "E")
    return parse_message(raw, received_at=RECEIVED)


def test_a_timestamp_without_sent_at_is_taken_as_is() -> None:
    message = parse(timestamp="2024-05-01T12:00:00.123456789+0200")
    assert message.timestamp == datetime(2024, 5, 1, 10, 0, 0, 123_456, tzinfo=UTC)
    assert message.payload["timestamp"] == "2024-05-01T10:00:00.123456Z"
    assert message.payload["receivedAt"] == iso(RECEIVED)


def test_no_timestamp_at_all_means_received_at() -> None:
    assert parse().timestamp == RECEIVED


def test_sent_at_corrects_the_device_clock() -> None:
    # The device clock is two hours behind: the event happened 10 s before it was sent.
    message = parse(originalTimestamp="2024-05-01T10:00:05.250Z", sentAt="2024-05-01T10:00:15.250Z")
    assert message.timestamp == RECEIVED - timedelta(seconds=10)
    assert message.payload["originalTimestamp"] == "2024-05-01T10:00:05.250000Z"
    assert message.payload["sentAt"] == "2024-05-01T10:00:15.250000Z"


def test_original_timestamp_wins_over_timestamp_and_batch_sent_at_applies() -> None:
    message = parse_message(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "2020-01-01T00:00:00Z",
            "originalTimestamp": "2024-05-01T09:59:00+0000",
        },
        received_at=RECEIVED,
        batch_sent_at=parse_timestamp("2024-05-01T10:00:00Z"),
    )
    assert message.timestamp == RECEIVED - timedelta(minutes=1)


def test_an_events_own_sent_at_wins_over_the_batch_one() -> None:
    message = parse_message(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "2024-05-01T10:00:00Z",
            "sentAt": "2024-05-01T10:00:02Z",
        },
        received_at=RECEIVED,
        batch_sent_at=parse_timestamp("2024-05-01T11:00:00Z"),
    )
    assert message.timestamp == RECEIVED - timedelta(seconds=2)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("not an object", "(event)"),
        (
            {"type": "track", "userId": "u", "event": "E", "properties": {"x": "a" * 40_000}},
            "(event)",
        ),
        ({"type": "launch", "userId": "u"}, "type"),
        ({"userId": "u"}, "type"),
        ({"type": "track", "userId": "u", "event": "E", "context": "web"}, "context"),
        ({"type": "identify", "userId": "u", "traits": ["a"]}, "traits"),
        ({"type": "track", "userId": "u", "event": "E", "properties": 1}, "properties"),
        ({"type": "track", "userId": {"id": 1}, "event": "E"}, "userId"),
        ({"type": "track", "userId": True, "event": "E"}, "userId"),
        ({"type": "track", "anonymousId": ["a"], "event": "E"}, "anonymousId"),
        ({"type": "track", "event": "E"}, "userId/anonymousId"),
        ({"type": "track", "userId": "  ", "event": "E"}, "userId/anonymousId"),
        ({"type": "track", "userId": "u"}, "event"),
        ({"type": "track", "userId": "u", "event": "  "}, "event"),
        ({"type": "track", "userId": "u", "event": "E" * 201}, "event"),
        ({"type": "track", "userId": "u", "event": "E", "messageId": "m" * 201}, "messageId"),
        ({"type": "page", "userId": "u", "name": 3}, "name"),
        ({"type": "group", "userId": "u"}, "groupId"),
        ({"type": "alias", "previousId": "a"}, "userId"),
        ({"type": "alias", "userId": "u"}, "previousId"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": 1714557600}, "timestamp"),
        ({"type": "track", "userId": "u", "event": "E", "sentAt": "soon"}, "sentAt"),
        (
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "timestamp": "0001-01-01T00:00:00+01:00",
            },
            "timestamp",
        ),
        (
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "timestamp": "0001-01-01T00:00:00Z",
                "sentAt": "9999-12-31T00:00:00Z",
            },
            "timestamp",
        ),
        (
            {"type": "track", "userId": "u", "event": "E", "timestamp": "2100-01-01T00:00:00Z"},
            "timestamp",
        ),
        ({"type": "track", "userId": "u\x00", "event": "E"}, "userId"),
        (
            {"type": "track", "userId": "u", "event": "E", "properties": {"a": ["\x00"]}},
            "properties",
        ),
        ({"type": "track", "userId": "u", "event": "E", "properties": {"a\x00": 1}}, "properties"),
        (
            {"type": "track", "userId": "u", "event": "E", "originalTimestamp": "2024-99-01"},
            "originalTimestamp",
        ),
    ],
)
def test_errors_name_the_field_at_fault(raw: Any, field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_message(raw, received_at=RECEIVED)
    assert caught.value.field == field
    assert caught.value.message


@pytest.mark.parametrize("kind", [["track"], {"track": 1}])
def test_a_type_that_is_a_list_or_an_object_is_invalid_naming_type(kind: Any) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_message({"type": kind, "userId": "u", "event": "E"}, received_at=RECEIVED)
    assert caught.value.field == "type"


def test_a_bad_timestamp_says_what_to_send() -> None:
    with pytest.raises(InvalidEvent, match=r"2024-05-01T12:00:00\.000Z"):
        parse(timestamp="yesterday")


def test_the_endpoint_decides_the_type() -> None:
    message = parse_message(
        {"type": "page", "userId": "u", "event": "Clicked"}, received_at=RECEIVED, type_hint="track"
    )
    assert (message.type, message.event, message.payload["type"]) == ("track", "Clicked", "track")


def test_the_payload_is_normalised() -> None:
    message = parse_message(
        {
            "type": "track",
            "userId": 42,
            "anonymousId": " a-1 ",
            "event": " Viewed ",
            "writeKey": "secret",
            "context": {"page": {"path": "/x"}},
        },
        received_at=RECEIVED,
        batch_context={"library": {"name": "lib"}, "page": {"path": "/batch"}},
        batch_integrations={"All": False},
    )
    assert (message.user_id, message.anonymous_id, message.event) == ("42", "a-1", "Viewed")
    assert message.message_id.startswith("ariane-")
    payload = message.payload
    assert "writeKey" not in payload
    assert payload["userId"] == "42" and payload["messageId"] == message.message_id
    assert payload["context"] == {"library": {"name": "lib"}, "page": {"path": "/x"}}
    assert payload["integrations"] == {"All": False}


def test_a_given_message_id_is_kept() -> None:
    assert parse(messageId=" m-1 ").message_id == "m-1"
    assert parse(messageId=7).message_id == "7"


def test_a_clock_slightly_ahead_is_accepted_but_not_a_day_ahead() -> None:
    ahead = RECEIVED + timedelta(hours=23)
    message = parse_message(
        {"type": "track", "userId": "u", "event": "E", "timestamp": iso(ahead)},
        received_at=RECEIVED,
    )
    assert message.timestamp == ahead
    # With sentAt the skew is corrected, however wrong the device clock.
    corrected = parse_message(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "2100-01-01T00:00:00Z",
            "sentAt": "2100-01-01T00:00:05Z",
        },
        received_at=RECEIVED,
    )
    assert corrected.timestamp == RECEIVED - timedelta(seconds=5)


def test_a_literal_backslash_u0000_text_is_not_a_nul() -> None:
    message = parse_message(
        {"type": "track", "userId": "u", "event": "E", "properties": {"note": "\\u0000"}},
        received_at=RECEIVED,
    )
    assert message.properties["note"] == "\\u0000"


def test_a_nul_in_the_batch_context_or_integrations_is_refused() -> None:
    check_batch({"ip": "1.2.3.4"}, {"All": True})
    for context, integrations, field in [
        ({"ip": "1.2.3.4\x00"}, None, "context"),
        (None, {"Mixpanel\x00": True}, "integrations"),
    ]:
        with pytest.raises(InvalidEvent) as caught:
            check_batch(context, integrations)
        assert caught.value.field == field


def test_a_far_future_event_with_sent_at_is_told_to_check_both() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_message(
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "timestamp": "2024-05-01T12:00:00Z",
                "sentAt": "2024-04-01T12:00:00Z",
            },
            received_at=RECEIVED,
        )
    assert caught.value.field == "timestamp"
    assert "sentAt is earlier" in caught.value.message


def nested(levels: int, leaf: Any = 1) -> Any:
    """Objects `levels` deep: {"a": {"a": ... leaf}}."""
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


def refusal(**raw: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse(**raw)
    # Whatever was sent, the message and the field can be written back as JSON.
    orjson.dumps([caught.value.message, caught.value.field])
    return caught.value


def test_each_field_may_nest_objects_and_arrays_up_to_the_limit() -> None:
    parse(properties=nested(MAX_DEPTH))
    parse(properties={"list": [nested(MAX_DEPTH - 2)]})
    # Many objects side by side are not deep.
    parse(properties={"products": [{"sku": {"id": i}} for i in range(100)]})
    for properties in (nested(MAX_DEPTH + 1), {"list": [nested(MAX_DEPTH - 1)]}):
        problem = refusal(properties=properties)
        assert problem.field == "properties"
        assert problem.message == (
            f"properties nests objects and arrays more than {MAX_DEPTH} levels deep;"
            f" flatten it to {MAX_DEPTH} at most"
        )


def test_depth_is_told_whatever_brackets_and_quotes_the_strings_hold() -> None:
    # Keys and values that look like structure in the JSON text.
    for text in ("}", "{}", "][", '"', '\\"}'):
        problem = refusal(properties=nested(MAX_DEPTH + 1, leaf=text))
        assert problem.field == "properties"
        deep: dict[str, Any] = {"x": text}
        for _ in range(MAX_DEPTH + 1):
            deep = {text: deep, "y": text}
        assert refusal(properties=deep).field == "properties"
        wide = [{"name": text, "tags": [text]} for _ in range(100)]
        parse(properties={"products": wide})
        parse(properties=nested(MAX_DEPTH, leaf=text))


@pytest.mark.parametrize("levels", [254, 300, 1022])
def test_a_field_deeper_than_json_can_be_written_is_refused_naming_it(levels: int) -> None:
    assert refusal(context={"page": nested(levels)}).field == "context"
    assert refusal(traits=nested(levels), type="identify").field == "traits"


def test_a_nul_or_a_lone_surrogate_is_refused_with_where_it_is() -> None:
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        (
            {"properties": {"items": [{"name": "a\x00"}]}},
            "properties",
            "properties.items[0].name holds a NUL character (\\u0000), which cannot be"
            " stored; remove it",
        ),
        (
            {"properties": {"n\ud800": 1}},
            "properties",
            "properties.n\\ud800 holds a lone surrogate (\\ud800), which is not valid"
            " Unicode; send UTF-8 text",
        ),
        (
            {"userId": "\udfffu"},
            "userId",
            "userId holds a lone surrogate (\\udfff), which is not valid Unicode; send UTF-8 text",
        ),
        (
            {"properties": {"n": [2**64]}},
            "properties",
            "properties.n[0] holds a whole number beyond 64 bits, which JSON columns do not"
            " hold; send text",
        ),
        ({"event": "Bought\x00"}, "event", None),
        ({"context": {"ip": "\ud800"}}, "context", None),
    ]
    for raw, field, message in cases:
        problem = refusal(**raw)
        assert problem.field == field
        assert message is None or problem.message == message


def test_what_no_database_stores_is_refused_for_the_loyalty_api_too() -> None:
    check_storable({"event": "Order Completed", "properties": nested(MAX_DEPTH)})
    for properties in (nested(300), {"note": "\x00"}, {"note": "\ud800"}):
        with pytest.raises(InvalidEvent) as caught:
            check_storable({"event": "Order Completed", "properties": properties})
        assert caught.value.field == "properties"


def test_a_batch_context_nested_too_deep_is_refused() -> None:
    with pytest.raises(InvalidEvent) as caught:
        check_batch({"page": nested(300)}, None)
    assert caught.value.field == "context"


def test_an_alias_previous_id_over_512_characters_is_refused_as_too_long() -> None:
    parse(type="alias", previousId="p" * MAX_ID_LENGTH)
    problem = refusal(type="alias", previousId="p" * 10_000)
    assert problem.field == "previousId"
    assert problem.message == f"previousId is 10000 characters long; at most {MAX_ID_LENGTH}"


def test_an_alias_user_id_over_512_characters_is_refused_as_too_long() -> None:
    parse(type="alias", userId="u" * MAX_ID_LENGTH, previousId="p")
    problem = refusal(type="alias", userId="u" * 10_000, previousId="p")
    assert problem.field == "userId"
    assert problem.message == f"userId is 10000 characters long; at most {MAX_ID_LENGTH}"


def test_a_message_id_keeps_its_own_limit() -> None:
    assert refusal(messageId="m" * 300).message == "messageId is 300 characters long; at most 200"


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z", "1999-12-31T23:59:59Z"]
)
def test_a_time_before_2000_is_refused_naming_the_field_sent(value: str) -> None:
    for key in ("timestamp", "originalTimestamp"):
        problem = refusal(**{key: value})
        assert problem.field == key
        assert f"is before {EARLIEST.date()}" in problem.message
        assert "leave it out for the time of receipt" in problem.message
    assert parse(timestamp="2000-01-01T00:00:00Z").timestamp == EARLIEST


def test_a_device_clock_reset_to_1970_is_corrected_by_sent_at() -> None:
    message = parse(timestamp="1970-01-01T00:00:01Z", sentAt="1970-01-01T00:00:03Z")
    assert message.timestamp == RECEIVED - timedelta(seconds=2)
    # But sentAt cannot bring an event from before 2000 back into range by itself.
    problem = refusal(timestamp="1990-01-01T00:00:00Z", sentAt="2024-05-01T12:00:30Z")
    assert problem.field == "timestamp"
    assert "check both" in problem.message
