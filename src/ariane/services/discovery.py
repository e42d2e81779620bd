"""Behaviour discovery: group the population by what each profile did in its first days."""

from __future__ import annotations

from collections.abc import Sequence

from ariane.analytics.discovery import Discovery, Feature, cluster, window_length
from ariane.domain.errors import DomainError
from ariane.storage import behaviour
from ariane.storage.database import Database

DEFAULT_WINDOWS = ("P3D", "P14D")


def discover(
    db: Database,
    *,
    days: Sequence[str] = DEFAULT_WINDOWS,
    events: Sequence[str] | None = None,
    max_events: int = 12,
    min_groups: int = 2,
    max_groups: int = 8,
    seed: int = 0,
) -> Discovery:
    """Cluster live profiles on counts of `events` (if none are given, the `max_events`
    track events sent by the most profiles) within each window of `days` after their
    first_seen."""
    windows = [(text, window_length(text)) for text in dict.fromkeys(days)]
    if not windows:
        raise DomainError("give at least one window, such as P3D", field="days")
    if not events and max_events < 1:
        raise DomainError(f"max_events must be at least 1, not {max_events}", field="max_events")
    with db.read() as conn:
        names = (
            list(dict.fromkeys(events))
            if events
            else behaviour.most_shared_events(conn, max_events)
        )
        features = [Feature(name, text) for name in names for text, _ in windows]
        counts = behaviour.first_days_counts(
            conn, [(name, span) for name in names for _, span in windows]
        )
    return cluster(
        list(counts),
        list(counts.values()),
        features,
        min_groups=min_groups,
        max_groups=max_groups,
        seed=seed,
    )
