"""/api/channels, /api/templates, /api/journeys: how Ariane reaches people, what it says,
and the journeys that decide when (`docs/journeys.md`, `docs/channels.md`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response

from ariane.bootstrap import Container
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access
from ariane.web.api.checks import CheckedRoute

router = APIRouter(prefix="/api", tags=["journeys"], route_class=CheckedRoute)

# Ids are 64-bit: larger ones name nothing, and are refused before the database sees them.
LARGEST_ID = 2**63 - 1

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such channel, template, journey or enrollment"},
    422: {"description": "the definition cannot be used; `field` is the faulty path"},
}
_CHANNEL = {
    "type": "email",
    "purpose": "marketing_email",
    "address": "traits.email",
    "settings": {"host": "smtp.example.com", "port": 587, "from": "Shop <news@shop.example>"},
}
_TEMPLATE = {"subject": "Hello {{ traits.first_name | default: 'there' }}", "text": "..."}
_JOURNEY = {
    "entry": {"event": "Cart Abandoned", "key": "properties.cartId"},
    "reentry": "always",
    "steps": [
        {
            "id": "wait-order",
            "wait": {"event": "Order Completed", "keyed": True, "timeout": "PT1H"},
            "on_event": "exit",
        },
        {"send": {"channel": "email", "template": "cart-reminder"}},
    ],
}


# --- channels ---------------------------------------------------------------------------


@router.get("/channels")
def list_channels(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    """Every channel, secrets masked."""
    return {"channels": app.channels.list_channels(), "rules": app.channels.policies_shown()}


@router.post("/channels", responses=_ERRORS)
def apply_channels(
    document: dict[str, Any] = Body(examples=[{"channels": [{"name": "email", **_CHANNEL}]}]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or update the channels, templates and sending rules of a document, as
    `ariane channels apply` does: all are checked before any is saved."""
    return app.channels.apply(document)


