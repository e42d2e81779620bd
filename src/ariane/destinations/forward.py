"""Segment-compatible forward: messages in batches to any Segment-spec `/v1/batch`
endpoint (another Ariane, RudderStack, Segment), with the receiving source's write key.

Each message keeps its `messageId`, which receivers dedupe on, and the request carries
the first message's delivery id as `Idempotency-Key`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import orjson

from ariane.destinations import Outgoing, register
from ariane.destinations.http import HTTPSender
from ariane.domain.clock import iso
from ariane.domain.destinations import DEFAULT_BATCH, Destination
from ariane.services.bus import Partial

# Segment refuses a batch over 500 KB.
MAX_BODY = 450_000


class ForwardSender(HTTPSender):
    def send(self, destination: Destination, messages: Sequence[Outgoing]) -> None:
        url = endpoint(destination.settings["url"])
        key = base64.b64encode(f"{destination.settings['write_key']}:".encode()).decode()
        size = destination.settings.get("batch_size", DEFAULT_BATCH)
        done = 0
        for batch in _batches(messages, size):
            body = orjson.dumps({"batch": [o.message for o in batch], "sentAt": iso(self.clock())})
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Basic {key}",
                "Idempotency-Key": batch[0].delivery_id,
            }
            try:
                self.post(destination, url, body, headers)
            except Exception as error:
                raise Partial(done, error) from None
            done += len(batch)


def endpoint(url: str) -> str:
    """A Segment-spec host, or its batch endpoint itself."""
    trimmed = url.rstrip("/")
    return trimmed if trimmed.endswith("/v1/batch") else f"{trimmed}/v1/batch"


def _batches(messages: Sequence[Outgoing], size: int) -> list[list[Outgoing]]:
    batches: list[list[Outgoing]] = []
    current: list[Outgoing] = []
    weight = 0
    for outgoing in messages:
        length = len(orjson.dumps(outgoing.message))
        if current and (len(current) >= size or weight + length > MAX_BODY):
            batches.append(current)
            current, weight = [], 0
        current.append(outgoing)
        weight += length
    if current:
        batches.append(current)
    return batches


register("segment", ForwardSender)
