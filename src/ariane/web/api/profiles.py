"""/api/profiles: the 360° view, lookups, timeline, consents, export and erasure."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from ariane.bootstrap import Container
from ariane.services.profiles import MAX_PAGE
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access

from ariane.web.api.checks import CheckedRoute
router = APIRouter(prefix="/api/profiles", tags=["profiles"], route_class=CheckedRoute)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such profile."}}


class ConsentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["granted", "denied", "withdrawn"]
    expires_at: datetime | None = Field(
        None, description="When a grant lapses (ISO-8601; UTC when no offset is given)."
    )
    source: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Where the person decided, e.g. preference_centre; default: the token.",
    )


@router.get("/lookup", responses=_NOT_FOUND)
def lookup(
    type: str = Query(description="identifier type: email, user_id, phone, anonymous_id, ..."),
    value: str = Query(description="the identifier, in any form that normalises to it"),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The 360° view of the profile holding an identifier."""
    return app.profiles.view(app.profiles.lookup(type, value))


@router.get("/{profile_id}", responses=_NOT_FOUND)
def show(
    profile_id: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """The 360° view; an id absorbed by a merge leads to the profile that absorbed it."""
    return app.profiles.view(profile_id)


@router.get("/{profile_id}/events", responses=_NOT_FOUND)
def events(
    profile_id: str,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The timeline, newest first, one page at a time."""
    return app.profiles.events(profile_id, limit=limit, cursor=cursor)


@router.get("/{profile_id}/consents", responses=_NOT_FOUND)
def consent_history(
    profile_id: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """The status in force per purpose, and every decision ever recorded."""
    return app.profiles.consent_history(profile_id)


@router.put("/{profile_id}/consents/{purpose}", responses=_NOT_FOUND)
def set_consent(
    profile_id: str,
    purpose: str,
    body: ConsentBody,
    app: Container = Depends(container),
    token: Token = Depends(write_access),
) -> Any:
    """Record a consent decision for one purpose; the history keeps every decision."""
    return app.profiles.set_consent(
        profile_id,
        purpose,
        body.status,
        source=body.source or f"api:{token.name}"[:200],
        expires_at=body.expires_at,
    )


@router.get("/{profile_id}/export", responses=_NOT_FOUND)
def export(
    profile_id: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    """Every piece of personal data held on the person (admin only)."""
    return app.privacy.export(profile_id)


@router.delete("/{profile_id}", responses=_NOT_FOUND)
def erase(
    profile_id: str, app: Container = Depends(container), token: Token = Depends(write_access)
) -> Any:
    """Erase the person; what remains is a receipt with counts and no personal data."""
    return app.privacy.erase(profile_id, requested_by=f"token:{token.id}")