@router.get("/channels/{name}", responses=_ERRORS)
def get_channel(
    name: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    return app.channels.get_channel(name)


@router.put("/channels/{name}", responses=_ERRORS)
def put_channel(
    name: str,
    definition: dict[str, Any] = Body(examples=[_CHANNEL]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or replace the channel. A secret sent back masked keeps its value."""
    return app.channels.put_channel(name, definition)


@router.delete("/channels/{name}", status_code=204, responses=_ERRORS)
def delete_channel(
    name: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Response:
    app.channels.delete_channel(name)
    return Response(status_code=204)


@router.post("/channels/{name}/test", responses=_ERRORS)
def test_channel(
    name: str,
    body: dict[str, Any] = Body(examples=[{"to": "ada@example.com", "template": "welcome"}]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Send one message now to the address `to`, outside any journey."""
    return app.messaging.send_test(name, body)


@router.post("/channels/{name}/inbound", responses=_ERRORS)
def inbound_message(
    name: str,
    body: dict[str, Any] = Body(examples=[{"from": "+33612345678", "text": "STOP"}]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """A reply a person sent on the channel, relayed by your provider's webhook: `STOP`
    (or `UNSUBSCRIBE`, `ARRET`, ...) withdraws the channel's consent purpose."""
    return app.messaging.inbound(name, body)


# --- templates --------------------------------------------------------------------------


@router.get("/templates")
def list_templates(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    return {"templates": app.channels.list_templates()}


@router.post("/templates/preview", responses=_ERRORS)
def preview_template(
    body: dict[str, Any] = Body(
        examples=[{"template": "cart-reminder", "profile_id": "...", "event": {"properties": {}}}]
    ),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """Render a template (by name, or a definition) for one profile, with an event."""
    return app.messaging.preview(body)


@router.get("/templates/{name}", responses=_ERRORS)
def get_template(
    name: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    return app.channels.get_template(name)


@router.put("/templates/{name}", responses=_ERRORS)
def put_template(
    name: str,
    definition: dict[str, Any] = Body(examples=[_TEMPLATE]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or replace the template; one that does not parse is refused with 422
    naming the part, line and column."""
    return app.channels.put_template(name, definition)


@router.delete("/templates/{name}", status_code=204, responses=_ERRORS)
def delete_template(
    name: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Response:
    app.channels.delete_template(name)
    return Response(status_code=204)


# --- journeys ---------------------------------------------------------------------------


@router.get("/journeys")
def list_journeys(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    return {"journeys": app.journeys.every()}


@router.post("/journeys", responses=_ERRORS)
def apply_journeys(
    document: dict[str, Any] = Body(
        examples=[{"journeys": [{"id": "abandoned-cart", **_JOURNEY}]}]
    ),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or update the journeys (and the channels and templates) of a document, as
    `ariane journeys apply` does: all are checked before any is saved."""
    return {"journeys": app.journeys.apply(document)}


@router.get("/journeys/{journey}", responses=_ERRORS)
def get_journey(
    journey: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    return app.journeys.get(journey)


@router.put("/journeys/{journey}", responses=_ERRORS)
def put_journey(
    journey: str,
    definition: dict[str, Any] = Body(examples=[_JOURNEY]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create the journey, or make a new version of it: people in it stay on theirs."""
    return app.journeys.put(journey, definition)


@router.delete("/journeys/{journey}", status_code=204, responses=_ERRORS)
def delete_journey(
    journey: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Response:
    app.journeys.delete(journey)
    return Response(status_code=204)


@router.get("/journeys/{journey}/steps", responses=_ERRORS)
def journey_steps(
    journey: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """Per step: how many wait there now, moved on, timed out, exited, were skipped and
    why; per arm, who entered and converted."""
    return app.journey_engine.report(journey)


@router.get("/journeys/{journey}/enrollments", responses=_ERRORS)
def journey_enrollments(
    journey: str,
    step: str | None = None,
    after: int = Query(0, ge=0, le=LARGEST_ID),
    limit: int = Query(100, ge=1, le=1000),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """Who is in the journey (at `step`), where, and until when or for what."""
    return {"enrollments": app.journey_engine.waiting(journey, step, after=after, limit=limit)}


@router.get("/journeys/{journey}/messages", responses=_ERRORS)
def journey_messages(
    journey: str,
    status: str | None = Query(
        None, description="queued, sending, sent, failed, skipped, unknown or held"
    ),
    after: int = Query(0, ge=0, le=LARGEST_ID),
    limit: int = Query(100, ge=1, le=1000),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The journey's messages, oldest first: what became of each, and why."""
    return {"messages": app.journey_engine.messages(journey, status, after=after, limit=limit)}


@router.post("/journeys/{journey}/enrollments", responses=_ERRORS)
def enter_journey(
    journey: str,
    body: dict[str, Any] = Body(examples=[{"profile_id": "...", "key": "", "properties": {}}]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Enter a person in a journey whose entry is `api: true` (or any other)."""
    return app.journey_engine.enter_checked(journey, body)


@router.post("/journeys/{journey}/migrate", responses=_ERRORS)
def migrate_journey(
    journey: str,
    body: dict[str, Any] = Body(examples=[{"from_version": 1}]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Move the people on `from_version` to the current version, each to the step of the
    same id (those whose step is gone are taken out)."""
    return app.journey_engine.migrate_checked(journey, body)


@router.post("/enrollments/{enrollment}/move-on", responses=_ERRORS)
def move_on(
    enrollment: int = Path(ge=1, le=LARGEST_ID),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Move a waiting or delayed person on now."""
    return app.journey_engine.move_on(enrollment)


@router.post("/enrollments/{enrollment}/take-out", responses=_ERRORS)
def take_out(
    enrollment: int = Path(ge=1, le=LARGEST_ID),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Take a person out of their journey."""
    return app.journey_engine.take_out(enrollment)
