"""Property-based tracking payloads through /v1/batch, on both databases.

Events are generated with any field of any type, text holding NUL characters and lone
surrogates anywhere (keys and values, written as JSON escapes), objects and arrays nested
up to a thousand levels, whole numbers beyond 64 bits, and timestamps of every oddity.
Every request is answered 200 or a 4xx whose body says what is wrong, never a 5xx; no
event of a batch is lost, each is stored or quarantined; one bad event costs its batch
nothing; and a server fed the largest and worst bodies holds a bounded amount of memory.
"""

from __future__ import annotations

import base64
import gc
import gzip
import itertools
import json
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ariane.bootstrap import Container
from ariane.storage.tables import events, quarantine

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
TYPES = ("track", "identify", "page", "screen", "group", "alias")
KNOWN_FIELDS = (
    "type",
    "userId",
    "anonymousId",
    "event",
    "name",
    "groupId",
    "previousId",
    "properties",
    "traits",
    "context",
    "integrations",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "messageId",
    "writeKey",
)


# --- JSON text, nested deeper than the json module writes ------------------------------------


@dataclass(frozen=True)
class Nested:
    """`levels` objects and arrays, one in the other, around `leaf`."""

    levels: int
    leaf: Any


def encode(value: Any) -> str:
    """`value` as JSON text: NUL characters and lone surrogates as `\\u` escapes, whole
    numbers as all their digits, `Nested` as deep as it says."""
    if isinstance(value, Nested):
        opening = "".join('{"n": ' if level % 2 else "[" for level in range(value.levels))
        closing = "".join("}" if level % 2 else "]" for level in reversed(range(value.levels)))
        return opening + encode(value.leaf) + closing
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(item) for item in value) + "]"
    return json.dumps(value)


# --- values -------------------------------------------------------------------------------------

plain_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
# What no database stores, planted in text.
FLAWS = ("\x00", "\ud800", "\udbff", "\udc00", "\udfff")
flawed_text = st.builds(
    lambda before, flaw, after: before + flaw + after,
    plain_text,
    st.sampled_from(FLAWS) | st.characters(categories=["Cs"]),
    plain_text,
)
numbers = (
    st.integers(-(2**63), 2**64 - 1)
    # Beyond 64 bits: read as the nearest float, as orjson reads them.
    | st.integers(2**64, 10**300)
    | st.integers(-(10**300), -(2**63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)
scalars = st.none() | st.booleans() | numbers | plain_text
# As deep as any field may nest: 64 levels counting the field's own object.
MAX_DEPTH = 64
# Nested at most 8 levels by the recursion, and 40 more at a leaf.
storable = st.recursive(
    scalars | st.builds(Nested, st.integers(1, 40), scalars),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3),
    max_leaves=8,
)
objects = st.dictionaries(names, storable, max_size=4)
not_objects = scalars.filter(lambda v: v is not None) | st.lists(storable, max_size=2)


@st.composite
def unstorable_objects(draw: st.DrawFn) -> dict[str, Any]:
    """An object that holds, somewhere, what no database stores: a NUL or a lone
    surrogate in a key or a value, or more than `MAX_DEPTH` levels of nesting."""
    path = draw(st.lists(names, max_size=4))
    flaw = draw(st.sampled_from(["value", "key", "deep"]))
    inner: Any
    if flaw == "deep":
        # In all, counting the object itself and the steps of the path.
        levels = draw(st.integers(MAX_DEPTH + 1, 1000))
        inner = Nested(levels - 1 - len(path), 1)
    elif flaw == "key":
        inner = {draw(flawed_text): draw(storable)}
    else:
        inner = draw(flawed_text)
    for key in reversed(path):
        inner = {key: inner}
    return {**draw(objects), "x": inner}


# --- timestamps ---------------------------------------------------------------------------------

# Times Ariane takes: none before 2000 nor more than a day after the test's events are
# received, at the fake clock's start (2026-03-02T09:30:00Z, tests/conftest.py).
GOOD_TIMES = (
    "2026-03-02T09:00:00Z",
    "2026-03-02T09:00:00.123456789Z",
    "2026-03-02T09:00:00.1+14:00",
    "2026-03-01T09:00:00-12:00",
    "2026-03-02T09:00:00+0530",
    "2026-03-02T09:00:00+05",
    "2026-03-02T09:00:00,5z",
    "2026-03-02 09:00:00",
    "2026-03-02T09:00",
    "2026-03-02",
    "2000-01-01T00:00:00Z",
    "2026-03-03T09:30:00Z",
)
# Times of a clock never set, or wrong by more than a day.
CLOCKS_WRONG = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-01:00",
    "1970-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999999Z",
    "2026-03-03T09:30:00.000001Z",
)
# Text that is no time.
NOT_TIMES = (
    "2026-02-30T00:00:00Z",
    "2026-03-02T24:00:00Z",
    "2026-03-02T23:59:60Z",
    "2026-13-01",
    "2026-03-02T09:00:00+24:00",
    "2026-03-02T09:00:00+99:99",
    "+275760-09-13T00:00:00Z",
    "\u0662\u0660\u0662\u0666-\u0660\u0663-\u0660\u0662",
    "2026-03-02T09:00:00.Z",
    "2026-03-02T09:00:00 UTC",
    "now",
    "",
    " ",
)
not_text = not_objects.filter(lambda v: not isinstance(v, str))
bad_times = st.sampled_from(CLOCKS_WRONG + NOT_TIMES) | not_text


