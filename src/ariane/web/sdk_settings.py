"""What the browser SDKs load before they send: their settings, and analytics-next itself.

Segment's snippet loads analytics.js from a CDN, and analytics.js then reads the
source's settings at `{cdn}/v1/projects/{writeKey}/settings`; RudderStack's SDK reads its
source config at `{configUrl}/sourceConfig/?writeKey=`. Served here, they point the SDKs
at this Ariane, with no destination of their own and no telemetry sent to Segment or
RudderStack, so that a page talks to Ariane alone. An SDK that cannot read its settings
sends nothing, so an unknown write key is said plainly, in the browser's console.
"""

from __future__ import annotations

import gzip
import logging
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ariane.bootstrap import Container
from ariane.storage.access import Source
from ariane.web.api.auth import container
from ariane.web.responses import FastJSON, error
from ariane.web.tracking import RETRY_AFTER_SECONDS

# Segment's analytics-next 1.84.3 (MIT), as published; its README says where from.
ANALYTICS_NEXT = Path(__file__).parent / "static" / "analytics-next"
# What Segment's CDN serves as analytics.min.js.
STANDALONE = "standalone.js"
# The settings may change (a rotated key); the bundles' names change with their content.
SETTINGS_CACHE = "public, max-age=60"
STANDALONE_CACHE = "public, max-age=3600"
CHUNK_CACHE = "public, max-age=31536000, immutable"

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


def tracking_address(request: Request) -> tuple[str, str]:
    """The scheme, and the host and path of the tracking API, as the browser reached it.

    The scheme is the one uvicorn has set, from `X-Forwarded-Proto` only where the proxy
    is trusted; the host is the request's `Host`; the path keeps the root path Ariane is
    served under."""
    base = request.base_url
    return base.scheme, f"{base.netloc}{base.path.rstrip('/')}/v1"


def _source(app: Container, write_key: str, status: int) -> Source | Response:
    """The write key's source, or the answer that says why there is none."""
    try:
        source = app.access.source_for_key(write_key)
    except Exception as failure:
        # Answered here rather than by the app's handler, so that CORS covers it.
        if not app.db.is_unavailable(failure):
            log.exception("SDK settings: unexpected error", exc_info=failure)
            return error(500, "internal", "unexpected error; the server log has the details")
        log.warning("SDK settings: the database cannot be read now: %s", failure)
        return error(
            503,
            "unavailable",
            "the database cannot be read now; load the page again later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if source is None:
        return error(
            status,
            "unknown_write_key",
            "no source has this write key (a rotated key no longer works): put the source's"
            " current key in the page, or make one with `ariane sources rotate-key NAME`",
            field="writeKey",
        )
    return source


@router.get("/v1/projects/{write_key}/settings")
def segment_settings(
    write_key: str, request: Request, app: Container = Depends(container)
) -> Response:
    """analytics-next's settings: send to this Ariane, load nothing else, report nothing."""
    found = _source(app, write_key, 404)
    if isinstance(found, Response):
        return found
    protocol, api_host = tracking_address(request)
    settings: dict[str, Any] = {
        "integrations": {
            "Segment.io": {"apiKey": write_key, "apiHost": api_host, "protocol": protocol}
        },
        "plan": {},
        "enabledMiddleware": {},
        "middlewareSettings": {},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        # The SDK's own metrics and Signals' sampling would go to Segment.
        "metrics": {"sampleRate": 0, "host": api_host},
        "autoInstrumentationSettings": {"sampleRate": 0},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
    }
    return FastJSON(settings, headers={"Cache-Control": SETTINGS_CACHE})


@router.get("/sourceConfig/")
def rudderstack_source_config(request: Request, app: Container = Depends(container)) -> Response:
    """RudderStack's source config: no destination loaded in the page, and neither error
    reports nor metrics sent."""
    write_key = request.query_params.get("writeKey")
    if not write_key:
        return error(
            401,
            "unauthorized",
            "send the source's write key as ?writeKey=",
            field="writeKey",
        )
    found = _source(app, write_key, 401)
    if isinstance(found, Response):
        return found
    off = {"enabled": False}
    config = {
        "source": {
            "id": found.id,
            "name": found.name,
            "enabled": True,
            "config": {"statsCollection": {"errors": off, "metrics": off}},
            "destinations": [],
        }
    }
    return FastJSON(config, headers={"Cache-Control": SETTINGS_CACHE})


@cache
def _vendored_names() -> frozenset[str]:
    return frozenset(path.name for path in ANALYTICS_NEXT.glob("*.js"))


@cache
def _vendored(name: str) -> tuple[bytes, bytes]:
    """A file of analytics-next, as it is and gzipped."""
    plain = (ANALYTICS_NEXT / name).read_bytes()
    return plain, gzip.compress(plain, mtime=0)


def _script(request: Request, name: str, cache_control: str) -> Response:
    if name not in _vendored_names():
        return error(404, "not_found", f"analytics-next has no file {name!r}")
    plain, gzipped = _vendored(name)
    headers = {"Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    body = plain
    if "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = gzipped, "gzip"
    return Response(body, media_type="text/javascript", headers=headers)


@router.get("/analytics.js/v1/{write_key}/analytics.min.js")
def analytics_js(write_key: str, request: Request) -> Response:
    """analytics-next, where Segment's snippet loads it from once its host is Ariane's.
    The write key in the path is the snippet's; the SDK checks it with its settings."""
    return _script(request, STANDALONE, STANDALONE_CACHE)


@router.get("/analytics-next/bundles/{name}")
def analytics_next_chunk(name: str, request: Request) -> Response:
    """The parts of analytics-next it loads only when a page uses them."""
    return _script(request, name, CHUNK_CACHE)
