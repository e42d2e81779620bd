"""/api/destinations: other tools that receive what Ariane knows (`domain.destinations`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Response

from ariane.bootstrap import Container
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access
from ariane.web.api.checks import CheckedRoute

router = APIRouter(prefix="/api", tags=["destinations"], route_class=CheckedRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such destination"},
    422: {"description": "the definition cannot be used; `field` is the faulty path"},
}
_EXAMPLE = {
    "type": "webhook",
    "receives": {
        "events": {"types": ["track"], "names": ["Order Completed"]},
        "audiences": [{"segment": "big-spenders", "changes": ["entered", "exited"]}],
    },
    "settings": {"url": "https://hooks.example.com/ariane", "secret": "s3cret", "rate_limit": 20},
}


@router.get("/destinations")
def list_destinations(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    """Every destination, secrets masked, with what its deliveries did."""
    return {"destinations": app.destinations.every()}


@router.post("/destinations", responses=_ERRORS)
def apply_destinations(
    document: dict[str, Any] = Body(examples=[{"destinations": [{"id": "crm", **_EXAMPLE}]}]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or update the destinations of `{"destinations": [...]}`, as
    `ariane destinations apply` does: all are checked before any is saved."""
    return {"destinations": app.destinations.apply(document)}


@router.get("/destinations/{destination}", responses=_ERRORS)
def get_destination(
    destination: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """The destination (secrets masked), delivered, failed, parked, lag and p99 latency."""
    return app.destinations.get(destination)


@router.put("/destinations/{destination}", responses=_ERRORS)
def put_destination(
    destination: str,
    definition: dict[str, Any] = Body(examples=[_EXAMPLE]),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Create or replace the destination. A secret sent back masked keeps its value."""
    return app.destinations.put(destination, definition)


@router.delete("/destinations/{destination}", status_code=204, responses=_ERRORS)
def delete_destination(
    destination: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Response:
    app.destinations.delete(destination)
    return Response(status_code=204)
