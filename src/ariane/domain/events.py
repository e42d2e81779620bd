"""What happened, as small typed values: services record them, the unit of work writes
them to the outbox in the same commit as the change that caused them, and the handlers
of `ariane.handlers` react to them once it commits.

Raw events (what the SDKs send) are not copied here: their consumers read the events
table as a log (`StoredEvent`). Every value has an `event_id`, unique and stable: a
handler that sees it twice does nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.messages import LOYALTY_SOURCE, MESSAGES_SOURCE


@dataclass(frozen=True)
class DomainEvent:
    event_id: str
    profile_id: str | None
    at: datetime

    # The outbox's name of the kind (its `topic`): the class name, stable across releases.
    kind: ClassVar[str] = "DomainEvent"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = cls.__name__
        KINDS[cls.__name__] = cls

    def payload(self) -> dict[str, Any]:
        """What the outbox keeps of it, as JSON (its id, profile and time have columns)."""
        found = asdict(self)
        for name in ("event_id", "profile_id", "at"):
            del found[name]
        return found


KINDS: dict[str, type[DomainEvent]] = {}


def from_record(
    kind: str, event_id: str, profile_id: str | None, at: datetime, payload: Mapping[str, Any]
) -> DomainEvent:
    """The event the outbox row holds; `KeyError` for a kind this release does not know."""
    cls = KINDS[kind]
    known = {f.name for f in fields(cls)}
    values = {name: value for name, value in payload.items() if name in known}
    return cls(event_id=event_id, profile_id=profile_id, at=at, **values)


# --- profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfilesMerged(DomainEvent):
    """`merged` are now `profile_id`: their events, traits and memberships moved to it."""

    _: KW_ONLY
    merged: tuple[str, ...]


def profiles_merged(survivor: str, absorbed: str, at: datetime) -> ProfilesMerged:
    # A profile is absorbed once: its id names the merge.
    return ProfilesMerged(
        event_id=f"merge-{absorbed}", profile_id=survivor, at=at, merged=(absorbed,)
    )


@dataclass(frozen=True)
class ProfileErased(DomainEvent):
    """A person was erased; named by the erasure's receipt, without their profile id."""

    _: KW_ONLY
    requested_by: str | None = None


@dataclass(frozen=True)
class ConsentChanged(DomainEvent):
    _: KW_ONLY
    purpose: str
    status: str
    previous: str | None = None


def consent_changed(
    decision_id: int,
    profile_id: str,
    purpose: str,
    status: str,
    at: datetime,
    previous: str | None,
) -> ConsentChanged:
    # Named by the decision's row: two decisions alike at one moment are two changes.
    return ConsentChanged(
        event_id=f"consent-{decision_id}",
        profile_id=profile_id,
        at=at,
        purpose=purpose,
        status=status,
        previous=previous,
    )


@dataclass(frozen=True)
class ComputedValueChanged(DomainEvent):
    """A named computed trait of a person took another value: once per trait, person
    and batch of events, from its value before the batch to its value after."""

    _: KW_ONLY
    name: str
    value: Any
    previous: Any = None


def computed_changes(
    profile_id: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    at: datetime,
    make_id: Callable[[], str],
) -> list[ComputedValueChanged]:
    """A change for each computed trait whose value differs between the two readings
    (a trait missing from `before` was None)."""
    return [
        ComputedValueChanged(
            event_id=f"computed-{make_id()}",
            profile_id=profile_id,
            at=at,
            name=name,
            value=value,
            previous=before.get(name),
        )
        for name, value in sorted(after.items())
        if value != before.get(name)
    ]


# --- segments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AudienceChange(DomainEvent):
    """A person entering or leaving a segment; its `event_id` is the message id of the
    `Audience Entered` / `Audience Exited` event on their timeline."""

    _: KW_ONLY
    segment_id: str
    segment: str
    cause: str

    track_name: ClassVar[str] = ""


@dataclass(frozen=True)
class SegmentEntered(AudienceChange):
    track_name: ClassVar[str] = "Audience Entered"


@dataclass(frozen=True)
class SegmentExited(AudienceChange):
    track_name: ClassVar[str] = "Audience Exited"


# --- loyalty ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnTimeline(DomainEvent):
    """What loyalty or a channel records to be put on a person's timeline, as a track
    event of `source`."""

    source: ClassVar[str] = LOYALTY_SOURCE

    def track(self) -> dict[str, Any]:
        """The Segment track message of it, as it appears on the member's timeline."""
        raise NotImplementedError


@dataclass(frozen=True)
class LoyaltyEvent(OnTimeline):
    """A movement of a member's points, tier or coupons. `properties` are those of the
    track event that puts it on their timeline, named `track_name`."""

    _: KW_ONLY
    programme: str
    properties: Mapping[str, Any] = field(default_factory=dict)

    track_name: ClassVar[str] = ""

    def track(self) -> dict[str, Any]:
        return _track(self.track_name, self, {"programme": self.programme, **self.properties})


