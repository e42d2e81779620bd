"""/api/sources and /api/quarantine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ariane.bootstrap import Container
from ariane.storage import events as event_store
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access
from ariane.web.api.checks import CheckedRoute

router = APIRouter(prefix="/api", tags=["operations"], route_class=CheckedRoute)


class SourceBody(BaseModel):
    name: str


@router.get("/sources")
def list_sources(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    return {"sources": app.access.list_sources()}


@router.post(
    "/sources",
    status_code=201,
    responses={409: {"description": "A source of that name exists already."}},
)
def create_source(
    body: SourceBody, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    source, write_key = app.access.create_source(body.name)
    return {"id": source.id, "name": source.name, "write_key": write_key}


@router.get("/quarantine")
def list_quarantine(
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(
        None, ge=1, le=2**63 - 1, description="page: the smallest id of the last page"
    ),
    source_id: str | None = None,
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    with app.db.read() as conn:
        rows = event_store.list_quarantine(
            conn, limit=limit, after_id=before_id, source_id=source_id
        )
    return {"events": rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}
