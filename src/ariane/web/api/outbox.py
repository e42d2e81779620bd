"""/api/outbox: what the bus's handlers gave up on, to see and to replay."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from ariane.bootstrap import Container
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access
from ariane.web.api.checks import CheckedRoute

router = APIRouter(prefix="/api/outbox", tags=["operations"], route_class=CheckedRoute)


class ReplayBody(BaseModel):
    ids: list[int] | None = Field(
        None, max_length=10_000, description="the parked entries to replay; absent: all"
    )
    handler: str | None = Field(None, max_length=200, description="only this handler's")


@router.get("/parked")
def list_parked(
    handler: str | None = Query(None, max_length=200),
    after_id: int = Query(0, ge=0, le=2**63 - 1, description="page: the last id of the last page"),
    limit: int = Query(100, ge=1, le=1000),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """Entries a handler gave up on, oldest first, each with its error and tries."""
    found = app.bus.parked(handler=handler, after=after_id, limit=limit)
    return {
        "parked": found,
        "next_after_id": found[-1]["id"] if len(found) == limit else None,
    }


@router.post("/parked/replay")
def replay_parked(
    body: ReplayBody, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    """Give parked entries to their handlers again: those handled leave the list, the
    others stay with their new error."""
    done = app.bus.replay(body.ids, body.handler)
    return {"replayed": done.replayed, "failed": done.failed}
