"""Bearer tokens with roles: analysts read, admins read and change.

Every /api route takes `read_access` or `write_access`; a test walks the routes to make
sure none forgets. Reads are GETs, and the POSTs that change nothing (a segment's
preview, a loyalty simulation), whose conditions do not fit in a query string.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ariane.bootstrap import Container
from ariane.storage.access import Token

_bearer = HTTPBearer(
    auto_error=False, description="A token from `ariane tokens create --role admin|analyst`."
)


async def container(request: Request) -> Container:
    """The application's services. A coroutine, though it waits for nothing: FastAPI
    hands a plain function to a worker thread and back, for every request."""
    return _built(request)


def _built(request: Request) -> Container:
    built: Container = request.app.state.container
    return built


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        401,
        detail={"code": "unauthorized", "message": message},
        headers={"WWW-Authenticate": "Bearer"},
    )


def require(role: str) -> Callable[..., Token]:
    # A plain function: FastAPI runs it in a worker thread, so the token lookup in the
    # database does not block the event loop.
    def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Token:
        if credentials is None:
            raise _unauthorized(
                "send Authorization: Bearer TOKEN; create one with `ariane tokens create`"
            )
        token = _built(request).access.token_for_secret(credentials.credentials)
        if token is None:
            raise _unauthorized("unknown token; create one with `ariane tokens create`")
        if role == "admin" and token.role != "admin":
            raise HTTPException(
                403,
                detail={
                    "code": "forbidden",
                    "message": f"this needs an admin token; token {token.name!r} is {token.role}",
                },
            )
        return token

    return check


read_access = require("analyst")
write_access = require("admin")
