"""The Segment-compatible tracking API: /v1/{identify,track,page,screen,group,alias,batch,import}.

Bodies are read raw and parsed with orjson (no model validation layer): the per-event
checks live in `domain.messages`, and this module only deals with the request as a whole.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import zlib
from datetime import datetime
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ariane.bootstrap import Container
from ariane.domain.clock import parse_timestamp
from ariane.services.ingest import Envelope
from ariane.web.metrics import Metrics
from ariane.web.responses import error

SUCCESS = b'{"success":true}'
SINGLE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
# Segment's analytics-next posts each call to the first letter of its type, and batches
# to /v1/b; RudderStack's beacon mode posts batches to /beacon/v1/batch?writeKey=.
BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b", "/beacon/v1/batch")
# Seconds a client should wait before sending again when Ariane cannot take events now.
RETRY_AFTER_SECONDS = 1

log = logging.getLogger(__name__)


class RequestRejected(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _too_large(limit: int, what: str = "the request body") -> RequestRejected:
    return RequestRejected(
        413, "too_large", f"{what} is over {limit} bytes; send the events in smaller batches"
    )


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


# zlib's window bits for each Content-Encoding it reads: gzip, and deflate, which HTTP
# defines as the zlib format (RFC 9110).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_SUPPORTED_ENCODINGS = "gzip or deflate"


def _encoding(request: Request) -> str | None:
    """The body's Content-Encoding if it is compressed, refused when it cannot be read."""
    declared = request.headers.get("content-encoding", "").strip().lower()
    if declared in ("", "identity"):
        return None
    if declared not in _WBITS:
        raise RequestRejected(
            415,
            "unsupported_encoding",
            f"Content-Encoding {declared!r} is not supported; send the body as it is or"
            f" compressed with {_SUPPORTED_ENCODINGS}",
            field="Content-Encoding",
        )
    return "gzip" if declared == "x-gzip" else declared


