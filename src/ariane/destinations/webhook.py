"""Webhook destinations: each message POSTed on its own, as Segment-spec JSON, signed.

Headers: the destination's own, `Idempotency-Key` and `X-Ariane-Delivery` (the stable
delivery id: a receiver drops a duplicate by it), `X-Ariane-Timestamp`, and with a
secret `X-Ariane-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from ariane.destinations import Outgoing, register
from ariane.destinations.http import HTTPSender
from ariane.domain.destinations import Destination, signature
from ariane.services.bus import Partial


class WebhookSender(HTTPSender):
    def send(self, destination: Destination, messages: Sequence[Outgoing]) -> None:
        url = destination.settings["url"]
        secret = destination.settings.get("secret")
        for done, outgoing in enumerate(messages):
            body = orjson.dumps(outgoing.message)
            timestamp = int(self.clock().timestamp())
            headers = {
                **destination.settings.get("headers", {}),
                "Content-Type": "application/json",
                "Idempotency-Key": outgoing.delivery_id,
                "X-Ariane-Delivery": outgoing.delivery_id,
                "X-Ariane-Timestamp": str(timestamp),
            }
            if secret:
                headers["X-Ariane-Signature"] = signature(secret, timestamp, body)
            try:
                self.post(destination, url, body, headers)
            except Exception as error:
                raise Partial(done, error) from None


register("webhook", WebhookSender)
