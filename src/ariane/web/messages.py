"""What people reach from their messages: the one-click unsubscribe link (RFC 8058), and
the in-app inbox their app reads with a token the publisher's backend signed for them."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ariane.bootstrap import Container
from ariane.domain.errors import Forbidden
from ariane.domain.events import MessageClicked, MessageEvent, MessageOpened, Unsubscribed
from ariane.storage import bus as bus_store
from ariane.web.api.auth import container
from ariane.web.api.journeys import LARGEST_ID

# Served to apps and mail clients beside the tracking API, and like it not in the admin
# API's OpenAPI description (`/api/openapi.json`).
router = APIRouter(prefix="/v1", tags=["messages"], include_in_schema=False)

_LINK: dict[int | str, dict[str, Any]] = {403: {"description": "a link Ariane did not sign"}}
_INBOX: dict[int | str, dict[str, Any]] = {
    403: {"description": "no user token, one that does not match, or the inbox closed"},
    404: {"description": "no such message in this person's inbox"},
    422: {"description": "a parameter cannot be used; `field` names it"},
}

_DONE = """<!doctype html><html lang="en"><meta charset="utf-8">
<title>Unsubscribed</title><body><p>You will no longer receive these messages.</p></body></html>"""
_ASK = """<!doctype html><html lang="en"><meta charset="utf-8">
<title>Unsubscribe</title><body><form method="post"><p>Stop receiving these messages?</p>
<button type="submit">Unsubscribe</button></form></body></html>"""


def _unsubscribe(app: Container, token: str) -> None:
    parts = app.messaging.links().verify(token)
    if parts is None or len(parts) != 4 or parts[0] != "unsubscribe":
        raise Forbidden("this unsubscribe link is not one Ariane signed", field="t")
    _, profile_id, purpose, send_key = parts
    app.profiles.set_consent(profile_id, purpose, "withdrawn", source="unsubscribe")
    told = Unsubscribed(
        event_id=f"unsubscribed-{send_key}",
        profile_id=profile_id,
        at=app.clock(),
        properties={"purpose": purpose, "send_key": send_key, "via": "link"},
    )
    app.db.write(lambda conn: bus_store.record_once(conn, [told]))


@router.get("/unsubscribe", response_class=HTMLResponse)
def ask_to_unsubscribe(t: str = Query(description="the signed token of the link")) -> Any:
    """The page the link opens: a button that posts the one-click form. Opening a link
    withdraws nothing: mail scanners open links."""
    del t
    return HTMLResponse(_ASK)


@router.post("/unsubscribe", response_class=HTMLResponse, responses=_LINK)
async def unsubscribe(
    t: str = Query(description="the signed token of the link"),
    app: Container = Depends(container),
) -> Any:
    """One click (RFC 8058: `List-Unsubscribe=One-Click`, or the page's button): the
    channel's consent purpose is withdrawn for the person."""
    await run_in_threadpool(_unsubscribe, app, t)
    return HTMLResponse(_DONE)


# Seconds of silence after which a server-sent event stream says it is alive.
KEEP_ALIVE = 15.0
# A transparent 1x1 GIF.
_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _tell(
    app: Container, kind: type[MessageEvent], event_id: str, profile_id: str, **more: Any
) -> None:
    told = kind(event_id=event_id, profile_id=profile_id, at=app.clock(), properties=more)
    app.db.write(lambda conn: bus_store.record_once(conn, [told]))


@router.get("/messages/open", responses=_LINK)
def opened(
    t: str = Query(description="the signed token of the pixel"), app: Container = Depends(container)
) -> Any:
    """The pixel at the end of an HTML message: its first fetch puts `Message Opened` on
    the person's timeline. Mail clients that fetch images ahead (Apple Mail's privacy
    protection) count as opens: read opens as an upper bound."""
    parts = app.messaging.links().verify(t)
    if parts is None or len(parts) != 3 or parts[0] != "open":
        raise Forbidden("this pixel is not one Ariane signed", field="t")
    _, profile_id, send_key = parts
    _tell(app, MessageOpened, f"message-opened-{send_key}", profile_id, send_key=send_key)
    return Response(_PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


@router.get("/messages/click", responses=_LINK)
def clicked(
    t: str = Query(description="the signed token of the link"), app: Container = Depends(container)
) -> Any:
    """A link of an HTML message: `Message Clicked` on the person's timeline (once per
    link and message), then on to the page."""
    parts = app.messaging.links().verify(t)
    if parts is None or len(parts) != 4 or parts[0] != "click":
        raise Forbidden("this link is not one Ariane signed", field="t")
    _, profile_id, send_key, url = parts
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    _tell(
        app, MessageClicked, f"message-clicked-{send_key}-{digest}", profile_id,
        send_key=send_key, url=url,
    )  # fmt: skip
    return RedirectResponse(url, status_code=302)


def _profiles(app: Container, user_id: str | None, token: str | None) -> list[str]:
    if not user_id or not token:
        raise Forbidden("needs X-Ariane-User and X-Ariane-User-Token headers", field="token")
    return app.inbox.profiles_of(user_id, token)


@router.get("/inbox", responses=_INBOX)
def read_inbox(
    request: Request,
    after: int = Query(0, ge=0, le=LARGEST_ID),
    limit: int = Query(50, ge=1, le=100),
    dismissed: bool = False,
    x_ariane_user: str | None = Header(None),
    x_ariane_user_token: str | None = Header(None),
    app: Container = Depends(container),
) -> Any:
    """The person's inbox, oldest first after `after`."""
    del request
    profiles = _profiles(app, x_ariane_user, x_ariane_user_token)
    return {"messages": app.inbox.messages(profiles, after=after, limit=limit, dismissed=dismissed)}


@router.get("/inbox/stream", responses=_INBOX)
async def stream_inbox(
    request: Request,
    after: int = Query(0, ge=0, le=LARGEST_ID),
    seconds: float = Query(300, gt=0, le=3600, description="how long to keep the stream open"),
    x_ariane_user: str | None = Header(None),
    x_ariane_user_token: str | None = Header(None),
    last_event_id: str | None = Header(None),
    app: Container = Depends(container),
) -> Any:
    """Server-sent events: each new message of the person's inbox as it arrives (`event:
    message`, `id:` its id, `data:` the message), after `after` or the `Last-Event-ID`
    the browser sends when it reconnects; a comment every 15 s keeps proxies from closing
    it. The stream ends after `seconds`; `EventSource` reconnects by itself."""
    profiles = await run_in_threadpool(_profiles, app, x_ariane_user, x_ariane_user_token)
    if last_event_id and last_event_id.isdigit():
        after = max(after, min(int(last_event_id), LARGEST_ID))

    async def events() -> AsyncIterator[bytes]:
        seen = after
        end = time.monotonic() + seconds
        quiet_since = time.monotonic()
        generation = app.inbox.generation
        while time.monotonic() < end and not await request.is_disconnected():
            found = await run_in_threadpool(app.inbox.messages, profiles, after=seen, limit=100)
            for message in found:
                seen = message["id"]
                data = orjson.dumps(message).decode()
                yield f"id: {seen}\nevent: message\ndata: {data}\n\n".encode()
            if found:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= KEEP_ALIVE:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            # Woken at once by a delivery in this process; other processes' within a second.
            wait = min(1.0, max(0.0, end - time.monotonic()))
            generation = await run_in_threadpool(app.inbox.wait, generation, wait)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/inbox/{message}/{what}", responses=_INBOX)
def mark_message(
    message: int = Path(ge=1, le=LARGEST_ID),
    what: Literal["read", "dismiss"] = Path(description="read, or dismiss: it leaves the inbox"),
    x_ariane_user: str | None = Header(None),
    x_ariane_user_token: str | None = Header(None),
    app: Container = Depends(container),
) -> Any:
    """Mark one of the person's messages read, or dismiss it."""
    profiles = _profiles(app, x_ariane_user, x_ariane_user_token)
    return app.inbox.mark(profiles, message, "read" if what == "read" else "dismissed")


@router.post("/push/subscriptions", responses=_INBOX)
def subscribe_to_push(
    body: dict[str, Any] = Body(
        examples=[
            {"endpoint": "https://push.example/abc", "keys": {"p256dh": "...", "auth": "..."}}
        ]
    ),
    x_ariane_user: str | None = Header(None),
    x_ariane_user_token: str | None = Header(None),
    app: Container = Depends(container),
) -> Any:
    """Keep this browser's web push subscription for the person."""
    profiles = _profiles(app, x_ariane_user, x_ariane_user_token)
    return app.inbox.subscribe(profiles, body)
