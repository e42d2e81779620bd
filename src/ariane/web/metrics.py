"""Prometheus metrics, one registry per application (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.latency = Histogram(
            "ariane_request_seconds",
            "Request latency by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
