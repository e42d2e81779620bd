"""The Segment-compatible tracking API: /v1/{identify,track,page,screen,group,alias,batch,import}.

Bodies are read raw and parsed with orjson (no model validation layer): the per-event
checks live in `domain.messages`, and this module only deals with the request as a whole.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ariane.bootstrap import Container
from ariane.domain.clock import parse_timestamp
from ariane.services.ingest import Envelope
from ariane.web.metrics import Metrics
from ariane.web.responses import error

SUCCESS = b'{"success":true}'
SINGLE_TYPES = ("identify", "track", "page", "screen", "group", "alias")


class RequestRejected(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _write_key_from_header(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def _decompress(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise RequestRejected(400, "bad_gzip", "body is not valid gzip") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestRejected(413, "too_large", f"body is over {limit} bytes once decompressed")
    return data


class TrackingAPI:
    def __init__(self, container: Container, metrics: Metrics) -> None:
        self.container = container
        self.metrics = metrics
        self.settings = container.settings
        self.inflight = 0

    def routes(self) -> list[Route]:
        routes = [
            Route(f"/v1/{kind}", self._single(kind), methods=["POST"]) for kind in SINGLE_TYPES
        ]
        routes.append(Route("/v1/batch", self.batch, methods=["POST"]))
        routes.append(Route("/v1/import", self.batch, methods=["POST"]))
        return routes

    async def _body(self, request: Request) -> Any:
        limit = self.settings.max_batch_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestRejected(413, "too_large", f"request body is over {limit} bytes")
        body = await request.body()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = _decompress(body, limit)
        elif len(body) > limit:
            raise RequestRejected(413, "too_large", f"request body is over {limit} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestRejected(400, "bad_json", f"body is not valid JSON: {exc}") from None

    def _source_id(self, request: Request, body: Any) -> str:
        key = _write_key_from_header(request)
        if key is None and isinstance(body, dict) and isinstance(body.get("writeKey"), str):
            key = body["writeKey"]
        if not key:
            raise RequestRejected(
                401,
                "unauthorized",
                "send the source's write key as HTTP Basic user name or as writeKey",
            )
        source = self.container.access.source_for_key(key)
        if source is None:
            raise RequestRejected(401, "unauthorized", "unknown write key")
        return source.id

    def _single(self, kind: str) -> Any:
        async def endpoint(request: Request) -> Response:
            return await self._handle(request, kind)

        endpoint.__name__ = f"track_{kind}"
        return endpoint

    async def batch(self, request: Request) -> Response:
        return await self._handle(request, None)

    async def _handle(self, request: Request, kind: str | None) -> Response:
        if self.inflight >= self.settings.max_inflight_ingest:
            self.metrics.rejected.labels("429").inc()
            return error(
                429,
                "overloaded",
                "ingestion is saturated; retry later",
                headers={"Retry-After": "1"},
            )
        self.inflight += 1
        try:
            return await self._accept(request, kind)
        except RequestRejected as rejected:
            self.metrics.rejected.labels(str(rejected.status)).inc()
            return error(rejected.status, rejected.code, rejected.message, field=rejected.field)
        finally:
            self.inflight -= 1

    async def _accept(self, request: Request, kind: str | None) -> Response:
        received_at = self.container.clock()
        body = await self._body(request)
        source_id = self._source_id(request, body)
        if not isinstance(body, dict):
            raise RequestRejected(400, "bad_request", "body must be a JSON object")
        envelope = Envelope(received_at=received_at, type_hint=kind)
        if kind is None:
            events = body.get("batch")
            if not isinstance(events, list):
                raise RequestRejected(
                    400, "bad_request", "batch must be a list of events", field="batch"
                )
            if len(events) > self.settings.max_batch_events:
                raise RequestRejected(
                    413,
                    "too_many_events",
                    f"a batch holds at most {self.settings.max_batch_events} events",
                    field="batch",
                )
            for key in ("context", "integrations"):
                if body.get(key) is not None and not isinstance(body[key], dict):
                    raise RequestRejected(400, "bad_request", f"{key} must be an object", field=key)
            envelope.context = body.get("context")
            envelope.integrations = body.get("integrations")
            if isinstance(body.get("sentAt"), str):
                try:
                    envelope.sent_at = parse_timestamp(body["sentAt"])
                except ValueError:
                    raise RequestRejected(
                        400, "bad_request", "sentAt is not ISO-8601", field="sentAt"
                    ) from None
        else:
            events = [body]

        result = await run_in_threadpool(self.container.ingest.ingest, source_id, events, envelope)
        metrics = self.metrics
        metrics.accepted.labels(source_id).inc(result.accepted)
        metrics.quarantined.labels(source_id).inc(result.quarantined)
        metrics.deduplicated.labels(source_id).inc(result.duplicates)
        metrics.merges.inc(result.merges)
        if kind is not None and result.problems:
            # A single event that is invalid is kept in quarantine, and its sender told why.
            problem = result.problems[0]
            raise RequestRejected(400, problem.code, problem.message, field=problem.field)
        return Response(SUCCESS, media_type="application/json")
