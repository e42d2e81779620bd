"""/api/segments and /api/computed-traits: definitions, members, history and previews.

Conditions and filters are free-form JSON on purpose: the domain parser checks them, so
that an error names the path of the faulty node (`condition.all[1].count.gte`).
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from ariane.bootstrap import Container
from ariane.domain.errors import Conflict, DomainError
from ariane.services.segment_exports import MEDIA_TYPES
from ariane.services.segment_members import MAX_PAGE
from ariane.storage.access import Token
from ariane.web.api.auth import container, read_access, write_access
from ariane.web.api.checks import CheckedRoute

router = APIRouter(prefix="/api", tags=["segments"], route_class=CheckedRoute)

_SEGMENT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No segment with that id or name."},
    409: {"description": "The name is taken, or a rename was asked for."},
    422: {"description": "The definition is invalid; `field` is the path of the faulty node."},
}
_TRAIT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No computed trait of that name."},
    409: {"description": "The name is taken, or segments still use the trait."},
    422: {"description": "The definition is invalid; `field` names the faulty key."},
}
_EXAMPLE_CONDITION = {
    "all": [
        {"trait": "plan", "op": "eq", "value": "trial"},
        {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"},
    ]
}


class SegmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1 to 200 characters; unique.", examples=["dormant_trial"])
    description: str = ""
    condition: dict[str, Any] = Field(
        description="A condition tree; see docs/segments.md.", examples=[_EXAMPLE_CONDITION]
    )


class PreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: dict[str, Any] = Field(examples=[_EXAMPLE_CONDITION])
    sample: int = Field(20, ge=0, le=100, description="How many member ids to return.")


class TraitDefinition(BaseModel):
    """The body of PUT, where the path names the trait."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(None, description="Optional here; if given, the name in the path.")
    description: str = ""
    kind: str = Field(
        description="count, sum, average, min, max, most_frequent, first, last, unique_list"
        " or unique_count.",
        examples=["count"],
    )
    event: str = Field(description="The name of the track event.", examples=["Order Completed"])
    where: list[Any] | None = Field(
        None,
        description="Property tests the event must pass: [{property, op, value}, ...].",
        examples=[[{"property": "currency", "op": "eq", "value": "EUR"}]],
    )
    property: str | None = Field(
        None, description="The property aggregated; every kind but count needs one."
    )
    within: str | None = Field(None, description="An ISO-8601 window, such as P30D.")
    from_: Literal["first_seen"] | None = Field(
        None,
        alias="from",
        description="first_seen: the window starts when the person was first seen.",
    )
    between: list[Any] | None = Field(
        None, description="[start, end], ISO-8601 times: a fixed date range."
    )

    def definition(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"name"})


class TraitBody(TraitDefinition):
    """The body of POST."""

    name: str = Field(description="1 to 200 characters; unique.", examples=["orders_30d"])


# --- segments ---------------------------------------------------------------------------------


