"""Cross-origin access to the tracking API, which websites call from their own origin.

A browser sends a page's events to Ariane from the page's origin, so every answer of the
tracking API, errors included, carries the `Access-Control-Allow-*` headers, and the
preflight `OPTIONS` the browser sends first is answered here. The admin API is not
opened to other origins: its tokens never belong in a web page.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths the browser SDKs call: the tracking API, RudderStack's beacon, and the settings
# the SDKs load before sending.
CROSS_ORIGIN_PREFIXES = ("/v1/", "/beacon/v1/", "/sourceConfig")
# What the Segment and RudderStack browser SDKs send besides the simple headers.
ALLOWED_HEADERS = frozenset(
    {"authorization", "content-type", "x-retry-count", "anonymousid", "sentat"}
)
ALLOWED_HEADER_PREFIXES = ("rsa-",)
ALLOWED_METHODS = "GET, POST, OPTIONS"
# Read by the SDKs to wait before a retry: the standard header and Segment's own.
EXPOSED_HEADERS = "Retry-After, X-RateLimit-Reset"
# Seconds a browser may keep a preflight's answer (Chromium keeps at most two hours).
PREFLIGHT_MAX_AGE = "7200"


def _allowed(header: str) -> bool:
    return header in ALLOWED_HEADERS or header.startswith(ALLOWED_HEADER_PREFIXES)


def allowed_request_headers(requested: str) -> str:
    """The headers among those a preflight asks for that the tracking API accepts."""
    names = (name.strip().lower() for name in requested.split(","))
    return ", ".join(name for name in names if name and _allowed(name))


def _origin_headers(origin: str) -> dict[str, str]:
    # The origin itself rather than "*": the SDKs may send cookies (fetch's
    # `credentials: "include"`), which a wildcard would make the browser refuse.
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
        "Vary": "Origin",
    }


class TrackingCORS:
    """Answers preflights on the tracking paths and adds CORS headers to their answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CROSS_ORIGIN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in _origin_headers(origin).items():
                    if name == "Vary":
                        response_headers.add_vary_header(value)
                    else:
                        response_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, origin: str, headers: Headers, send: Send) -> None:
        answer = {
            **_origin_headers(origin),
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": allowed_request_headers(
                headers.get("access-control-request-headers", "")
            ),
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Content-Length": "0",
        }
        if headers.get("access-control-request-private-network") == "true":
            # A public site's page sending to an Ariane on a private network (Chromium's
            # Private Network Access asks first).
            answer["Access-Control-Allow-Private-Network"] = "true"
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(k.lower().encode(), v.encode()) for k, v in answer.items()],
            }
        )
        await send({"type": "http.response.body", "body": b""})
