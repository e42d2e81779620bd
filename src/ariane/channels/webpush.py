"""Web push: a notification to each of the person's browser subscriptions, encrypted for
it (aes128gcm) and signed with the channel's VAPID key.

The address is the person's subscriptions, a JSON array of
`{"endpoint": ..., "keys": {"p256dh": ..., "auth": ...}}`. Each is pushed to once per
call. A subscription its push service says is gone (404, 410) is reported in
`Sent.gone`, to be forgotten. When one push service asks to be tried later (429, 5xx, no
answer), the whole message is: the retry pushes again to the subscriptions that took it
the first time. Push services drop no duplicate (hence `carries_key = False`), but the
`Topic` header, derived from the send key, lets one replace a copy still queued for an
offline device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from py_vapid import Vapid  # type: ignore[import-untyped]
from pywebpush import WebPushException, webpush  # type: ignore[import-untyped]

from ariane.channels import Context, Message, Sent, register
from ariane.domain.destinations import retry_after
from ariane.services.bus import GiveUp, RetryLater

_GONE = frozenset({404, 410})
_LATER = frozenset({408, 425, 429})


class WebPushChannel:
    carries_key = False

    def __init__(self, settings: Mapping[str, Any], context: Context) -> None:
        self.vapid = _vapid(settings.get("vapid_private_key"))
        subject = settings.get("subject")
        if not isinstance(subject, str) or not subject.startswith(("mailto:", "https://")):
            raise ValueError(
                "webpush channel: the setting 'subject' must be a mailto: or https:// URL "
                "at which push services can reach you"
            )
        self.subject = subject
        self.ttl = int(settings.get("ttl", 86400))
        self.timeout = float(settings.get("timeout", 10.0))
        self.clock = context.clock
        self.session = requests.Session()

    def send(self, message: Message) -> Sent:
        subscriptions = _subscriptions(message.address)
        payload = orjson.dumps(
            {
                "title": message.subject,
                "body": message.text,
                **message.data,
                "send_key": message.send_key,
            }
        ).decode()
        # At most 32 characters of the URL-safe alphabet (RFC 8030).
        topic = hashlib.sha256(message.send_key.encode()).hexdigest()[:32]
        delivered = 0
        gone: list[str] = []
        refused: list[str] = []
        later: RetryLater | None = None
        for subscription in subscriptions:
            endpoint = subscription["endpoint"]
            try:
                webpush(
                    subscription,
                    payload,
                    vapid_private_key=self.vapid,
                    vapid_claims={"sub": self.subject},
                    ttl=self.ttl,
                    timeout=self.timeout,
                    headers={"Topic": topic},
                    requests_session=self.session,
                )
                delivered += 1
            except WebPushException as error:
                answer = error.response
                if answer is None:
                    refused.append(f"{_host(endpoint)}: {error.message}")
                    continue
                status, said = answer.status_code, answer.text[:300]
                if status in _GONE:
                    gone.append(endpoint)
                elif status in _LATER or status >= 500:
                    wait = retry_after(answer.headers.get("retry-after"), self.clock())
                    later = RetryLater(f"{status} from {_host(endpoint)}: {said}", wait)
                else:
                    refused.append(f"{status} from {_host(endpoint)}: {said}")
            except requests.RequestException as error:
                later = RetryLater(f"no answer from {_host(endpoint)}: {error}")
        if later is not None:
            raise later
        if not delivered:
            raise GiveUp("; ".join(refused) if refused else "no live subscription")
        detail = f"pushed to {delivered} of {len(subscriptions)} subscriptions"
        if refused:
            detail += "; refused: " + "; ".join(refused)
        return Sent(detail=detail, gone=tuple(gone))

    def close(self) -> None:
        self.session.close()


def _vapid(key: Any) -> Any:
    """The VAPID key from PEM text, or the base64url of its raw or DER bytes."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError("webpush channel: the setting 'vapid_private_key' is required")
    try:
        if key.lstrip().startswith("-----BEGIN"):
            return Vapid.from_pem(key.strip().encode())
        return Vapid.from_string(key.strip())
    except Exception:
        raise ValueError(
            "webpush channel: vapid_private_key is not a P-256 private key "
            "(PEM, or the base64url of its raw 32 bytes or of its DER)"
        ) from None


def _subscriptions(address: str) -> list[dict[str, Any]]:
    try:
        found = orjson.loads(address)
    except orjson.JSONDecodeError:
        found = None
    if not isinstance(found, list):
        raise GiveUp("the address is not a JSON array of push subscriptions")
    subscriptions = [
        s
        for s in found
        if isinstance(s, dict)
        and isinstance(s.get("endpoint"), str)
        and isinstance(s.get("keys"), dict)
        and {"p256dh", "auth"} <= s["keys"].keys()
    ]
    if not subscriptions:
        raise GiveUp("no live subscription")
    return subscriptions


def _host(endpoint: str) -> str:
    # The endpoint's path is the subscription's capability: never put it in a message.
    return urlsplit(endpoint).netloc or "the push service"


register(
    "webpush",
    WebPushChannel,
    settings=("ttl", "timeout"),
    required=("vapid_private_key", "subject"),
    secrets=("vapid_private_key",),
    default_address="push_subscriptions",
)