# --- events -------------------------------------------------------------------------------------

_numbering = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_numbering)}"


@st.composite
def good_events(draw: st.DrawFn, kinds: tuple[str, ...] = TYPES) -> dict[str, Any]:
    """An event Ariane stores, of one of `kinds`, with odd but valid parts."""
    kind = draw(st.sampled_from(kinds))
    event: dict[str, Any] = {"type": kind, "userId": unique("user"), "messageId": unique("m")}
    if draw(st.booleans()):
        event["anonymousId"] = unique("anon")
    if kind == "track":
        event["event"] = draw(plain_text.filter(str.strip)) or "Viewed"
    elif kind in ("page", "screen") and draw(st.booleans()):
        event["name"] = draw(plain_text | st.none())
    elif kind == "group":
        event["groupId"] = draw(plain_text.filter(str.strip) | st.integers(0, 2**63 - 1))
    elif kind == "alias":
        event["previousId"] = unique("previous")
    if draw(st.booleans()):
        event["timestamp"] = draw(st.sampled_from(GOOD_TIMES))
    for key in ("properties", "context", "integrations"):
        if draw(st.booleans()):
            event[key] = draw(objects | st.none())
    if draw(st.integers(0, 9)) == 0:
        # As deep as a field may nest, counting its own object.
        event["properties"] = {"deep": Nested(MAX_DEPTH - 1, 1)}
    if kind == "identify":
        event["traits"] = draw(objects)
    return event


@dataclass(frozen=True)
class Bad:
    """An event with one part wrong, and the field the answer must name."""

    event: Any
    field: str


def _wrong_types(*allowed: type) -> st.SearchStrategy[Any]:
    return (not_objects | objects).filter(
        lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, allowed))
    )


