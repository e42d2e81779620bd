"""A bound on the bodies the admin API reads.

FastAPI reads a body whole, whatever its size, before a route sees it: one request of
tens of megabytes would take seconds of parsing and gigabytes of memory. Bodies under
/api are read here first, refused with 413 as soon as they pass `limit` bytes, and with
408 when they do not arrive in time. (The tracking API bounds its own bodies as they
stream in; see `web.tracking`.)
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ariane.web.responses import error

ADMIN_PREFIX = "/api/"
BODY_DEADLINE_SECONDS = 30.0


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BoundedAdminBodies:
    def __init__(
        self, app: ASGIApp, *, limit: int, deadline: float = BODY_DEADLINE_SECONDS
    ) -> None:
        self.app = app
        self.limit = limit
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.limit:
                raise self._too_large()
            body = await asyncio.wait_for(self._read(receive), self.deadline)
        except _Refused as refused:
            # What is left of the body is not read: the connection goes with it.
            answer = error(
                refused.status, refused.code, refused.message, headers={"Connection": "close"}
            )
            await answer(scope, receive, send)
            return
        except TimeoutError:
            answer = error(
                408,
                "timeout",
                f"the body did not arrive within {self.deadline:g} s; send it at once",
                headers={"Connection": "close"},
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise self._too_large()
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    def _too_large(self) -> _Refused:
        return _Refused(
            413,
            "too_large",
            f"the request body is over {self.limit} bytes (max_admin_body_bytes);"
            " send less at once",
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then whatever the connection says next (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
