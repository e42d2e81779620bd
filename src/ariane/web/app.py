"""The FastAPI application factory."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from ariane.bootstrap import Container
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.web.api import operations, profiles
from ariane.web.metrics import Metrics
from ariane.web.responses import FastJSON, error
from ariane.web.tracking import TrackingAPI

_STATUS = {NotFound: 404, Conflict: 409}


def create_app(container: Container) -> FastAPI:
    app = FastAPI(
        title="Ariane",
        version="0.1.0",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        default_response_class=FastJSON,
    )
    app.state.container = container
    metrics = Metrics()
    app.state.metrics = metrics

    app.router.routes.extend(TrackingAPI(container, metrics).routes())
    app.include_router(profiles.router)
    app.include_router(operations.router)

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> Response:
        return error(_STATUS.get(type(exc), 422), exc.code, exc.message, field=exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        detail: Any = exc.detail
        if isinstance(detail, dict):
            return FastJSON(detail, status_code=exc.status_code, headers=exc.headers)
        return error(exc.status_code, "error", str(detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return error(422, "invalid", f"{where}: {first['msg']}", field=where)

    @app.get("/health", tags=["operations"])
    def health() -> Any:
        with container.db.read() as conn:
            conn.execute(sa.text("SELECT 1"))
        return {"status": "ok", "database": container.db.dialect.name}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