_ids = st.integers(513, 2000).map(lambda n: unique("id") + "x" * n)
# What each field may be made wrong with: of the wrong type, holding what no database
# stores, out of range, missing, or dated by a clock never set.
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "type": plain_text.filter(lambda t: t not in TYPES) | _wrong_types(str) | flawed_text,
    "userId": _wrong_types(str, int, float) | flawed_text | _ids,
    "anonymousId": _wrong_types(str, int, float) | flawed_text,
    "event": _wrong_types(str)
    | st.sampled_from(["", "   "])
    | flawed_text
    | st.integers(201, 500).map("E".__mul__),
    "name": _wrong_types(str) | flawed_text,
    "groupId": _wrong_types(str, int, float) | st.none() | flawed_text,
    "previousId": _wrong_types(str, int, float) | st.none() | _ids,
    "timestamp": bad_times,
    "originalTimestamp": bad_times,
    # A sentAt that is a time only moves the event's: Segment's clock-skew correction.
    "sentAt": st.sampled_from(NOT_TIMES) | not_text,
    "messageId": _wrong_types(str, int, float)
    | flawed_text
    | st.integers(201, 1000).map(lambda n: unique("m") + "m" * n),
    "properties": not_objects | unstorable_objects(),
    "traits": not_objects | unstorable_objects(),
    "context": not_objects | unstorable_objects(),
    "integrations": not_objects | unstorable_objects(),
}
# The type of event that reads each field, where not every type does.
READ_BY = {"event": "track", "name": "page", "groupId": "group", "previousId": "alias"}
# A field Ariane does not read holding what no database stores, and a whole event wrong.
FIELDS = [*WRONG, "other", "(event)"]


@st.composite
def bad_events(draw: st.DrawFn, field: str) -> Bad:
    """A good event with `field` made wrong."""
    kinds = (READ_BY[field],) if field in READ_BY else TYPES
    event = draw(good_events(kinds))
    if field == "userId":
        # Else the anonymousId would do.
        event.pop("anonymousId", None)
    if field in WRONG:
        event[field] = draw(WRONG[field])
    elif field == "other":
        field = draw(names.filter(lambda name: name not in KNOWN_FIELDS))
        event[field] = draw(flawed_text | unstorable_objects())
    else:
        big = {**event, "properties": {"big": "x" * 40_000}}
        return Bad(draw(not_objects | st.just(big)), field)
    return Bad(event, field)


# --- the test's means -------------------------------------------------------------------------


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


class Tracking:
    """The tracking API, one new source per batch, and what each source left behind."""

    def __init__(self, client: TestClient, container: Container) -> None:
        self.client = client
        self.container = container

    def source(self) -> tuple[str, dict[str, str]]:
        source, key = self.container.access.create_source(unique("fuzz"))
        return source.id, {**basic(key), "Content-Type": "application/json"}

    def post(self, path: str, body: str | bytes, headers: dict[str, str]) -> Any:
        content = body.encode() if isinstance(body, str) else body
        return self.client.post(path, content=content, headers=headers)

    def stored(self, source_id: str) -> list[str]:
        with self.container.db.read() as conn:
            query = sa.select(events.c.message_id).where(events.c.source_id == source_id)
            return sorted(conn.execute(query).scalars())

    def quarantined(self, source_id: str) -> list[str | None]:
        with self.container.db.read() as conn:
            query = sa.select(quarantine.c.field).where(quarantine.c.source_id == source_id)
            return list(conn.execute(query).scalars())

    def duplicates(self, source_id: str) -> float:
        registry = self.client.app.state.metrics.registry  # type: ignore[attr-defined]
        found = registry.get_sample_value("ariane_events_deduplicated_total", {"source": source_id})
        return found or 0.0


@pytest.fixture
def tracking(client: TestClient, container: Container) -> Tracking:
    return Tracking(client, container)


def assert_answer_says_what_is_wrong(response: Any) -> None:
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code == 200:
        assert response.json() == {"success": True}
        return
    said = response.json()
    assert isinstance(said["code"], str) and said["code"], said
    assert isinstance(said["message"], str) and said["message"].strip(), said
    assert "field" not in said or (isinstance(said["field"], str) and said["field"]), said


# --- 1. a bad event is quarantined and the rest of its batch stored ------------------------


@pytest.mark.parametrize("field", FIELDS)
@settings(FUZZ, max_examples=20)
@given(data=st.data(), good=st.lists(good_events(), min_size=1, max_size=5))
def test_a_bad_event_is_quarantined_naming_its_field_and_the_rest_of_its_batch_stored(
    tracking: Tracking, field: str, data: st.DataObject, good: list[dict[str, Any]]
) -> None:
    bad = data.draw(bad_events(field))
    batch: list[Any] = list(good)
    batch.insert(data.draw(st.integers(0, len(good))), bad.event)
    source_id, headers = tracking.source()
    response = tracking.post("/v1/batch", encode({"batch": batch}), headers)
    assert response.status_code == 200, response.text
    assert tracking.stored(source_id) == sorted(event["messageId"] for event in good)
    assert tracking.quarantined(source_id) == [bad.field]