@dataclass(frozen=True)
class SaleRecorded(OnTimeline):
    """A sale (or any event the earn rules read) a till or the web sent to loyalty
    directly, kept on the member's timeline as it was sent."""

    _: KW_ONLY
    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)

    def track(self) -> dict[str, Any]:
        return _track(self.name, self, dict(self.properties))


def _track(name: str, event: DomainEvent, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "messageId": event.event_id,
        "timestamp": iso(event.at),
        "properties": properties,
    }


@dataclass(frozen=True)
class PointsEarned(LoyaltyEvent):
    track_name: ClassVar[str] = "Points Earned"


@dataclass(frozen=True)
class PointsSpent(LoyaltyEvent):
    track_name: ClassVar[str] = "Points Spent"


@dataclass(frozen=True)
class RewardRedeemed(LoyaltyEvent):
    track_name: ClassVar[str] = "Reward Redeemed"


@dataclass(frozen=True)
class PointsExpired(LoyaltyEvent):
    track_name: ClassVar[str] = "Points Expired"


@dataclass(frozen=True)
class PointsReversed(LoyaltyEvent):
    track_name: ClassVar[str] = "Points Reversed"


@dataclass(frozen=True)
class PointsAdjusted(LoyaltyEvent):
    track_name: ClassVar[str] = "Points Adjusted"


@dataclass(frozen=True)
class PointsTransferred(LoyaltyEvent):
    track_name: ClassVar[str] = "Points Transferred"


@dataclass(frozen=True)
class TierChanged(LoyaltyEvent):
    track_name: ClassVar[str] = "Tier Changed"


@dataclass(frozen=True)
class CouponBurned(LoyaltyEvent):
    track_name: ClassVar[str] = "Coupon Burned"


@dataclass(frozen=True)
class CouponRolledBack(LoyaltyEvent):
    track_name: ClassVar[str] = "Coupon Burn Rolled Back"


LOYALTY_EVENTS: dict[str, type[LoyaltyEvent]] = {
    cls.track_name: cls
    for cls in (
        PointsEarned,
        PointsSpent,
        RewardRedeemed,
        PointsExpired,
        PointsReversed,
        PointsAdjusted,
        PointsTransferred,
        TierChanged,
        CouponBurned,
        CouponRolledBack,
    )
}


def loyalty_event(message: Mapping[str, Any], profile_id: str) -> LoyaltyEvent:
    """The typed event of a loyalty track message (as movements describe them)."""
    properties = dict(message.get("properties") or {})
    programme = str(properties.pop("programme", ""))
    return LOYALTY_EVENTS[message["event"]](
        event_id=message["messageId"],
        profile_id=profile_id,
        at=parse_timestamp(message["timestamp"]),
        programme=programme,
        properties=properties,
    )


# --- raw events, read as a log ----------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    """An event of the events table, as its consumers read it: `position` orders the log
    (see `storage.outbox`)."""

    position: tuple[int, int]
    source_id: str
    message_id: str
    profile_id: str
    type: str
    event: str | None
    timestamp: datetime
    received_at: datetime
    payload: Mapping[str, Any]

    @property
    def event_id(self) -> str:
        return f"{self.source_id}:{self.message_id}"


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageQueued(DomainEvent):
    """A journey step made a message due on `channel`: the channel's handler sends it.
    Named by the message's send key."""

    _: KW_ONLY
    message: int
    channel: str


@dataclass(frozen=True)
class MessageEvent(OnTimeline):
    """What became of a message, put on the person's timeline as a track event named
    `track_name`, which segments, goals and other journeys can use."""

    _: KW_ONLY
    properties: Mapping[str, Any] = field(default_factory=dict)

    track_name: ClassVar[str] = ""
    source: ClassVar[str] = MESSAGES_SOURCE

    def track(self) -> dict[str, Any]:
        return _track(self.track_name, self, dict(self.properties))


@dataclass(frozen=True)
class MessageSent(MessageEvent):
    track_name: ClassVar[str] = "Message Sent"


@dataclass(frozen=True)
class MessageFailed(MessageEvent):
    track_name: ClassVar[str] = "Message Failed"


@dataclass(frozen=True)
class MessageSkipped(MessageEvent):
    track_name: ClassVar[str] = "Message Skipped"


@dataclass(frozen=True)
class MessageUnknown(MessageEvent):
    track_name: ClassVar[str] = "Message Unknown"


@dataclass(frozen=True)
class MessageOpened(MessageEvent):
    track_name: ClassVar[str] = "Message Opened"


@dataclass(frozen=True)
class MessageClicked(MessageEvent):
    track_name: ClassVar[str] = "Message Clicked"


@dataclass(frozen=True)
class Unsubscribed(MessageEvent):
    track_name: ClassVar[str] = "Unsubscribed"


MESSAGE_EVENTS: dict[str, type[MessageEvent]] = {
    cls.track_name: cls
    for cls in (
        MessageSent,
        MessageFailed,
        MessageSkipped,
        MessageUnknown,
        MessageOpened,
        MessageClicked,
        Unsubscribed,
    )
}
