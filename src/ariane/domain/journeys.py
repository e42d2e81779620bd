"""Journeys: who enters, what happens to them step by step, and what counts as success.

A journey is declared as code (YAML or JSON) or through the API:

    id: abandoned-cart
    name: Abandoned cart
    entry:                               # one of: event, segment, schedule, api
      event: Cart Abandoned
      where: [{property: total, op: gte, value: 10}]
      key: properties.cartId             # one enrollment per cart
    reentry: always                      # never (default), always, or a cool-down: P7D
    exit:                                # at any step
      - event: Order Completed
        keyed: true                      # only the order of the entry's cart
      - left: trial-users                # leaving a segment
    goal: {event: Order Completed, within: P7D}    # or {segment: subscribers, within: P30D}
    holdout: 0.1                         # a stable tenth follows the journey unsent
    quiet_hours: {start: "21:00", end: "08:00", then: defer}   # or drop
    steps:
      - id: wait-order
        wait: {event: Order Completed, keyed: true, timeout: PT1H}
        on_event: exit                   # where the order sends them; on_timeout: next
      - id: reminder
        send: {channel: email, template: cart-reminder, category: marketing}

Steps run in order unless one says where to go (`next`, a branch's target): a step's id,
`next` (the following step) or `exit`. A step is one of `send`, `delay` (`for` a
duration; `until` a time of day in the person's time zone, on `weekdays`; `before` a
date trait such as a birthday), `wait` (for an event, keyed to the entry or not, or for a
segment, with a `timeout`), `split` (a condition in the segment language), `random`
(weighted variants, stable per person) and `exit`.

A change to a journey makes a new version; people already in it stay on the version
they entered unless an admin moves them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ariane.domain.conditions import (
    Behaviour,
    EventCount,
    Names,
    Node,
    check_size,
    parse_condition,
    walk,
)
from ariane.domain.definitions import PropertyTests, duration, keyed, listed, property_tests
from ariane.domain.events import StoredEvent
from ariane.domain.local_time import (
    QuietHours,
    next_time_of_day,
    parse_time_of_day,
    parse_weekdays,
)
from ariane.domain.predicates import (
    InvalidDefinition,
    lookup,
    parse_path,
)

CATEGORIES = ("marketing", "transactional")
NEXT = "next"
EXIT = "exit"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEYS = (
    "id",
    "name",
    "description",
    "enabled",
    "entry",
    "reentry",
    "exit",
    "goal",
    "holdout",
    "quiet_hours",
    "steps",
)
_STEP_KINDS = ("send", "delay", "wait", "split", "random", "exit")
MAX_STEPS = 200
# A person runs at most this many steps in a row without waiting: a journey that loops
# without a delay or a wait stops there rather than spinning.
MAX_STEPS_AT_ONCE = 100


@dataclass(frozen=True, slots=True)
class EventMatch:
    """Track events of one name whose properties pass every test of `where`."""

    name: str
    where: PropertyTests = ()

    def matches(self, event: StoredEvent) -> bool:
        if event.type != "track" or event.event != self.name:
            return False
        properties = event.payload.get("properties")
        document = properties if isinstance(properties, Mapping) else {}
        return all(test(lookup(document, parts), event.timestamp) for parts, test in self.where)


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str  # event, segment, schedule, api
    event: EventMatch | None = None
    # The path in the entering event of its key (`properties.cartId`): one enrollment
    # per person and key.
    key: tuple[str, ...] | None = None
    segment: str | None = None
    # A schedule's segment's members enter every `every`, at `at` in the workspace's zone.
    every: timedelta | None = None
    at: time | None = None

    def key_of(self, event: StoredEvent) -> str:
        if self.key is None:
            return ""
        value = lookup(event.payload, self.key)
        return "" if value is None or isinstance(value, Mapping | list) else str(value)


@dataclass(frozen=True, slots=True)
class Reentry:
    mode: str  # never, always, cooldown
    cooldown: timedelta | None = None

    def allows(self, last_entered: datetime | None, active: bool, now: datetime) -> bool:
        """Whether the person may enter again, given their last entry with the same key."""
        if active:
            return False
        if last_entered is None:
            return True
        if self.mode == "always":
            return True
        if self.mode == "cooldown" and self.cooldown is not None:
            return now - last_entered >= self.cooldown
        return False


@dataclass(frozen=True, slots=True)
class Exit:
    event: EventMatch | None = None
    # The event must carry the entry's key at the entry's key path.
    keyed: bool = False
    left: str | None = None


@dataclass(frozen=True, slots=True)
class Goal:
    within: timedelta
    event: EventMatch | None = None
    segment: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    kind: str
    # Where to go once done (`next`: the following step; `exit`; a step id).
    next: str = NEXT
    # send
    channel: str = ""
    template: str = ""
    category: str = "marketing"
    # delay
    wait_for: timedelta | None = None
    until: time | None = None
    weekdays: frozenset[int] | None = None
    before_trait: tuple[str, ...] | None = None
    days_before: int = 0
    yearly: bool = True
    # wait
    event: EventMatch | None = None
    keyed: bool = False
    segment: str | None = None
    timeout: timedelta | None = None
    on_event: str = NEXT
    on_timeout: str = NEXT
    # split
    condition: Node | None = None
    then: str = NEXT
    otherwise: str = NEXT
    # random: (variant, weight, target)
    variants: tuple[tuple[str, int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class QuietPolicy:
    hours: QuietHours
    then: str  # defer, drop


@dataclass(frozen=True, slots=True)
class Journey:
    id: str
    name: str
    entry: Entry
    steps: tuple[Step, ...]
    reentry: Reentry = Reentry("never")
    exits: tuple[Exit, ...] = ()
    goal: Goal | None = None
    holdout: float = 0.0
    quiet: QuietPolicy | None = None
    enabled: bool = True
    description: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> str:
        return self.steps[0].id if self.steps else EXIT

    def step(self, ident: str) -> Step | None:
        for step in self.steps:
            if step.id == ident:
                return step
        return None

    def target(self, step: Step, where: str) -> str:
        """The step id `where` names from `step` (`next`: the one after it), or `exit`."""
        if where != NEXT:
            return where
        index = self.steps.index(step)
        return self.steps[index + 1].id if index + 1 < len(self.steps) else EXIT

    def segments(self) -> set[str]:
        """The segments the journey reads: its entry, exits, goal, waits and splits."""
        found = {self.entry.segment} | {e.left for e in self.exits}
        found |= {self.goal.segment if self.goal else None}
        for step in self.steps:
            found.add(step.segment)
        return {name for name in found if name}

    def events(self) -> set[str]:
        """The event names the journey reacts to."""
        found = {self.entry.event.name if self.entry.event else None}
        found |= {e.event.name for e in self.exits if e.event}
        found |= {self.goal.event.name if self.goal and self.goal.event else None}
        found |= {step.event.name for step in self.steps if step.event}
        return {name for name in found if name}


# --- parsing ----------------------------------------------------------------------------


def parse_journey(raw: Any, names: Names, path: str = "journey") -> Journey:
    """The journey `raw` declares; `InvalidDefinition` naming the path of what is wrong.
    `names` are the segments and computed traits that exist, for splits and entries."""
    node = keyed(raw, path, _KEYS)
    ident = node.get("id")
    if not isinstance(ident, str) or not _ID.match(ident):
        raise InvalidDefinition(
            "needs an id of lowercase letters, digits, - and _, such as abandoned-cart",
            field=f"{path}.id",
        )
    name = node.get("name", ident)
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise InvalidDefinition("needs a name of 1 to 200 characters", field=f"{path}.name")
    description = node.get("description", "")
    if not isinstance(description, str):
        raise InvalidDefinition("needs text", field=f"{path}.description")
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidDefinition("needs true or false", field=f"{path}.enabled")
    if "entry" not in node:
        raise InvalidDefinition(
            "needs an entry: event, segment, schedule or api", field=f"{path}.entry"
        )
    entry = _entry(node["entry"], f"{path}.entry", names)
    steps = _steps(node.get("steps"), f"{path}.steps", names)
    exits = tuple(
        _exit(item, f"{path}.exit[{index}]", names, entry)
        for index, item in enumerate(listed(node.get("exit", []), f"{path}.exit"))
    )
    for index, step in enumerate(steps):
        if step.keyed and entry.key is None:
            raise InvalidDefinition(
                "a keyed wait needs an entry with a key", field=f"{path}.steps[{index}].wait"
            )
    return Journey(
        id=ident,
        name=name,
        entry=entry,
        steps=steps,
        reentry=_reentry(node.get("reentry", "never"), f"{path}.reentry"),
        exits=exits,
        goal=_goal(node["goal"], f"{path}.goal", names) if "goal" in node else None,
        holdout=_share(node.get("holdout", 0), f"{path}.holdout"),
        quiet=_quiet(node["quiet_hours"], f"{path}.quiet_hours") if "quiet_hours" in node else None,
        enabled=enabled,
        description=description,
        definition=dict(node),
    )


def parse_event_match(raw: Mapping[str, Any], path: str) -> EventMatch:
    name = raw.get("event")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise InvalidDefinition("needs an event name", field=f"{path}.event")
    return EventMatch(name, property_tests(raw.get("where", []), f"{path}.where"))


def _segment(value: Any, path: str, names: Names) -> str:
    if not isinstance(value, str) or value not in names.segments:
        raise InvalidDefinition(f"no segment named {value!r}", field=path)
    return value


def _entry(raw: Any, path: str, names: Names) -> Entry:
    node = keyed(raw, path, ("event", "where", "key", "segment", "schedule", "api"))
    kinds = [kind for kind in ("event", "segment", "schedule", "api") if kind in node]
    if len(kinds) != 1:
        raise InvalidDefinition("needs exactly one of event, segment, schedule, api", field=path)
    kind = kinds[0]
    if kind != "event" and ("where" in node or "key" in node):
        raise InvalidDefinition("where and key go with an event entry", field=path)
    if kind == "event":
        key = None
        if "key" in node:
            key = parse_path(node["key"], f"{path}.key")
            if key[0] not in ("properties", "context", "traits"):
                raise InvalidDefinition(
                    "needs a path in the event, such as properties.cartId", field=f"{path}.key"
                )
        return Entry("event", event=parse_event_match(node, path), key=key)
    if kind == "segment":
        return Entry("segment", segment=_segment(node["segment"], f"{path}.segment", names))
    if kind == "schedule":
        where = f"{path}.schedule"
        schedule = keyed(node["schedule"], where, ("segment", "every", "at"))
        return Entry(
            "schedule",
            segment=_segment(schedule.get("segment"), f"{where}.segment", names),
            every=duration(schedule.get("every", "P1D"), f"{where}.every"),
            at=parse_time_of_day(schedule["at"], f"{where}.at") if "at" in schedule else None,
        )
    if node["api"] is not True:
        raise InvalidDefinition("needs true", field=f"{path}.api")
    return Entry("api")


def _reentry(raw: Any, path: str) -> Reentry:
    if raw in ("never", "always"):
        return Reentry(raw)
    if isinstance(raw, str) and raw.startswith("P"):
        return Reentry("cooldown", duration(raw, path))
    raise InvalidDefinition("needs never, always, or a cool-down such as P7D", field=path)


def _exit(raw: Any, path: str, names: Names, entry: Entry) -> Exit:
    node = keyed(raw, path, ("event", "where", "keyed", "left"))
    if ("event" in node) == ("left" in node):
        raise InvalidDefinition("needs one of event or left (a segment)", field=path)
    if "left" in node:
        return Exit(left=_segment(node["left"], f"{path}.left", names))
    keyed_to = _flag(node.get("keyed", False), f"{path}.keyed")
    if keyed_to and entry.key is None:
        raise InvalidDefinition("a keyed exit needs an entry with a key", field=f"{path}.keyed")
    return Exit(event=parse_event_match(node, path), keyed=keyed_to)


def _goal(raw: Any, path: str, names: Names) -> Goal:
    node = keyed(raw, path, ("event", "where", "segment", "within"))
    within = duration(node.get("within"), f"{path}.within")
    if ("event" in node) == ("segment" in node):
        raise InvalidDefinition("needs one of event or segment", field=path)
    if "segment" in node:
        return Goal(within, segment=_segment(node["segment"], f"{path}.segment", names))
    return Goal(within, event=parse_event_match(node, path))


def _share(raw: Any, path: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw < 1:
        raise InvalidDefinition("needs a share from 0 to below 1, such as 0.1", field=path)
    return float(raw)


def _quiet(raw: Any, path: str) -> QuietPolicy:
    node = keyed(raw, path, ("start", "end", "then"))
    then = node.get("then", "defer")
    if then not in ("defer", "drop"):
        raise InvalidDefinition("needs defer or drop", field=f"{path}.then")
    start = parse_time_of_day(node.get("start"), f"{path}.start")
    end = parse_time_of_day(node.get("end"), f"{path}.end")
    if start == end:
        raise InvalidDefinition("start and end are the same time", field=f"{path}.end")
    return QuietPolicy(QuietHours(start, end), then)


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidDefinition("needs true or false", field=path)
    return value


def _steps(raw: Any, path: str, names: Names) -> tuple[Step, ...]:
    items = listed(raw, path)
    if not 0 < len(items) <= MAX_STEPS:
        raise InvalidDefinition(f"needs 1 to {MAX_STEPS} steps", field=path)
    steps = []
    for index, item in enumerate(items):
        if item == "exit":
            item = {"exit": True}
        steps.append(_step(item, f"{path}[{index}]", index, names))
    ids = [step.id for step in steps]
    for index, ident in enumerate(ids):
        if ids.index(ident) != index:
            raise InvalidDefinition(
                f"step id {ident!r} is given twice", field=f"{path}[{index}].id"
            )
    known = set(ids) | {NEXT, EXIT}
    for index, step in enumerate(steps):
        targets = [
            ("next", step.next),
            ("on_event", step.on_event),
            ("on_timeout", step.on_timeout),
            ("then", step.then),
            ("else", step.otherwise),
        ] + [(f"random.variants[{n}].then", v[2]) for n, v in enumerate(step.variants)]
        for name, target in targets:
            if target not in known:
                raise InvalidDefinition(
                    f"no step {target!r}; name a step's id, next or exit",
                    field=f"{path}[{index}].{name}",
                )
    return tuple(steps)


_STEP_KEYS = ("id", "next", *_STEP_KINDS, "on_event", "on_timeout", "then", "else")


def _step(raw: Any, path: str, index: int, names: Names) -> Step:
    node = keyed(raw, path, _STEP_KEYS)
    kinds = [kind for kind in _STEP_KINDS if kind in node]
    if len(kinds) != 1:
        raise InvalidDefinition(f"needs exactly one of {', '.join(_STEP_KINDS)}", field=path)
    kind = kinds[0]
    ident = node.get("id", f"step-{index + 1}")
    if not isinstance(ident, str) or not _ID.match(ident) or ident in (NEXT, EXIT):
        raise InvalidDefinition(
            "needs an id of lowercase letters, digits, - and _ (not next or exit)",
            field=f"{path}.id",
        )
    allowed = {"id", kind, "next"}
    allowed |= {"wait": {"on_event", "on_timeout"}, "split": {"then", "else"}}.get(kind, set())
    if kind in ("split", "random", "exit"):
        allowed.discard("next")
    extra = sorted(key for key in node if key not in allowed)
    if extra:
        raise InvalidDefinition(f"{extra[0]} does not go with {kind}", field=f"{path}.{extra[0]}")
    found = Step(id=ident, kind=kind, next=_target(node.get("next", NEXT), f"{path}.next"))
    where = f"{path}.{kind}"
    body = node[kind]
    if kind == "send":
        return _send(found, body, where)
    if kind == "delay":
        return _delay(found, body, where)
    if kind == "wait":
        return _wait(found, node, where, names)
    if kind == "split":
        return _split(found, node, where, names)
    if kind == "random":
        return _random(found, body, where)
    if body is not True:
        raise InvalidDefinition("needs true", field=where)
    return Step(id=ident, kind="exit", next=EXIT)


def _target(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidDefinition("needs a step's id, next or exit", field=path)
    return value


def _send(step: Step, raw: Any, path: str) -> Step:
    node = keyed(raw, path, ("channel", "template", "category"))
    channel, template = node.get("channel"), node.get("template")
    if not isinstance(channel, str) or not channel:
        raise InvalidDefinition("needs a channel's name", field=f"{path}.channel")
    if not isinstance(template, str) or not template:
        raise InvalidDefinition("needs a template's name", field=f"{path}.template")
    category = node.get("category", "marketing")
    if category not in CATEGORIES:
        raise InvalidDefinition("needs marketing or transactional", field=f"{path}.category")
    return _with(step, channel=channel, template=template, category=category)


def _delay(step: Step, raw: Any, path: str) -> Step:
    node = keyed(raw, path, ("for", "until", "weekdays", "before", "days_before", "at", "yearly"))
    kinds = [kind for kind in ("for", "until", "before") if kind in node]
    if len(kinds) != 1:
        raise InvalidDefinition("needs one of for, until or before", field=path)
    if kinds[0] == "for":
        if len(node) > 1:
            raise InvalidDefinition("for takes nothing else", field=path)
        return _with(step, wait_for=duration(node["for"], f"{path}.for"))
    if kinds[0] == "until":
        weekdays = None
        if "weekdays" in node:
            weekdays = parse_weekdays(node["weekdays"], f"{path}.weekdays")
        for extra in ("days_before", "at", "yearly"):
            if extra in node:
                raise InvalidDefinition("goes with before", field=f"{path}.{extra}")
        return _with(
            step, until=parse_time_of_day(node["until"], f"{path}.until"), weekdays=weekdays
        )
    days = node.get("days_before", 0)
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 366:
        raise InvalidDefinition("needs a whole number from 0 to 366", field=f"{path}.days_before")
    if "weekdays" in node:
        raise InvalidDefinition("goes with until", field=f"{path}.weekdays")
    return _with(
        step,
        before_trait=parse_path(node["before"], f"{path}.before"),
        days_before=days,
        until=parse_time_of_day(node.get("at", "09:00"), f"{path}.at"),
        yearly=_flag(node.get("yearly", True), f"{path}.yearly"),
    )


def _wait(step: Step, node: Mapping[str, Any], path: str, names: Names) -> Step:
    body = keyed(node["wait"], path, ("event", "where", "keyed", "segment", "timeout"))
    if ("event" in body) == ("segment" in body):
        raise InvalidDefinition("needs one of event or segment", field=path)
    if "timeout" not in body:
        raise InvalidDefinition("needs a timeout, such as PT1H", field=f"{path}.timeout")
    timeout = duration(body["timeout"], f"{path}.timeout")
    on_event = _target(node.get("on_event", NEXT), f"{path[: -len('.wait')]}.on_event")
    on_timeout = _target(node.get("on_timeout", NEXT), f"{path[: -len('.wait')]}.on_timeout")
    if "segment" in body:
        if "keyed" in body or "where" in body:
            raise InvalidDefinition("keyed and where go with an event", field=path)
        return _with(
            step,
            segment=_segment(body["segment"], f"{path}.segment", names),
            timeout=timeout,
            on_event=on_event,
            on_timeout=on_timeout,
        )
    return _with(
        step,
        event=parse_event_match(body, path),
        keyed=_flag(body.get("keyed", False), f"{path}.keyed"),
        timeout=timeout,
        on_event=on_event,
        on_timeout=on_timeout,
    )


def _split(step: Step, node: Mapping[str, Any], path: str, names: Names) -> Step:
    condition = check_size(parse_condition(node["split"], names, path), path)
    for part in walk(condition):
        if isinstance(part, EventCount | Behaviour):
            raise InvalidDefinition(
                "a split reads traits, computed traits, segments and consent; count events "
                "with a computed trait or a segment",
                field=path,
            )
    base = path[: -len(".split")]
    return _with(
        step,
        condition=condition,
        then=_target(node.get("then", NEXT), f"{base}.then"),
        otherwise=_target(node.get("else", NEXT), f"{base}.else"),
    )


def _random(step: Step, raw: Any, path: str) -> Step:
    node = keyed(raw, path, ("variants",))
    items = listed(node.get("variants"), f"{path}.variants")
    if not 2 <= len(items) <= 20:
        raise InvalidDefinition("needs 2 to 20 variants", field=f"{path}.variants")
    variants = []
    for index, item in enumerate(items):
        where = f"{path}.variants[{index}]"
        variant = keyed(item, where, ("name", "weight", "then"))
        name = variant.get("name")
        if not isinstance(name, str) or not _ID.match(name):
            raise InvalidDefinition("needs a name such as a or short-copy", field=f"{where}.name")
        weight = variant.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 10_000:
            raise InvalidDefinition(
                "needs a whole number from 1 to 10,000", field=f"{where}.weight"
            )
        variants.append((name, weight, _target(variant.get("then", NEXT), f"{where}.then")))
    if len({name for name, _, _ in variants}) < len(variants):
        raise InvalidDefinition("variant names must differ", field=f"{path}.variants")
    return _with(step, variants=tuple(variants))


def _with(step: Step, **values: Any) -> Step:
    return Step(**{**{name: getattr(step, name) for name in step.__slots__}, **values})


# --- schedules --------------------------------------------------------------------------


def last_moment(
    since: datetime, now: datetime, every: timedelta | None, at: time | None, zone: ZoneInfo
) -> datetime | None:
    """The latest moment of a schedule at or before `now`, none before `since`: every
    `every` from the first `at` (local time in `zone`) after `since`; a whole number of
    days is counted in local days, so that 09:00 stays 09:00 across a change of clocks."""
    step = every or timedelta(days=1)
    first = since if at is None else next_time_of_day(since, zone, at)
    if first > now:
        return None
    if at is not None and step % timedelta(days=1) == timedelta(0):
        days = step.days
        local_first = first.astimezone(zone).date()
        elapsed = (now.astimezone(zone).date() - local_first).days // days * days
        for back in (0, days):
            day = local_first + timedelta(days=elapsed - back)
            moment = next_time_of_day(
                datetime.combine(day, time(0), zone).astimezone(UTC), zone, at
            )
            if first <= moment <= now:
                return moment
        return first
    return first + (now - first) // step * step


# --- stable draws -----------------------------------------------------------------------


def draw(*parts: str) -> float:
    """A number in [0, 1) that depends only on `parts`: the same person is always drawn
    the same way for the same journey."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(profile_id: str, journey: str, share: float) -> bool:
    return share > 0 and draw("holdout", journey, profile_id) < share


def in_global_control(profile_id: str, share: float) -> bool:
    return share > 0 and draw("global-control", profile_id) < share


def variant_of(profile_id: str, journey: str, step: Step) -> tuple[str, str]:
    """The variant the person is in at a random split, and where it sends them."""
    total = sum(weight for _, weight, _ in step.variants)
    point = draw("variant", journey, step.id, profile_id) * total
    for name, weight, target in step.variants:
        if point < weight:
            return name, target
        point -= weight
    name, _, target = step.variants[-1]
    return name, target


def send_key(journey: str, version: int, enrollment: int, step: str, occurrence: int) -> str:
    """The deterministic key of a send: the same step of the same enrollment, the same
    time round, always has the same key, so that it is sent once."""
    return f"{journey}.{version}.{enrollment}.{step}.{occurrence}"
