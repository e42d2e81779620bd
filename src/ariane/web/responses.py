"""JSON responses rendered with orjson, and the error body every route shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse


class FastJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS, default=str)


class ErrorBody(BaseModel):
    """The body of every error answer, as the OpenAPI document shows it."""

    code: str = Field(description="What went wrong, for a program: `not_found`, `invalid`...")
    message: str = Field(description="What went wrong and what to do about it, for a person.")
    field: str | None = Field(None, description="The part of the request at fault, if one is.")


def error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> FastJSON:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return FastJSON(body, status_code=status, headers=headers)