class _Inflate:
    """A compressed body decompressed as it arrives, to at most `limit` bytes.

    Concatenated gzip members are one valid stream (RFC 1952), so each is decompressed
    in turn; bytes after a member that do not start another are refused.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self.member = self._new_member()

    def _new_member(self) -> zlib._Decompress:
        return zlib.decompressobj(wbits=_WBITS[self.encoding])

    def _bad(self, why: str) -> RequestRejected:
        return RequestRejected(400, f"bad_{self.encoding}", why, field="Content-Encoding")

    def feed(self, data: bytes) -> None:
        while data:
            if self.member.eof:
                if self.encoding != "gzip":
                    raise self._bad(f"the {self.encoding} body has bytes after its end")
                self.member = self._new_member()
            try:
                out = self.member.decompress(data, self.limit - self.size + 1)
            except zlib.error:
                raise self._bad(
                    f"the body is not valid {self.encoding}, as its Content-Encoding says"
                ) from None
            self.size += len(out)
            if self.size > self.limit:
                raise _too_large(self.limit, "the body once decompressed")
            self.parts.append(out)
            data = self.member.unused_data if self.member.eof else self.member.unconsumed_tail

    def result(self) -> bytes:
        if not self.member.eof:
            raise self._bad(f"the {self.encoding} body is truncated: it ends before its end")
        return b"".join(self.parts)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read as it arrives: refused as soon as it is over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    encoding = _encoding(request)
    inflate = None if encoding is None else _Inflate(encoding, limit)
    parts: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            if inflate is None:
                parts.append(chunk)
            else:
                inflate.feed(chunk)
    except ClientDisconnect:
        raise RequestRejected(
            400, "bad_request", "the connection closed before the body was complete"
        ) from None
    return b"".join(parts) if inflate is None else inflate.result()


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    # orjson says no more than where it stopped: the stricter reading below tells the
    # sender where the body is wrong, and reads the lone surrogates (`"\ud800"`) that
    # orjson refuses, so that only the events holding them are quarantined.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = body.count(b"\n", 0, bad.start) + 1
        column = bad.start - (body.rfind(b"\n", 0, bad.start) + 1) + 1
        raise RequestRejected(
            400,
            "bad_json",
            f"the body is not valid UTF-8 at byte {bad.start} (line {line}, column {column});"
            " send JSON encoded in UTF-8",
        ) from None
    try:
        return json.loads(
            text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except json.JSONDecodeError as exc:
        raise RequestRejected(400, "bad_json", f"body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):
        raise RequestRejected(400, "bad_json", f"body is not valid JSON: {first_error}") from None


# Numbers read as orjson reads them: integers beyond 64 bits become floats, and a number
# too large for a float is refused.
def _json_int(text: str) -> int | float:
    number = int(text)
    if -(2**63) <= number < 2**64:
        return number
    try:
        return float(number)
    except OverflowError:
        raise ValueError(f"{text} is too large a number") from None


def _json_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text} is too large a number")
    return number


def _json_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


# Bodies read at once, per request allowed in flight: each holds up to max_batch_bytes
# (and as much again decompressed), so their number is bounded too.
READING_PER_INFLIGHT = 8
# A body that has not arrived by then is not waited for.
BODY_DEADLINE_SECONDS = 30.0


class TrackingAPI:
    def __init__(
        self,
        container: Container,
        metrics: Metrics,
        *,
        body_deadline: float = BODY_DEADLINE_SECONDS,
    ) -> None:
        self.container = container
        self.metrics = metrics
        self.settings = container.settings
        self.body_deadline = body_deadline
        # Requests past their reading and authentication, being validated and stored.
        self.inflight = 0
        # Requests whose body is being read.
        self.reading = 0

    def routes(self) -> list[Route]:
        routes = [
            Route(path, self._single(kind), methods=["POST"])
            for kind in SINGLE_TYPES
            for path in (f"/v1/{kind}", f"/v1/{kind[0]}")
        ]
        routes.extend(Route(path, self.batch, methods=["POST"]) for path in BATCH_PATHS)
        return routes

    async def _source_id(self, write_key: str | None) -> str:
        if not write_key:
            raise RequestRejected(
                401,
                "unauthorized",
                "send the source's write key as HTTP Basic user name or as writeKey",
            )
        access = self.container.access
        source = access.cached_source_for_key(write_key)
        if source is None:
            source = await run_in_threadpool(access.source_for_key, write_key)
        if source is None:
            raise RequestRejected(
                401,
                "unauthorized",
                "unknown write key; send the source's current key (a rotated key no longer works)",
            )
        return source.id

    def _single(self, kind: str) -> Any:
        async def endpoint(request: Request) -> Response:
            return await self._handle(request, kind)

        endpoint.__name__ = f"track_{kind}"
        return endpoint

    async def batch(self, request: Request) -> Response:
        return await self._handle(request, None)

    def _check_capacity(self) -> None:
        if self.inflight >= self.settings.max_inflight_ingest:
            raise RequestRejected(429, "overloaded", "ingestion is saturated; retry later")

    async def _read(self, request: Request) -> bytes:
        if self.reading >= self.settings.max_inflight_ingest * READING_PER_INFLIGHT:
            raise RequestRejected(429, "overloaded", "too many uploads at once; retry later")
        self.reading += 1
        try:
            return await asyncio.wait_for(
                _read_body(request, self.settings.max_batch_bytes), self.body_deadline
            )
        except TimeoutError:
            raise RequestRejected(
                408,
                "timeout",
                f"the body did not arrive within {self.body_deadline:g} s; send it at once",
            ) from None
        finally:
            self.reading -= 1

    async def _handle(self, request: Request, kind: str | None) -> Response:
        # Only requests whose body is in and whose key is known hold a place in
        # `inflight`: write keys ship inside web pages, so anyone can trickle an upload
        # with one, and such uploads must not make everyone else's requests wait.
        received_at = self.container.clock()
        body_read = False
        try:
            self._check_capacity()
            header_key = _write_key_from_header(request) or request.query_params.get("writeKey")
            source_id = None if header_key is None else await self._source_id(header_key)
            raw = await self._read(request)
            body_read = True
            body = _parse_json(raw)
            if source_id is None:
                body_key = body.get("writeKey") if isinstance(body, dict) else None
                source_id = await self._source_id(body_key if isinstance(body_key, str) else None)
            self._check_capacity()
            self.inflight += 1
            try:
                return await self._accept(body, source_id, kind, received_at)
            finally:
                self.inflight -= 1
        except Exception as failure:
            rejected = self._rejection(failure)
            self.metrics.rejected.labels(str(rejected.status)).inc()
            headers = (
                {"Retry-After": str(RETRY_AFTER_SECONDS)} if rejected.status in (429, 503) else {}
            )
            if not body_read:
                # What is left of the body is not worth reading: the server would only
                # drain it to keep the connection alive.
                headers["Connection"] = "close"
            return error(
                rejected.status,
                rejected.code,
                rejected.message,
                field=rejected.field,
                headers=headers,
            )

    def _rejection(self, failure: Exception) -> RequestRejected:
        """What to answer for a failure, here rather than in the app's handlers so that
        the answer goes through the tracking API's CORS headers like any other."""
        if isinstance(failure, RequestRejected):
            return failure
        if self.container.db.is_unavailable(failure):
            log.warning("tracking: the database cannot take events now: %s", failure)
            return RequestRejected(
                503, "unavailable", "the database cannot take events now; send them again later"
            )
        log.exception("tracking: unexpected error", exc_info=failure)
        return RequestRejected(500, "internal", "unexpected error; the server log has the details")

    async def _accept(
        self, body: Any, source_id: str, kind: str | None, received_at: datetime
    ) -> Response:
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
