"""Sending: each channel is a handler of the bus that hands the messages journeys made
due (`MessageQueued`) to its provider, with the policies that hold at that moment.

For a batch of messages, in three steps:

1. In one transaction, each message is looked at as it is now. A marketing message whose
   channel's consent purpose is not granted (or has expired) now is skipped, as is one
   with no address; what remains is rendered and marked `sending`.
2. Each is handed to the channel, `concurrency` at once (each over a connection of its
   own), at most `rate_limit` a second. A channel is run by one process at a time (the
   bus's turn), so both hold across processes.
3. In one transaction, what became of each is recorded: `sent`, `failed` with the
   provider's answer, or back to `queued` for those not handed over because the provider
   asked to wait (429, an SMTP 4xx, `Retry-After`): the bus tries again after the pause.

A message found `sending` was being handed over when a process died. On a channel that
carries the send key to the provider (an email's Message-ID, a webhook's Idempotency-Key,
the inbox), it is handed again with the same key, which the provider drops if it got it;
on any other channel it is marked `unknown` and shown, never sent blindly twice.

What became of each message goes on the person's timeline (`Message Sent`, `Message
Failed`, `Message Skipped`, `Message Unknown`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from html import unescape
from typing import Any

import orjson

from ariane.channels import Message, Sent
from ariane.destinations.http import Pacer
from ariane.domain.channels import ChannelConfig
from ariane.domain.consent import ConsentDecision, latest_decisions
from ariane.domain.definitions import keyed
from ariane.domain.errors import DomainError, NotFound, ProviderFailed
from ariane.domain.events import (
    DomainEvent,
    MessageEvent,
    MessageFailed,
    MessageQueued,
    MessageSent,
    MessageSkipped,
    MessageUnknown,
    Unsubscribed,
)
from ariane.domain.loyalty import balance
from ariane.domain.message_templates import MessageTemplate, parse_message_template
from ariane.domain.predicates import lookup
from ariane.domain.profiles import ProfileState
from ariane.domain.segments import Catalogue
from ariane.domain.templates import TemplateError, template_context
from ariane.services.bus import GiveUp, Handler, Partial, RetryLater
from ariane.services.channels import Channels
from ariane.services.profiles import ProfileService
from ariane.services.segments import SegmentService
from ariane.storage import bus as bus_store
from ariane.storage import consents as consent_store
from ariane.storage import loyalty as loyalty_store
from ariane.storage import messages as store
from ariane.storage import profiles as profile_store
from ariane.storage.bus import Entry
from ariane.storage.database import Connection, Database

log = logging.getLogger(__name__)

# Replies that unsubscribe, as carriers and regulators expect them (CTIA, the French
# "STOP" short code rules).
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "ARRET", "ARRÊT", "STOP SMS"}
)
# Messages marked `sending` together before they are handed over, on a channel that
# carries the send key (rounded up to a multiple of the channel's concurrency): the next
# group is marked while one is handed over, so a crash hands at most two groups again,
# with their keys. On a channel that does not, as many as are handed over at once are
# marked, one group at a time, so that a crash leaves `unknown` only messages that were
# being handed over.
SEND_GROUP = 10
# Messages made ready (read, rendered) in one transaction, while the others are handed over.
PREPARED = 100
# Failures of one message other than "wait" (RetryLater) before it is failed for good.
MAX_ATTEMPTS = 5
QUEUED_KINDS = frozenset({MessageQueued.kind})
# A channel's handler on the bus is named after it: `channel:email`.
CHANNEL_PREFIX = "channel:"


@dataclass(slots=True)
class _Outgoing:
    row: dict[str, Any]
    message: Message
    entry: int  # its index among the entries handed to the handler


class Messaging:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        channels: Channels,
        segments: SegmentService,
        links: Callable[[], Links],
        profiles: ProfileService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.channels = channels
        self.segments = segments
        self.links = links
        self.profiles = profiles
        self._pacers: dict[str, Pacer] = {}
        # The threads handing each channel's messages over, and how many.
        self._pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}

    def handlers(self) -> list[Handler]:
        return [
            Handler(
                f"{CHANNEL_PREFIX}{name}",
                "outbox",
                partial(self.deliver, name),
                kinds=QUEUED_KINDS,
                batch=500,
                wants=partial(_for_channel, name),
            )
            for name, config in sorted(self.channels.configs().items())
            if config.enabled
        ]

    def deliver(self, name: str, entries: Sequence[Entry]) -> None:
        config = self.channels.config(name)
        if config is None:
            return
        wanted = {
            entry.event.message: index
            for index, entry in enumerate(entries)
            if isinstance(entry.event, MessageQueued) and entry.event.channel == name
        }
        if not wanted:
            return
        senders = self.channels.senders(config)
        channel = senders[0]
        # Made before the transaction: the first time, it writes the secret in its own.
        links = self.links()
        size, ahead = _grouping(channel.carries_key, len(senders))
        ids = sorted(wanted, key=wanted.__getitem__)
        # Made ready a chunk at a time: the first groups before the hand-over begins,
        # marked `sending` in the same transaction; the others while it goes on.
        chunks = deque(ids[at : at + PREPARED] for at in range(size * ahead, len(ids), PREPARED))

        def ready(chunk: Sequence[int], mark: bool) -> list[_Outgoing]:
            return self.db.write(
                lambda conn: self._prepare(conn, config, channel, links, chunk, wanted, mark)
            )

        outgoing = ready(ids[: size * ahead], True)
        hand_over = _HandOver(outgoing, self._pacers.setdefault(name, Pacer()), config.rate_limit)
        marked = len(outgoing)
        hand_over.release(marked)
        handing = hand_over.start(senders, self._pool(name, len(senders)), len(ids))
        try:
            start = 0
            while True:
                while chunks and len(hand_over.outgoing) < start + size * (ahead + 1):
                    hand_over.extend(ready(chunks.popleft(), False))
                outgoing = hand_over.outgoing
                end = min(start + size, len(outgoing))
                if end == start:
                    break
                if marked < end:
                    # Some of the first were skipped: the groups to hand over now.
                    self._record(_Outcome(), sending=outgoing[marked:end])
                    marked = end
                    hand_over.release(marked)
                if not hand_over.wait_for(start, end):
                    if hand_over.stopped is None:
                        break  # a thread crashed: `finish` raises what it died of
                    # A failure to be tried again: what was handed over is recorded, what
                    # was marked `sending` and not handed over goes back to the queue.
                    self._record(hand_over.outcome(start, len(outgoing)))
                    raise Partial(hand_over.stopped.entry, hand_over.cause)
                after = max(marked, min(end + size * ahead, len(outgoing)))
                # What this group did, and the groups after it marked `sending`, at once.
                self._record(hand_over.outcome(start, end), sending=outgoing[marked:after])
                marked = after
                hand_over.release(marked)
                start = end
        finally:
            hand_over.finish(handing)

    def _pool(self, name: str, size: int) -> ThreadPoolExecutor | None:
        """The threads that hand a channel's messages over, `size` at once."""
        if size == 1:
            return None
        kept = self._pools.get(name)
        if kept is not None and kept[0] == size:
            return kept[1]
        if kept is not None:
            kept[1].shutdown(wait=False)
        pool = ThreadPoolExecutor(size, f"ariane-send-{name}")
        self._pools[name] = (size, pool)
        return pool

    # --- before the hand-over -------------------------------------------------------------

    def _prepare(
        self,
        conn: Connection,
        config: ChannelConfig,
        channel: Any,
        links: Links,
        ids: Sequence[int],
        wanted: Mapping[int, int],
        mark: bool,
    ) -> list[_Outgoing]:
        """The messages `ids` as they are now, ready to hand over, marked `sending` if
        `mark`; those to skip, or found interrupted on a channel that does not carry the
        send key, recorded so."""
        if not ids:
            return []
        now = self.clock()
        rows = store.lock(conn, ids)
        ordered = [rows[ident] for ident in sorted(rows, key=lambda i: wanted[i])]
        due = [row for row in ordered if row["status"] in ("queued", "sending")]
        known = _read_people(conn, config, self.segments.catalogue(conn), due)
        happened: list[DomainEvent] = []
        changes: list[dict[str, Any]] = []
        outgoing: list[_Outgoing] = []
        for row in due:
            if row["status"] == "sending" and not channel.carries_key:
                changes.append({"id": row["id"], "status": "unknown", "updated_at": now})
                happened.append(_told(MessageUnknown, row, now, reason="interrupted hand-over"))
                continue
            why, message = self._message(conn, config, known, links, row, now)
            if message is None:
                changes.append(
                    {"id": row["id"], "status": "skipped", "reason": why, "updated_at": now}
                )
                happened.append(_told(MessageSkipped, row, now, reason=why))
                continue
            outgoing.append(_Outgoing(dict(row), message, wanted[row["id"]]))
        # On the copies made above: a transaction tried again reads the rows afresh.
        if mark:
            changes.extend(_sending(outgoing, now))
        store.update_each(conn, changes)
        bus_store.record(conn, happened)
        return outgoing

    def _message(
        self,
        conn: Connection,
        config: ChannelConfig,
        known: _Known,
        links: Links,
        row: Mapping[str, Any],
        now: datetime,
    ) -> tuple[str, Message | None]:
        """The message to hand over, or why there is none."""
        person = row["profile_id"]
        state = known.states.get(person)
        if state is None:
            return "the person is gone", None
        if row["category"] == "marketing":
            decision = latest_decisions(known.histories[person]).get(config.purpose)
            status = "unknown" if decision is None else decision.status_at(now)
            if status != "granted":
                return f"consent {config.purpose} is {status}", None
        identifiers = known.identifiers.get(person, {})
        address = _address(
            config, person, state.trait_values(), identifiers, known.subscriptions.get(person)
        )
        if address is None:
            return f"no address at {'.'.join(config.address)}", None
        template = self.channels.template(row["template"])
        if template is None:
            return f"no template {row['template']}", None
        unsubscribe = (
            links.unsubscribe(person, config.purpose, row["send_key"])
            if row["category"] == "marketing"
            else None
        )
        journey = {
            "id": row["journey_id"],
            "step": row["step"],
            "variants": row["context"].get("variants", {}),
        }
        # A template that does not show it renders the same without it.
        loyalty = _loyalty(conn, person, now) if _shows_loyalty(template) else None
        context = _context(
            known.catalogue,
            state,
            identifiers,
            loyalty,
            now,
            row["context"].get("entry"),
            journey,
            unsubscribe,
        )
        try:
            rendered = template.render(context)
        except TemplateError as error:
            return f"template {row['template']}: {error.message}", None
        html = rendered.html
        if html is not None:
            html = links.tracked(html, person, row["send_key"])
        return "", Message(
            send_key=row["send_key"],
            profile_id=person,
            address=address,
            subject=rendered.subject,
            text=rendered.text,
            html=html,
            data=rendered.data,
            category=row["category"],
            unsubscribe_url=unsubscribe,
            journey=row["journey_id"],
            step=row["step"],
        )

    # --- on demand ------------------------------------------------------------------------

    def preview(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A template rendered for one profile (`POST /api/templates/preview`)."""
        node = keyed(body, "body", ("template", "profile_id", "event"))
        raw = node.get("template")
        if isinstance(raw, str):
            template = self.channels.template(raw)
            if template is None:
                raise NotFound(f"no template {raw!r}", field="template")
        elif isinstance(raw, Mapping):
            template = parse_message_template({"name": "preview", **raw}, "template")
        else:
            raise DomainError("needs a template's name or definition", field="template")
        event = node.get("event")
        if event is not None and not isinstance(event, Mapping):
            raise DomainError("needs an object with name and properties", field="event")
        person = node.get("profile_id")
        if not isinstance(person, str):
            raise DomainError("needs a profile id", field="profile_id")
        now = self.clock()
        with self.db.read() as conn:
            found = profile_store.resolve_profile_id(conn, person)
            state = profile_store.read_profiles(conn, [found]).get(found) if found else None
            if state is None:
                raise NotFound(f"no profile {person!r}", field="profile_id")
            identifiers = profile_store.identifiers_of(conn, [state.id], per_type=5)[state.id]
            catalogue = self.segments.catalogue(conn)
            loyalty = _loyalty(conn, state.id, now)
            context = _context(catalogue, state, identifiers, loyalty, now, event, None, None)
        rendered = template.render(context)
        return {
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
            "data": rendered.data,
        }

    def send_test(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One message to the address `to`, now, outside any journey (`ariane channels
        test`): the template's, rendered with no profile, or the `subject` and `text`."""
        node = keyed(body, "body", ("to", "template", "subject", "text"))
        config = self.channels.config(name)
        if config is None:
            raise NotFound(f"no channel {name!r}", field="channel")
        to = node.get("to")
        if not isinstance(to, str) or not to.strip():
            raise DomainError("needs the address to send to", field="to")
        if "template" in node:
            template = self.channels.template(str(node["template"]))
            if template is None:
                raise NotFound(f"no template {node['template']!r}", field="template")
            context = template_context(
                profile_id="test", traits={}, identifiers=[], computed={}, segments=[],
                loyalty=None, event=None,
            )  # fmt: skip
            rendered = template.render(context)
            subject, text, html, data = (
                rendered.subject,
                rendered.text,
                rendered.html,
                rendered.data,
            )
        else:
            subject = str(node.get("subject", "A test from Ariane"))
            text = str(node.get("text", "This is a test message from Ariane."))
            html, data = None, {}
        key = f"test.{name}.{secrets.token_hex(8)}"
        message = Message(
            send_key=key, profile_id="test", address=to, subject=subject, text=text, html=html,
            data=data, category="transactional",
        )  # fmt: skip
        try:
            sent = self.channels.built(config).send(message)
        except Exception as error:
            raise ProviderFailed(f"{name} did not take it: {error}", field="to") from None
        return {
            "sent": True,
            "send_key": key,
            "provider_id": sent.provider_id,
            "detail": sent.detail,
        }

    def inbound(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A message a person sent back on a channel (an SMS reply, relayed by your
        provider's webhook): a stop word withdraws the channel's consent purpose for the
        person the sender's address names."""
        node = keyed(body, "body", ("from", "text"))
        config = self.channels.config(name)
        if config is None:
            raise NotFound(f"no channel {name!r}", field="channel")
        sender, text = node.get("from"), node.get("text")
        if not isinstance(sender, str) or not sender.strip():
            raise DomainError("needs the sender's address", field="from")
        if not isinstance(text, str):
            raise DomainError("needs the text the person sent", field="text")
        if text.strip().upper() not in STOP_WORDS:
            return {"stop": False, "unsubscribed": []}
        where = config.address
        id_type = where[1] if len(where) == 2 else where[0]
        if where[0] not in ("traits", "identifiers", "user_id") or len(where) > 2:
            raise DomainError(
                f"channel {name} addresses people by {'.'.join(where)}, which Ariane does not"
                " look people up by",
                field="channel",
            )
        try:
            person = self.profiles.lookup(id_type, sender)
        except NotFound:
            return {"stop": True, "unsubscribed": []}
        self.profiles.set_consent(person, config.purpose, "withdrawn", source=f"inbound:{name}")
        now = self.clock()
        told = Unsubscribed(
            event_id=f"unsubscribed-{name}-{person}-{now.isoformat()}",
            profile_id=person,
            at=now,
            properties={"purpose": config.purpose, "channel": name, "via": "reply"},
        )
        self.db.write(lambda conn: bus_store.record_once(conn, [told]))
        return {"stop": True, "unsubscribed": [person]}

    # --- after it -------------------------------------------------------------------------

    def _record(self, done: _Outcome, *, sending: Sequence[_Outgoing] = ()) -> None:
        """Record what became of the messages handed over, and mark those about to be."""
        if not (done or sending):
            return
        now = self.clock()
        changes = _sending(sending, now)
        happened: list[DomainEvent] = []
        for item, sent in done.handed:
            changes.append(
                {
                    "id": item.row["id"],
                    "status": "sent",
                    "sent_at": now,
                    "provider_id": sent.provider_id,
                    "reason": None,
                    "updated_at": now,
                }
            )
            happened.append(_told(MessageSent, item.row, now, address_kind=None))
        failed = [*done.refused, *((i, _why(e)) for i, e in done.failing if not _again(i, e))]
        for item, why in failed:
            changes.append(
                {"id": item.row["id"], "status": "failed", "reason": why, "updated_at": now}
            )
            happened.append(_told(MessageFailed, item.row, now, reason=why))
        for item, error in done.failing:
            if _again(item, error):
                # Not handed over: it goes back in the queue, and the bus tries again.
                later = isinstance(error, RetryLater)
                changes.append(
                    {
                        "id": item.row["id"],
                        "status": "queued",
                        "reason": _why(error),
                        "attempts": item.row["attempts"] - (1 if later else 0),
                        "updated_at": now,
                    }
                )
        for item in done.back:
            changes.append(
                {
                    "id": item.row["id"],
                    "status": "queued",
                    "attempts": item.row["attempts"] - 1,
                    "updated_at": now,
                }
            )
        gone = [endpoint for _, sent in done.handed for endpoint in sent.gone]

        def work(conn: Connection) -> None:
            store.update_each(conn, changes)
            store.forget_subscriptions(conn, gone)
            bus_store.record(conn, happened)

        self.db.write(work)


@dataclass(slots=True)
class _Outcome:
    """What became of a group of messages handed over."""

    handed: list[tuple[_Outgoing, Sent]] = field(default_factory=list)
    # Refused by the provider for good (`GiveUp`), with its answer.
    refused: list[tuple[_Outgoing, str]] = field(default_factory=list)
    # Failed otherwise: back in the queue, or failed for good after MAX_ATTEMPTS.
    failing: list[tuple[_Outgoing, Exception]] = field(default_factory=list)
    # Not handed over: a failure to be tried again stopped the group before them.
    back: list[_Outgoing] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.handed or self.refused or self.failing or self.back)


class _HandOver:
    """A batch's messages handed over in order by as many threads as there are senders,
    each with a channel of its own, at most `rate` a second in all. A thread takes only
    messages released to it (marked `sending`), and goes on to the next released group
    without waiting for the others' last messages. A failure to be tried again (the
    provider asks to wait, or erred) stops the hand-over of the messages not begun."""

    def __init__(self, outgoing: Sequence[_Outgoing], pacer: Pacer, rate: float | None) -> None:
        self.outgoing = list(outgoing)
        self.pacer = pacer
        self.rate = rate
        # What became of each message: Sent, an exception, or None (not yet).
        self.results: list[Sent | Exception | None] = [None] * len(outgoing)
        self.taken = 0
        self.released = 0
        self.ended = 0
        # The first message, in order, whose failure stopped the hand-over, and why.
        self.stopped: _Outgoing | None = None
        self.cause: Exception = RuntimeError("not stopped")
        # A thread died of something other than an Exception (the process is ending).
        self.crashed = False
        self.closed = False
        # With no threads, the channel each message is handed to, here, in `wait_for`.
        self.inline: Any = None
        self._changed = threading.Condition()

    def extend(self, more: Sequence[_Outgoing]) -> None:
        """More messages, made ready while the first are handed over."""
        with self._changed:
            self.outgoing.extend(more)
            self.results.extend([None] * len(more))

    def release(self, upto: int) -> None:
        """Let the threads take the messages up to `upto`."""
        with self._changed:
            self.released = max(self.released, upto)
            self._changed.notify_all()

    def start(
        self, senders: Sequence[Any], pool: ThreadPoolExecutor | None, most: int
    ) -> list[Future[None]]:
        """The threads that hand the messages over, no more than `most`; with no pool,
        none: each message is handed over here, when `wait_for` waits for it."""
        if pool is None or len(senders) == 1:
            self.inline = senders[0]
            return []
        return [pool.submit(self._send_with, sender) for sender in senders[:most]]

    def wait_for(self, start: int, end: int) -> bool:
        """Wait until the messages from `start` to `end` were handed over, or until a
        failure stopped the hand-over and every message begun ended (False)."""
        if self.inline is not None:
            self._send_with(self.inline)
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self.crashed
                    or (self.stopped is not None and self.ended == self.taken)
                    or all(result is not None for result in self.results[start:end])
                )
            )
            return self.stopped is None and not self.crashed

    def outcome(self, start: int, end: int) -> _Outcome:
        """What became of the messages from `start` to `end`; those not begun go back."""
        done = _Outcome()
        with self._changed:
            for index in range(start, end):
                item, result = self.outgoing[index], self.results[index]
                if isinstance(result, Sent):
                    done.handed.append((item, result))
                elif isinstance(result, GiveUp):
                    done.refused.append((item, str(result)))
                elif isinstance(result, Exception):
                    done.failing.append((item, result))
                elif index < self.released:
                    done.back.append(item)
        return done

    def finish(self, handing: Sequence[Future[None]]) -> None:
        """Let the threads go, and wait for them."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()
        wait(handing)
        for future in handing:
            # A crash of the process, or a bug: raised as if there were no threads.
            future.result()

    def _take(self, waiting: bool) -> int | None:
        with self._changed:
            if waiting:
                self._changed.wait_for(
                    lambda: self.closed or self.stopped is not None or self.taken < self.released
                )
            if self.stopped is not None or self.crashed or self.taken >= self.released:
                return None
            self.taken += 1
            return self.taken - 1

    def _send_with(self, channel: Any) -> None:
        try:
            self._hand_with(channel)
        except BaseException:
            # The process is ending (or a bug): nobody waits for this thread's messages.
            with self._changed:
                self.crashed = True
                self._changed.notify_all()
            raise

    def _hand_with(self, channel: Any) -> None:
        waiting = self.inline is None
        while (index := self._take(waiting)) is not None:
            item = self.outgoing[index]
            self.pacer.wait(self.rate)
            result: Sent | Exception
            try:
                result = channel.send(item.message)
            except Exception as error:
                result = error
            with self._changed:
                self.results[index] = result
                self.ended += 1
                if (
                    isinstance(result, Exception)
                    and not isinstance(result, GiveUp)
                    and _again(item, result)
                    and (self.stopped is None or item.entry < self.stopped.entry)
                ):
                    self.stopped, self.cause = item, result
                self._changed.notify_all()


def _grouping(carries_key: bool, concurrency: int) -> tuple[int, int]:
    """How many messages are marked `sending` together, and how many such groups at a
    time. On a channel that carries the send key and hands several over at once, the
    next group is handed over while the last is recorded; on one that hands one at a
    time nothing overlaps, and one group of twice the size costs half the transactions;
    on one that does not carry the key, only those being handed over are marked."""
    if not carries_key:
        return concurrency, 1
    if concurrency == 1:
        return 2 * SEND_GROUP, 1
    return concurrency * -(-SEND_GROUP // concurrency), 2


def _again(item: _Outgoing, error: Exception) -> bool:
    """Whether a message whose hand-over failed with `error` is tried again."""
    return isinstance(error, RetryLater) or item.row["attempts"] < MAX_ATTEMPTS


def _why(error: Exception) -> str:
    return str(error) or type(error).__name__


@dataclass(frozen=True, slots=True)
class _Known:
    """What the messages of a batch need of their people, read for all at once."""

    catalogue: Catalogue
    states: Mapping[str, ProfileState]
    histories: Mapping[str, list[ConsentDecision]]
    identifiers: Mapping[str, dict[str, list[str]]]
    subscriptions: Mapping[str, list[dict[str, Any]]]


def _read_people(
    conn: Connection, config: ChannelConfig, catalogue: Catalogue, rows: Sequence[Mapping[str, Any]]
) -> _Known:
    people = {row["profile_id"] for row in rows}
    asked = {row["profile_id"] for row in rows if row["category"] == "marketing"}
    pushed = config.address == ("push_subscriptions",)
    return _Known(
        catalogue=catalogue,
        states=profile_store.read_profiles(conn, people),
        histories=consent_store.histories(conn, asked) if asked else {},
        identifiers=profile_store.identifiers_of(conn, people, per_type=5),
        subscriptions=store.subscriptions_of(conn, people) if pushed else {},
    )


def _address(
    config: ChannelConfig,
    person: str,
    traits: Mapping[str, Any],
    identifiers: Mapping[str, list[str]],
    subscriptions: Sequence[Mapping[str, Any]] | None,
) -> str | None:
    where = config.address
    if where == ("profile_id",):
        return person
    if where == ("user_id",):
        return identifiers.get("user_id", [None])[0]
    if where == ("push_subscriptions",):
        return orjson.dumps(subscriptions).decode() if subscriptions else None
    if where[0] == "identifiers":
        return identifiers.get(where[1], [None])[0]
    value = lookup(traits, where[1:])
    return str(value) if isinstance(value, str | int) and str(value).strip() else None


def _context(
    catalogue: Catalogue,
    state: ProfileState,
    identifiers: Mapping[str, list[str]],
    loyalty: Mapping[str, Any] | None,
    now: datetime,
    event: Mapping[str, Any] | None,
    journey: Mapping[str, Any] | None,
    unsubscribe: str | None,
) -> dict[str, Any]:
    """What a template sees of the person, the event and the journey."""
    members = state.computed.get("segments", {})
    return template_context(
        profile_id=state.id,
        traits=state.trait_values(),
        identifiers=[(kind, value) for kind, values in identifiers.items() for value in values],
        computed=catalogue.computed_values(state, now),
        segments=[s.name for s in catalogue.by_id.values() if s.id in members],
        loyalty=loyalty,
        event=event,
        journey=journey,
        links={"unsubscribe": unsubscribe or ""},
    )


def _shows_loyalty(template: MessageTemplate) -> bool:
    """Whether the template may show the person's loyalty, which takes a few statements
    a person to read. A template names every variable it uses in its source, as it is
    spelled: `compile_template` refuses any other."""
    parts = (*template.parts.values(), *template.data.values())
    return any("loyalty" in part.source for part in parts)


def _loyalty(conn: Connection, profile_id: str, now: datetime) -> dict[str, Any] | None:
    """What templates see of the person's loyalty: the points they can spend and their
    tier in their programme (the first by name, if they are a member of several), and
    every programme's under `programmes`."""
    found: dict[str, dict[str, Any]] = {}
    for programme in loyalty_store.programmes_of(conn, profile_id):
        held = balance(loyalty_store.lots(conn, programme, profile_id), now)
        tier = loyalty_store.standing(conn, programme, profile_id).tier
        found[programme] = {"balance": held.available, "tier": tier}
    if not found:
        return None
    return {**next(iter(found.values())), "programmes": found}


