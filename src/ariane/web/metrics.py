"""Prometheus metrics, one registry per application (no global state).

`RequestTimer` is a plain ASGI middleware rather than Starlette's `BaseHTTPMiddleware`,
which would buffer every response and run the endpoint in another task.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"

log = logging.getLogger(__name__)


class _CountOf(Collector):
    """A counter whose value another object keeps (read at scrape time)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


class _Destinations(Collector):
    """Each destination's deliveries, read from the database at scrape time: the bus's
    handlers may run in another process than the one scraped."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        try:
            shown = self.read()
        except Exception:
            # /metrics answers with what it can: the database may be the thing to watch.
            log.exception("metrics: cannot read the destinations' deliveries")
            shown = []
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "delivered": CounterMetricFamily(
                "ariane_destination_delivered", "Messages a destination acknowledged.",
                labels=["destination"],
            ),
            "failed": CounterMetricFamily(
                "ariane_destination_failed", "Deliveries that failed (and were retried or parked).",
                labels=["destination"],
            ),
            "parked": GaugeMetricFamily(
                "ariane_destination_parked", "Messages parked after their retries, to replay.",
                labels=["destination"],
            ),
            "lag_seconds": GaugeMetricFamily(
                "ariane_destination_lag_seconds",
                "Age of the oldest event a destination has still to receive.",
                labels=["destination"],
            ),
            "latency_p99_seconds": GaugeMetricFamily(
                "ariane_destination_latency_p99_seconds",
                "99th percentile, from an event's receipt to its delivery (bucket bound).",
                labels=["destination"],
            ),
        }  # fmt: skip
        for destination in shown:
            for name, family in families.items():
                value = destination.get(name)
                if value is not None:
                    family.add_metric([destination["id"]], float(value))
        yield from families.values()


class Metrics:
    def __init__(
        self,
        *,
        transaction_retries: Callable[[], float] = lambda: 0,
        destinations: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Destinations(destinations))
        self.registry.register(
            _CountOf(
                "ariane_transaction_retries",
                "Write transactions run again after a lost race or a deadlock.",
                transaction_retries,
            )
        )
        self.accepted = Counter(
            "ariane_events_accepted",
            "Events stored and applied to a profile.",
            ["source"],
            registry=self.registry,
        )
        self.quarantined = Counter(
            "ariane_events_quarantined",
            "Invalid events kept in quarantine.",
            ["source"],
            registry=self.registry,
        )
        self.deduplicated = Counter(
            "ariane_events_deduplicated",
            "Events ignored because their messageId was seen.",
            ["source"],
            registry=self.registry,
        )
        self.merges = Counter(
            "ariane_profile_merges",
            "Profiles merged by identity resolution.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "ariane_requests_rejected",
            "Tracking requests refused, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "ariane_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class RequestTimer:
    """Observe every HTTP request, labelled by the route template that served it.

    The template (`/api/profiles/{profile_id}`), not the path, keeps the number of
    series bounded; requests no route matched share the label `unmatched`.
    """

    def __init__(
        self,
        app: ASGIApp,
        histogram: Histogram,
        routes: Callable[[], Sequence[tuple[str, str]]],
    ) -> None:
        self.app = app
        self.histogram = histogram
        self.routes = routes
        self._patterns: list[tuple[str, str, re.Pattern[str]]] | None = None

    def template(self, scope: Scope) -> str:
        # FastAPI records the route it chose only for its own routes, not for plain
        # Starlette ones such as the tracking API; those are matched here.
        chosen = getattr(scope.get("route"), "path", None)
        if isinstance(chosen, str):
            return chosen
        if self._patterns is None:
            self._patterns = [(m, p, compile_path(p)[0]) for m, p in self.routes()]
        path, method = scope["path"], scope["method"]
        matching = [(m, p) for m, p, regex in self._patterns if regex.match(path)]
        for route_method, template in matching:
            if route_method == method or (method == "HEAD" and route_method == "GET"):
                return template
        return matching[0][1] if matching else UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        # Stays 500 when the application fails before it starts a response.
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.histogram.labels(scope["method"], self.template(scope), str(status)).observe(
                perf_counter() - started
            )
