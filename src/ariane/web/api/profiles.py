"""/api/profiles: the 360° view, lookups, timeline, consents, export and erasure."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ariane.bootstrap import Container
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access

router = APIRouter(prefix="/api/profiles", tags=["profiles"])


class ConsentBody(BaseModel):
    status: Literal["granted", "denied", "withdrawn"]
    expires_at: datetime | None = None
    source: str | None = None


@router.get("/lookup")
def lookup(
    type: str = Query(description="identifier type: email, user_id, phone, ..."),
    value: str = Query(),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    return app.profiles.view(app.profiles.lookup(type, value))


@router.get("/{profile_id}")
def show(
    profile_id: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    return app.profiles.view(profile_id)


@router.get("/{profile_id}/events")
def events(
    profile_id: str,
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = None,
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    return app.profiles.events(profile_id, limit=limit, cursor=cursor)


@router.get("/{profile_id}/consents")
def consent_history(
    profile_id: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    return {"history": app.profiles.consent_history(profile_id)}


@router.put("/{profile_id}/consents/{purpose}")
def set_consent(
    profile_id: str,
    purpose: str,
    body: ConsentBody,
    app: Container = Depends(container),
    token: Token = Depends(write_access),
) -> Any:
    return app.profiles.set_consent(
        profile_id,
        purpose,
        body.status,
        source=body.source or f"api:{token.name}",
        expires_at=body.expires_at,
    )


@router.get("/{profile_id}/export")
def export(
    profile_id: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    return app.privacy.export(profile_id)


@router.delete("/{profile_id}")
def erase(
    profile_id: str, app: Container = Depends(container), token: Token = Depends(write_access)
) -> Any:
    return app.privacy.erase(profile_id, requested_by=f"token:{token.id}")
