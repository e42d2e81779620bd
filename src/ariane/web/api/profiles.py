"""/api/profiles: the 360° view, lookups, timeline, consents, export and erasure."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ariane.bootstrap import Container
from ariane.domain.errors import DomainError
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


# The parameters of the profile list other than the trait filters (`trait.NAME`).
_LIST_PARAMETERS = frozenset({"segment", "q", "limit", "cursor"})
_TRAIT_PREFIX = "trait."


@router.get("")
def list_profiles(
    request: Request,
    segment: str | None = Query(None, description="a segment's id or name: its members now"),
    q: str | None = Query(
        None,
        description="the start of an identifier (as stored), or of the name or email trait"
        " (in any case)",
    ),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """Live profiles in id order, one page at a time, that meet every filter given:
    `segment`, `q`, and `trait.NAME=value` for any trait (`trait.plan=trial`,
    `trait.address.city=Paris`; `trait.age=42` finds 42 and "42")."""
    traits: dict[str, str] = {}
    given: set[str] = set()
    for key, value in request.query_params.multi_items():
        if key in given:
            raise DomainError(f"{key} is given twice; give it once", field=key)
        given.add(key)
        if key.startswith(_TRAIT_PREFIX):
            traits[key.removeprefix(_TRAIT_PREFIX)] = value
        elif key not in _LIST_PARAMETERS:
            raise DomainError(
                f"unknown parameter {key!r}: filter with segment, q and trait.NAME, page with"
                " limit and cursor",
                field=key,
            )
    return app.profiles.search(segment=segment, traits=traits, q=q, limit=limit, cursor=cursor)


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