# --- 2. a single event is accepted, or refused naming its field ----------------------------


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "type"])
@settings(FUZZ, max_examples=8)
@given(data=st.data(), good=good_events())
def test_a_single_bad_event_is_400_naming_its_field_and_a_good_one_200(
    tracking: Tracking, field: str, data: st.DataObject, good: dict[str, Any]
) -> None:
    _, headers = tracking.source()
    accepted = tracking.post(f"/v1/{good['type']}", encode(good), headers)
    assert accepted.status_code == 200, accepted.text
    bad = data.draw(bad_events(field))
    # The path says the type of a single event.
    kind = bad.event["type"] if isinstance(bad.event, dict) else "track"
    refused = tracking.post(f"/v1/{kind}", encode(bad.event), headers)
    assert refused.status_code == 400, refused.text
    assert_answer_says_what_is_wrong(refused)
    if isinstance(bad.event, dict):
        assert refused.json()["field"] == bad.field, refused.text
    else:
        # No field is at fault: the body as a whole is not an event.
        assert "JSON object" in refused.json()["message"]


# --- 3. any request: 200 or a 4xx that says what is wrong; no event lost -------------------


anything = st.recursive(
    scalars | flawed_text,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(plain_text | flawed_text, inner, max_size=3)
        | st.builds(Nested, st.integers(1, 1000), inner)
    ),
    max_leaves=6,
)