def _told(
    kind: type[MessageEvent], row: Mapping[str, Any], now: datetime, **more: Any
) -> MessageEvent:
    properties = {
        "journey": row["journey_id"],
        "step": row["step"],
        "channel": row["channel"],
        "template": row["template"],
        "category": row["category"],
        "send_key": row["send_key"],
        **{name: value for name, value in more.items() if value is not None},
    }
    return kind(
        event_id=f"{kind.track_name.lower().replace(' ', '-')}-{row['send_key']}",
        profile_id=row["profile_id"],
        at=now,
        properties=properties,
    )


# --- signed links -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Links:
    """The links Ariane serves in messages, signed so that nobody can make one for
    someone else: one-click unsubscribe (RFC 8058), the open pixel, clicks."""

    base_url: str
    secret: bytes

    def sign(self, *parts: str) -> str:
        body = "\x1f".join(parts).encode()
        mac = hmac.new(self.secret, body, hashlib.sha256).digest()[:16]
        return _b64(body) + "." + _b64(mac)

    def verify(self, token: str) -> list[str] | None:
        body_text, _, mac_text = token.partition(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            return None
        expected = hmac.new(self.secret, body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            return None
        return body.decode().split("\x1f")

    def unsubscribe(self, profile_id: str, purpose: str, send_key: str) -> str:
        token = self.sign("unsubscribe", profile_id, purpose, send_key)
        return f"{self.base_url}/v1/unsubscribe?t={token}"

    def tracked(self, html: str, profile_id: str, send_key: str) -> str:
        """The HTML with each link to elsewhere made a signed redirect through Ariane
        (`Message Clicked`), and a pixel at the end (`Message Opened`)."""

        def through_ariane(found: re.Match[str]) -> str:
            quote, url = found.group(1), unescape(found.group(2))
            if url.startswith(self.base_url):
                return found.group(0)
            token = self.sign("click", profile_id, send_key, url)
            return f"href={quote}{self.base_url}/v1/messages/click?t={token}{quote}"

        linked = _LINK.sub(through_ariane, html)
        token = self.sign("open", profile_id, send_key)
        pixel = (
            f'<img src="{self.base_url}/v1/messages/open?t={token}" width="1" height="1" '
            'alt="" style="display:none">'
        )
        at = linked.lower().rfind("</body>")
        return linked + pixel if at < 0 else linked[:at] + pixel + linked[at:]


# A link in HTML to a web page: href="http(s)://...", in double or single quotes.
_LINK = re.compile(r"""href=(["'])(https?://[^"']+)\1""", re.IGNORECASE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as error:
        raise ValueError("not base64") from error


def _for_channel(name: str, entry: Entry) -> bool:
    return isinstance(entry.event, MessageQueued) and entry.event.channel == name


def _sending(group: Sequence[_Outgoing], now: datetime) -> list[dict[str, Any]]:
    """Mark the group `sending`, one more attempt each."""
    for item in group:
        item.row["attempts"] += 1
    return [
        {
            "id": item.row["id"],
            "status": "sending",
            "attempts": item.row["attempts"],
            "updated_at": now,
        }
        for item in group
    ]
