"""What every /api request must be before a route reads it.

A careless client sends what no database holds, or not the same way: a NUL character
(PostgreSQL refuses it in text, SQLite stores it), a lone surrogate (`\\ud800`, not text
at all), a whole number beyond 64 bits, NaN or Infinity (which JSON does not have), a
body nested hundreds of levels deep (Python's JSON parser runs out of stack near a
thousand, and orjson writes at most 254). Each is refused here, once for the whole admin
API, with 422 naming the field, rather than by each route or by the database with a 500:
in path parameters, query parameters (names too) and every value of a JSON body (keys
too).

Every /api router is built with `route_class=CheckedRoute`; a test walks the routes to
make sure none forgets.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from ariane.web.api.auth import write_access
from ariane.web.responses import ErrorBody

# Objects and lists in one another: more than any definition holds (a condition nested as
# deep as conditions go, 32 levels, is about 70), far from what the parsers allow.
MAX_DEPTH = 100
_TOO_DEEP = (
    f"is nested deeper than {MAX_DEPTH} levels of objects and lists, more than anything"
    " Ariane reads: flatten it"
)
_LARGEST = 2**63 - 1


def _invalid(field: str, fault: str) -> HTTPException:
    # An HTTPException, not a DomainError: FastAPI answers 400 for any other exception
    # raised while it reads the body. A NUL in the field's own name is written out.
    shown = field.replace("\0", "\\u0000")
    detail = {"code": "invalid", "message": f"{shown} {fault}", "field": shown}
    return HTTPException(422, detail=detail)


def _text_fault(text: str) -> str | None:
    if "\0" in text:
        return "holds a NUL character (\\u0000), which Ariane does not store: remove it"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as error:
            return (
                f"holds a lone surrogate (\\u{ord(text[error.start]):04x}), which is not a"
                " character: send text as valid UTF-8"
            )
    return None


def _number_fault(number: int | float) -> str | None:
    if isinstance(number, int):
        if -_LARGEST - 1 <= number <= _LARGEST:
            return None
        return f"is a whole number beyond 64 bits (more than {_LARGEST:,} in size)"
    if math.isfinite(number):
        return None
    return "is NaN or infinite, which JSON does not have: send a number"


def _value_fault(value: Any) -> str | None:
    """What makes a JSON value other than an object or a list unfit to store, if anything."""
    if isinstance(value, str):
        return _text_fault(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_fault(value)
    return None


def _check_text(text: str, field: str) -> None:
    fault = _text_fault(text)
    if fault is not None:
        raise _invalid(field, fault)


def _check_document(document: Any) -> None:
    """Every value of a JSON document, keys included; fields are named as definitions
    name them (`condition.all[1].value`), from the top of the body."""
    fault = _value_fault(document)
    if fault is not None:
        raise _invalid("body", fault)
    # Depth first, without recursion; a field's name is made only for a faulty one.
    pending: list[tuple[Any, tuple[str | int, ...]]] = (
        [(document, ())] if isinstance(document, dict | list) else []
    )
    while pending:
        container, trail = pending.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(key, str) and (fault := _text_fault(key)) is not None:
                raise _invalid(_field((*trail, key)), fault)
            if isinstance(item, dict | list):
                if len(trail) + 2 > MAX_DEPTH:
                    raise _invalid(_field((*trail, key)), _TOO_DEEP)
                pending.append((item, (*trail, key)))
            elif (fault := _value_fault(item)) is not None:
                raise _invalid(_field((*trail, key)), fault)


def _field(trail: tuple[str | int, ...]) -> str:
    field = ""
    for part in trail:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else part
    return field or "body"


class _CheckedRequest(Request):
    async def json(self) -> Any:
        try:
            document = await super().json()
        except RecursionError:
            raise _invalid("body", _TOO_DEEP) from None
        except UnicodeDecodeError as error:
            raise _invalid(
                "body", f"is not valid UTF-8 at byte {error.start}: send JSON encoded in UTF-8"
            ) from None
        _check_document(document)
        return document


# What any /api route may answer besides its own errors.
_ANY_ROUTE: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token, or one Ariane does not know."},
    422: {"description": "The request breaks the schema or the checks; `field` names where."},
}
_ADMIN_ROUTE: dict[int | str, dict[str, Any]] = {
    403: {"description": "An analyst token, where this needs an admin token."},
}
# Answered by `web.limits.BoundedAdminBodies` before the route reads the body.
_BODY_ROUTE: dict[int | str, dict[str, Any]] = {
    408: {"description": "The body did not arrive in time."},
    413: {"description": "The body is over max_admin_body_bytes."},
}


def _needs_admin(endpoint: Callable[..., Any]) -> bool:
    parameters = inspect.signature(endpoint).parameters.values()
    return any(getattr(p.default, "dependency", None) is write_access for p in parameters)


class CheckedRoute(APIRoute):
    """A route of the admin API: its request is checked before the route reads it, and
    every error it may answer is in the OpenAPI document with the error body."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        errors = dict(_ANY_ROUTE)
        if _needs_admin(endpoint):
            errors.update(_ADMIN_ROUTE)
        if {"POST", "PUT", "PATCH"} & set(options.get("methods") or ()):
            errors.update(_BODY_ROUTE)
        errors.update(options.get("responses") or {})
        # An answer that is not an error (a file's media types) is left as declared.
        options["responses"] = {
            status: {"model": ErrorBody, **answer} if str(status)[0] in "45" else answer
            for status, answer in errors.items()
        }
        super().__init__(path, endpoint, **options)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def checked(request: Request) -> Response:
            for name, value in request.path_params.items():
                _check_text(str(value), name)
            for name, value in request.query_params.multi_items():
                _check_text(name, name)
                _check_text(value, name)
            # The body is read, and checked, when the route's parameters are.
            return await handle(_CheckedRequest(request.scope, request.receive))

        return checked
