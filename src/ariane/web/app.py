"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ariane.bootstrap import Container
from ariane.domain.errors import Conflict, DomainError, Forbidden, NotFound, ProviderFailed
from ariane.loops import running_loops
from ariane.web import messages as message_links
from ariane.web.api import (
    destinations,
    journeys,
    loyalty,
    operations,
    outbox,
    profiles,
    segments,
)
from ariane.web.cors import TrackingCORS
from ariane.web.limits import BoundedAdminBodies
from ariane.web.metrics import Metrics, RequestTimer
from ariane.web.responses import ErrorBody, FastJSON, error
from ariane.web.sdk_settings import router as sdk_settings_router
from ariane.web.tracking import TrackingAPI

# The collector's thresholds in a worker process (`gc.set_threshold`): a young collection
# every 50,000 allocations (Python's default is 700 up to 3.13), and, up to Python 3.13,
# a middle one every 20 of those.
GC_THRESHOLDS = (50_000, 20, 10)

log = logging.getLogger(__name__)

_STATUS = {NotFound: 404, Conflict: 409, Forbidden: 403, ProviderFailed: 502}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}
# Where a request parameter came from, as FastAPI reports it; the first part of `loc`.
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves, routers included; HEAD aside."""
    table: list[tuple[str, str]] = []
    for route in iter_route_contexts(app.routes):
        if route.path is not None:
            table.extend((m, route.path) for m in sorted(route.methods or ()) if m != "HEAD")
    return table


def create_app(container: Container, *, owns_container: bool = False) -> FastAPI:
    """The application over `container`; it closes the container on shutdown if it owns it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as running:
            if container.settings.run_loops:
                running.enter_context(running_loops(container))
            if owns_container:
                # A worker process's own app: what start-up built lives as long as the
                # process. Frozen out of the collector's sight, each full collection walks
                # only what requests allocate; before, full collections took a fifth of the
                # time of a batch with live segments (docs/benchmarks.md).
                gc.freeze()
                # A batch keeps tens of thousands of young containers alive while it is
                # worked out (the profiles' states, the rows): at Python's default of a
                # young collection every 700 allocations, each walked them again and again,
                # 0.8 to 2.7 s of a worker's time in a run with live segments on PostgreSQL
                # against 0.6 to 1.2 s without them (docs/benchmarks.md). Less often, each
                # finds most of them freed already.
                gc.set_threshold(*GC_THRESHOLDS)
            yield
        if owns_container:
            container.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Ariane",
        version="0.1.0",
        description="Tracking API (Segment spec) under /v1; admin API under /api.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        # Tokens are pasted into the docs page; there is no OAuth2 flow to redirect to.
        swagger_ui_oauth2_redirect_url=None,
        redoc_url=None,
        default_response_class=FastJSON,
    )
    app.state.container = container
    metrics = Metrics(
        transaction_retries=lambda: container.db.retries,
        destinations=container.destinations.metrics,
    )
    app.state.metrics = metrics
    app.add_middleware(RequestTimer, histogram=metrics.requests, routes=lambda: route_table(app))
    app.add_middleware(BoundedAdminBodies, limit=container.settings.max_admin_body_bytes)
    # Outermost: preflights are answered before anything else looks at them.
    app.add_middleware(TrackingCORS)

    app.state.tracking = TrackingAPI(container, metrics)
    app.router.routes.extend(app.state.tracking.routes())
    app.include_router(profiles.router)
    app.include_router(loyalty.router)
    app.include_router(operations.router)
    app.include_router(segments.router)
    app.include_router(destinations.router)
    app.include_router(journeys.router)
    app.include_router(message_links.router)
    app.include_router(outbox.router)
    app.include_router(sdk_settings_router)

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> Response:
        status = next((_STATUS[kind] for kind in type(exc).__mro__ if kind in _STATUS), 422)
        return error(status, exc.code, exc.message, field=exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        detail: Any = exc.detail
        if isinstance(detail, dict):
            return FastJSON(detail, status_code=exc.status_code, headers=exc.headers)
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error(exc.status_code, code, str(detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        where = loc[0] if loc and loc[0] in _LOCATIONS else None
        field = ".".join(loc[1:] if where else loc) or where or "body"
        place = f" (in the {where})" if where and field != where else ""
        return error(422, "invalid", f"{field}{place}: {first['msg']}", field=field)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        return error(500, "internal", "unexpected error; the server log has the details")

    @app.get(
        "/health",
        tags=["operations"],
        responses={503: {"model": ErrorBody, "description": "The database is unreachable."}},
    )
    def health() -> Any:
        """Whether the service can reach its database: 200 when it can, 503 when not."""
        failure = container.db.unreachable()
        if failure is not None:
            log.error("health check: database unreachable: %s", failure)
            return error(
                503,
                "database_unavailable",
                f"cannot reach the {container.db.dialect.name} database;"
                " check ARIANE_DATABASE_URL and that the database is up",
            )
        return {"status": "ok", "database": container.db.dialect.name}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
