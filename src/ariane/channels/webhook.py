"""Webhook channel: each message POSTed as JSON to the receiver, which sends it on.

Headers: the channel's own (secrets), `Idempotency-Key` and `X-Ariane-Send-Key` (the send
key: a receiver drops a message handed twice by it), `X-Ariane-Timestamp`, and with a
secret `X-Ariane-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>`.
The answer is read as a destination's: 2xx taken; 408, 425, 429, 5xx and no answer tried
later, honouring Retry-After; any other 4xx fails the message with the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import urllib3

from ariane.channels import Context, Message, Sent, register
from ariane.destinations.http import USER_AGENT, read_status
from ariane.domain.destinations import signature
from ariane.services.bus import RetryLater


class WebhookChannel:
    carries_key = True

    def __init__(self, settings: Mapping[str, Any], context: Context) -> None:
        url = settings.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("webhook channel: the setting 'url' must be an http(s) URL")
        headers = settings.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ValueError("webhook channel: the setting 'headers' must map names to values")
        timeout = settings.get("timeout", 10.0)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError("webhook channel: the setting 'timeout' must be seconds above 0")
        self.url = url
        self.host = urlsplit(url).hostname or url
        self.headers = {str(name): str(value) for name, value in headers.items()}
        self.secret: str | None = settings.get("secret")
        self.clock = context.clock
        # urllib3 rather than httpx, which the destinations use: a message a request, its
        # client costs half the CPU (measured against a local receiver), and a campaign
        # is that many requests. One connection kept open; no retry or redirect of its
        # own: what an answer means is the bus's to decide.
        self.pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=1,
            block=False,
            timeout=urllib3.Timeout(total=float(timeout)),
            retries=False,
            headers={"User-Agent": USER_AGENT},
        )

    def send(self, message: Message) -> Sent:
        now = self.clock()
        body = orjson.dumps(
            {
                "send_key": message.send_key,
                "profile_id": message.profile_id,
                "address": message.address,
                "category": message.category,
                "subject": message.subject,
                "text": message.text,
                "html": message.html,
                "data": dict(message.data),
                "journey": message.journey,
                "step": message.step,
                "sent_at": now.isoformat(),
            }
        )
        timestamp = int(now.timestamp())
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": message.send_key,
            "X-Ariane-Send-Key": message.send_key,
            "X-Ariane-Timestamp": str(timestamp),
        }
        if self.secret:
            headers["X-Ariane-Signature"] = signature(self.secret, timestamp, body)
        try:
            answer = self.pool.request("POST", self.url, body=body, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as error:
            raise RetryLater(f"no answer from {self.host}: {error}") from None
        said = answer.data.decode(errors="replace")
        detail = read_status(
            answer.status, said, answer.headers.get("retry-after"), self.host, self.clock()
        )
        return Sent(detail=detail)

    def close(self) -> None:
        self.pool.clear()


register(
    "webhook",
    WebhookChannel,
    settings=("timeout",),
    required=("url",),
    secrets=("secret",),
    secret_values=("headers",),
    default_address="user_id",
)