@router.get("/segments")
def list_segments(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    """Every segment, by name, with its member count."""
    return {"segments": app.segments.list_segments()}


@router.post("/segments", status_code=201, responses=_SEGMENT_ERRORS)
def create_segment(
    body: SegmentBody, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    """Create a segment; its members are found from history before the answer."""
    return app.segments.save_segment(body.name, body.description, body.condition)


@router.post("/segments/preview", responses=_SEGMENT_ERRORS)
def preview(
    body: PreviewBody, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """How many profiles a condition holds now, and a sample of them; nothing is saved
    (a read: an analyst may)."""
    return app.segments.preview(body.condition, body.sample)


@router.get("/segments/{segment}", responses=_SEGMENT_ERRORS)
def get_segment(
    segment: str, app: Container = Depends(container), _: Token = Depends(read_access)
) -> Any:
    """One segment, by id or name, with its member count."""
    return app.segments.get_segment(segment)


@router.put("/segments/{segment}", responses=_SEGMENT_ERRORS)
def replace_segment(
    segment: str,
    body: SegmentBody,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Replace a segment's description and condition; its members are found again."""
    return app.segments.save_segment(body.name, body.description, body.condition, key=segment)


@router.delete(
    "/segments/{segment}", status_code=204, response_class=Response, responses=_SEGMENT_ERRORS
)
def delete_segment(
    segment: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Response:
    """Delete a segment no other segment refers to; members leave without Audience events."""
    app.segments.delete_segment(segment)
    return Response(status_code=204)


@router.get("/segments/{segment}/members", responses=_SEGMENT_ERRORS)
def members(
    segment: str,
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """The current members, by profile id, one page at a time."""
    return app.segments.members(segment, limit=limit, cursor=cursor)


@router.get("/segments/{segment}/history", responses=_SEGMENT_ERRORS)
def history(
    segment: str,
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(None, description="next_cursor from the previous page"),
    app: Container = Depends(container),
    _: Token = Depends(read_access),
) -> Any:
    """Entries and exits, newest first, one page at a time."""
    return app.segments.history(segment, limit=limit, cursor=cursor)


_EXPORT_PARAMETERS = frozenset({"format", "identifier", "trait"})
_EXPORTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file, streamed.",
        "content": {media_type: {} for media_type in MEDIA_TYPES.values()},
    },
    404: {"description": "No segment with that id or name."},
    422: {"description": "An unknown identifier type, a bad trait name; `field` says which."},
}


@router.get("/segments/{segment}/export", response_class=StreamingResponse, responses=_EXPORTED)
def export_members(
    request: Request,
    segment: str,
    format: Literal["csv", "parquet"] = Query("csv", description="csv or parquet."),
    identifier: list[str] = Query(
        [], description="An identifier type: a column of the first value each member holds."
    ),
    trait: list[str] = Query([], description="A trait: a column; nested with dots, address.city."),
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> StreamingResponse:
    """The members with the identifiers and traits chosen, as a CSV or Parquet file read
    a page at a time (admin only: personal data)."""
    for key in request.query_params:
        if key not in _EXPORT_PARAMETERS:
            raise DomainError(
                f"unknown parameter {key!r}: choose columns with identifier and trait, and the"
                " file with format",
                field=key,
            )
    found = app.segment_exports.export(segment, identifiers=identifier, traits=trait)
    return StreamingResponse(
        found.chunks(format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": _attachment(found.filename(format))},
    )


def _attachment(filename: str) -> str:
    # Any name a segment may have, in the UTF-8 form of RFC 6266, beside a plain one for
    # the clients that read only that.
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", filename)
    if plain == filename:
        return f'attachment; filename="{plain}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


# --- computed traits ------------------------------------------------------------------------


def _save_trait(
    app: Container, name: str, definition: dict[str, Any], *, exists: bool
) -> dict[str, Any]:
    try:
        return app.segments.save_computed(name, definition, exists=exists)
    except DomainError as error:
        # The service names faults inside "definition"; this body holds them at its top.
        if error.field is not None and error.field.startswith("definition."):
            error.field = error.field.removeprefix("definition.")
        raise


@router.get("/computed-traits")
def list_traits(app: Container = Depends(container), _: Token = Depends(read_access)) -> Any:
    """Every computed trait, by name."""
    return {"computed_traits": app.segments.list_computed()}


@router.post("/computed-traits", status_code=201, responses=_TRAIT_ERRORS)
def create_trait(
    body: TraitBody, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Any:
    """Define a computed trait; every profile's value is computed from history."""
    return _save_trait(app, body.name, body.definition(), exists=False)


@router.put("/computed-traits/{name}", responses=_TRAIT_ERRORS)
def replace_trait(
    name: str,
    body: TraitDefinition,
    app: Container = Depends(container),
    _: Token = Depends(write_access),
) -> Any:
    """Replace a computed trait's definition; values and the segments using it follow."""
    if body.name is not None and body.name.strip() != name:
        raise Conflict(
            "renaming a computed trait is not supported: create the new one and delete the old",
            field="name",
        )
    return _save_trait(app, name, body.definition(), exists=True)


@router.delete(
    "/computed-traits/{name}", status_code=204, response_class=Response, responses=_TRAIT_ERRORS
)
def delete_trait(
    name: str, app: Container = Depends(container), _: Token = Depends(write_access)
) -> Response:
    """Delete a computed trait that no segment uses."""
    app.segments.delete_computed(name)
    return Response(status_code=204)
