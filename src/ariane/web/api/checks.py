"""What every /api request must be before a route reads it.

A careless client sends text no database holds the same way: a NUL character, which
PostgreSQL refuses in text (a 500) and SQLite stores. It is refused here, once for the
whole admin API, in path parameters, query parameters (names too) and every string of a
JSON body (keys too), with 422 naming the field, rather than by each route.

Every /api router is built with `route_class=CheckedRoute`; a test walks the routes to
make sure none forgets.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute


def _invalid(field: str, fault: str) -> HTTPException:
    # An HTTPException, not a DomainError: FastAPI answers 400 for any other exception
    # raised while it reads the body. A NUL in the field's own name is written out.
    shown = field.replace("\0", "\\u0000")
    detail = {"code": "invalid", "message": f"{shown} {fault}", "field": shown}
    return HTTPException(422, detail=detail)


def _fault(text: str) -> str | None:
    """What makes a text unfit to store, if anything."""
    if "\0" in text:
        return "holds a NUL character (\\u0000), which Ariane does not store: remove it"
    return None


def _check_text(text: str, field: str) -> None:
    fault = _fault(text)
    if fault is not None:
        raise _invalid(field, fault)


def _check_document(document: Any) -> None:
    """Every string of a JSON document, keys included; fields are named as definitions
    name them (`condition.all[1].value`), from the top of the body."""
    if isinstance(document, str):
        _check_text(document, "body")
    # Depth first, without recursion; a field's name is made only for a faulty one.
    pending: list[tuple[Any, tuple[str | int, ...]]] = (
        [(document, ())] if isinstance(document, dict | list) else []
    )
    while pending:
        container, trail = pending.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(key, str) and (fault := _fault(key)) is not None:
                raise _invalid(_field((*trail, key)), fault)
            if isinstance(item, str):
                if (fault := _fault(item)) is not None:
                    raise _invalid(_field((*trail, key)), fault)
            elif isinstance(item, dict | list):
                pending.append((item, (*trail, key)))


def _field(trail: tuple[str | int, ...]) -> str:
    field = ""
    for part in trail:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else part
    return field or "body"


class _CheckedRequest(Request):
    async def json(self) -> Any:
        document = await super().json()
        _check_document(document)
        return document


class CheckedRoute(APIRoute):
    """A route of the admin API: its request is checked before the route reads it."""

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
