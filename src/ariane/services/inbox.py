"""The in-app inbox: what the inbox channel delivers, read by the app of the person it
was sent to, and only by them.

An app opens a person's inbox with their user id and a token the publisher's backend
signs for that user (identity verification, as Intercom and Customer.io do): the hex
HMAC-SHA256 of the user id under `inbox_secret`. The write key, public in every browser,
never reads anyone's messages.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ariane.channels import Message
from ariane.domain.definitions import keyed
from ariane.domain.errors import DomainError, Forbidden, NotFound
from ariane.storage import messages as store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Database

MAX_PAGE = 100


def user_token(secret: str, user_id: str) -> str:
    """The token a publisher's backend gives its app for `user_id`."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


class Inbox:
    def __init__(self, db: Database, clock: Callable[[], datetime], secret: str | None) -> None:
        self.db = db
        self.clock = clock
        self.secret = secret
        # Woken when a message is put in any inbox: the server-sent event streams look.
        self.changed = threading.Condition()
        self.generation = 0

    def deliver(self, message: Message) -> str:
        """The inbox channel's hand-over: stored once per send key."""
        row = {
            "send_key": message.send_key,
            "profile_id": message.profile_id,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "data": dict(message.data),
            "created_at": self.clock(),
        }
        made = self.db.write(lambda conn: store.put_in_inbox(conn, row))
        with self.changed:
            self.generation += 1
            self.changed.notify_all()
        return str(made)

    def profiles_of(self, user_id: str, token: str) -> list[str]:
        """The profiles holding `user_id`, once its token is checked."""
        if not self.secret:
            raise Forbidden("the in-app inbox is closed: set ARIANE_INBOX_SECRET", field=None)
        if not user_id or not hmac.compare_digest(user_token(self.secret, user_id), token):
            raise Forbidden("the user token does not match the user id", field="token")
        with self.db.read() as conn:
            owners = profile_store.find_owners(conn, [("user_id", user_id)])
        return sorted({profile for _, _, profile in owners})

    def messages(
        self, profiles: list[str], *, after: int = 0, limit: int = 50, dismissed: bool = False
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_PAGE:
            raise DomainError(f"limit must be from 1 to {MAX_PAGE}", field="limit")
        if not profiles:
            return []
        with self.db.read() as conn:
            rows = store.inbox_of(conn, profiles, after=after, limit=limit, dismissed=dismissed)
        return [_shown(row) for row in rows]

    def mark(self, profiles: list[str], ident: int, what: str) -> dict[str, Any]:
        column = {"read": "read_at", "dismissed": "dismissed_at"}[what]
        now = self.clock()
        found = self.db.write(lambda conn: store.mark_inbox(conn, profiles, ident, column, now))
        if found is None:
            raise NotFound(f"no message {ident} in this inbox", field="id")
        return _shown(found)

    def subscribe(self, profiles: list[str], body: Any) -> dict[str, Any]:
        """Keep a browser's or device's web push subscription for the person
        (`{"endpoint", "keys": {"p256dh", "auth"}, "device"}`, as the browser's
        `PushSubscription.toJSON()` gives it)."""
        if not profiles:
            raise NotFound("no profile holds this user id yet", field="user_id")
        node = keyed(body, "body", ("endpoint", "keys", "device", "expirationTime"))
        endpoint, keys, device = node.get("endpoint"), node.get("keys"), node.get("device")
        if not isinstance(endpoint, str) or not _push_service(endpoint):
            raise DomainError(
                "needs the push service's https:// endpoint (http:// only on this machine)",
                field="endpoint",
            )
        if len(endpoint) > 2000:
            raise DomainError("is longer than 2,000 characters", field="endpoint")
        if not (
            isinstance(keys, dict)
            and all(
                isinstance(keys.get(k), str) and 0 < len(keys[k]) <= 200 for k in ("p256dh", "auth")
            )
        ):
            raise DomainError("needs p256dh and auth, as the browser gives them", field="keys")
        if device is not None and (not isinstance(device, str) or len(device) > 200):
            raise DomainError("needs a name of at most 200 characters", field="device")
        row = {
            "profile_id": profiles[0],
            "endpoint": endpoint,
            "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]},
            "device": device,
            "created_at": self.clock(),
        }
        self.db.write(lambda conn: store.subscribe(conn, row))
        return {"subscribed": True, "endpoint": endpoint}

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until a message is put in some inbox after `seen`, or `timeout` seconds."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != seen, timeout)
            return self.generation


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "subject": row["subject"],
        "text": row["text"],
        "html": row["html"],
        "data": row["data"],
        "created_at": row["created_at"],
        "read": row["read_at"] is not None,
        "read_at": row["read_at"],
        "dismissed": row["dismissed_at"] is not None,
    }


def _push_service(endpoint: str) -> bool:
    """Push services speak https; plain http only for one on this machine (a local push
    service in development)."""
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