@st.composite
def careless_events(draw: st.DrawFn) -> Any:
    """Anything in place of an event: each field Ariane reads absent, right or of any
    type; nested fields Ariane reads (context.traits, context.externalIds...) likewise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(anything)
    event: dict[str, Any] = draw(good_events())
    for key in draw(st.lists(st.sampled_from(KNOWN_FIELDS), max_size=4, unique=True)):
        event[key] = draw(anything)
    context = event.get("context")
    if isinstance(context, dict) and draw(st.booleans()):
        read = ("traits", "device", "externalIds", "consent")
        context[draw(st.sampled_from(read))] = draw(
            anything
            | st.lists(st.fixed_dictionaries({"type": anything, "id": anything}), max_size=2)
            | st.fixed_dictionaries({"id": anything})
            | st.fixed_dictionaries({"categoryPreferences": anything})
            | st.fixed_dictionaries({"email": anything, "phone": anything})
        )
    return event


@st.composite
def careless_bodies(draw: st.DrawFn) -> tuple[str | bytes, int | None]:
    """A body, and how many events it holds if it is a batch."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        garbage = [b"", b"{", b'{"batch": [', b"\xff\xfe", b'{"batch": NaN}']
        return draw(st.binary(max_size=40) | st.sampled_from(garbage)), None
    if shape == 1:
        return encode(draw(anything)), None
    body: dict[str, Any] = {"batch": draw(st.lists(careless_events(), max_size=6))}
    for key in draw(st.lists(st.sampled_from(["context", "integrations", "sentAt"]), unique=True)):
        body[key] = draw(anything | st.sampled_from(GOOD_TIMES + CLOCKS_WRONG + NOT_TIMES))
    return encode(body), len(body["batch"])


@settings(FUZZ, max_examples=120)
@given(sent=careless_bodies(), path=st.sampled_from(["/v1/batch", "/v1/import", "/v1/track"]))
def test_any_request_is_200_or_a_4xx_saying_what_is_wrong_and_loses_no_event(
    tracking: Tracking, sent: tuple[str | bytes, int | None], path: str
) -> None:
    body, events_sent = sent
    source_id, headers = tracking.source()
    response = tracking.post(path, body, headers)
    assert_answer_says_what_is_wrong(response)
    if response.status_code == 200 and path != "/v1/track" and events_sent is not None:
        kept = len(tracking.stored(source_id)) + len(tracking.quarantined(source_id))
        assert kept + tracking.duplicates(source_id) == events_sent


# --- 4. memory ----------------------------------------------------------------------------------

# The most Python allocates at once (tracemalloc: C libraries' own memory aside) while it
# answers one request of the largest body the tracking API reads (max_batch_bytes,
# 500 KB), whatever the body holds: 40 times the body. The worst measured, events nested a
# thousand levels, is half of it.
PEAK_BYTES = 40 * 500 * 1024
# What it holds more once three more such requests are answered and collected.
GROWTH_BYTES = 2**20
BODY_BYTES = 500 * 1024


def _filled(event: Callable[[int], str]) -> bytes:
    """A batch of as many events `event(i)` as fit in the largest body."""
    parts: list[str] = []
    size = len('{"batch": []}')
    for i in itertools.count():
        part = event(i)
        if size + len(part) + 2 > BODY_BYTES:
            break
        parts.append(part)
        size += len(part) + 2
    return ('{"batch": [' + ", ".join(parts) + "]}").encode()


def _track(i: int, properties: str = "{}") -> str:
    user = f"mem-{i % 50}"
    return f'{{"type": "track", "userId": "{user}", "event": "E", "properties": {properties}}}'


LARGE_BODIES: dict[str, Callable[[], bytes]] = {
    "2,500 events": lambda: ('{"batch": [' + ", ".join(map(_track, range(2500))) + "]}").encode(),
    "events nested 1,000 levels": lambda: _filled(
        lambda i: _track(i, encode({"n": Nested(1000, i)}))
    ),
    "NUL and lone surrogates": lambda: _filled(
        lambda i: _track(i, '{"a\\u0000": "\\ud800' + "x\\udfff" * 40 + '"}')
    ),
    "whole numbers beyond 64 bits": lambda: _filled(
        lambda i: _track(i, '{"n": [' + ", ".join(["9" * 300] * 6) + "]}")
    ),
    "50 MB gzipped": lambda: gzip.compress(b" " * 50 * 2**20),
}


def settle(tracking: Tracking, headers: dict[str, str]) -> None:
    """Let go of what the last request left in reach: the worker thread that stored it
    lets go of its batch only after the answer is sent, before it takes the next one (an
    empty batch), and the collector frees cycles."""
    tracking.post("/v1/batch", b'{"batch": []}', headers)
    gc.collect()


@pytest.mark.parametrize("shape", LARGE_BODIES)
def test_the_largest_and_worst_bodies_take_bounded_memory_and_leave_none_held(
    tracking: Tracking, shape: str
) -> None:
    body = LARGE_BODIES[shape]()
    assert len(body) <= BODY_BYTES
    _, headers = tracking.source()
    if shape.endswith("gzipped"):
        headers["Content-Encoding"] = "gzip"

    def answer() -> None:
        assert_answer_says_what_is_wrong(tracking.post("/v1/batch", body, headers))

    # Once before measuring: caches and connection pools fill once.
    answer()
    settle(tracking, headers)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        answer()
        peak = tracemalloc.get_traced_memory()[1] - before
        for _ in range(3):
            answer()
        settle(tracking, headers)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{peak / 2**20:.1f} MB at once"
    assert growth < GROWTH_BYTES, f"{growth / 2**20:.1f} MB held"


def test_a_batch_with_quarantined_events_is_freed_as_soon_as_it_is_answered(
    tracking: Tracking,
) -> None:
    body = LARGE_BODIES["NUL and lone surrogates"]()
    _, headers = tracking.source()
    tracking.post("/v1/batch", body, headers)
    settle(tracking, headers)
    tracemalloc.start()
    gc.disable()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            assert tracking.post("/v1/batch", body, headers).status_code == 200
        tracking.post("/v1/batch", b'{"batch": []}', headers)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        gc.enable()
        tracemalloc.stop()
    # Without the cycle collector, what reference counting does not free stays held.
    assert held < GROWTH_BYTES, f"{held / 2**20:.1f} MB held"
