"""Bearer tokens with roles: analysts read, admins read and change."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ariane.bootstrap import Container
from ariane.storage.access import Token

_bearer = HTTPBearer(auto_error=False, description="A token from `ariane tokens create`.")


def container(request: Request) -> Container:
    built: Container = request.app.state.container
    return built


def require(role: str) -> Callable[..., Coroutine[Any, Any, Token]]:
    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Token:
        if credentials is None:
            raise HTTPException(
                401,
                detail={"code": "unauthorized", "message": "send Authorization: Bearer TOKEN"},
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = container(request).access.token_for_secret(credentials.credentials)
        if token is None:
            raise HTTPException(
                401,
                detail={"code": "unauthorized", "message": "unknown or revoked token"},
                headers={"WWW-Authenticate": "Bearer"},
            )
        if role == "admin" and token.role != "admin":
            raise HTTPException(
                403,
                detail={
                    "code": "forbidden",
                    "message": f"this needs an admin token; yours is {token.role}",
                },
            )
        return token

    return check


read_access = require("analyst")
write_access = require("admin")
