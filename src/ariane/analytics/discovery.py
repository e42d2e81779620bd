"""Behaviour groups found in the data, and the small model that places a new profile in one.

A profile's behaviour is a vector of counts, one per `Feature`: how many `track` events
named `event` it sent from its first_seen up to (not including) first_seen + `within`.
Counts are standardised, `(x - center) / scale`, and grouped with k-means; the number of
groups is the one with the best silhouette. The resulting model (features, center, scale,
centroids) is plain numbers, so that a profile joins its nearest group live, from its own
counts, with arithmetic alone (`nearest_group`): no library, no refit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from ariane.domain.clock import parse_duration
from ariane.domain.errors import DomainError, NotFound

MIN_PROFILES = 3
# Digits kept in the stored model: enough to place profiles as the fit did, short in JSON.
SIGNIFICANT_DIGITS = 6
# How far a group's mean must sit from the population's, in standard deviations, for the
# feature to be named in its description; and how many features a description names.
_DISTINCTIVE = 0.5
_DESCRIBED = 3
# The silhouette is quadratic in the number of profiles: above this, it is estimated on a
# random sample of them.
_SILHOUETTE_SAMPLE = 5000

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Feature:
    """One column of the model: `track` events named `event` within `within` of first_seen."""

    event: str
    within: str

    def as_dict(self) -> dict[str, str]:
        return {"event": self.event, "within": self.within}


@dataclass(frozen=True)
class Group:
    name: str
    size: int
    description: str
    centroid: list[float]


@dataclass(frozen=True)
class Discovery:
    features: list[Feature]
    center: list[float]
    scale: list[float]
    groups: list[Group]
    silhouette: float
    k_scores: dict[int, float]
    labels: dict[str, str]

    def model(self) -> dict[str, Any]:
        """The `behaviour` node of a segment condition: everything `nearest_group` needs."""
        return {
            "features": [feature.as_dict() for feature in self.features],
            "center": list(self.center),
            "scale": list(self.scale),
            "centroids": {group.name: list(group.centroid) for group in self.groups},
        }

    def condition(self, group: str) -> dict[str, Any]:
        if all(g.name != group for g in self.groups):
            names = ", ".join(g.name for g in self.groups)
            raise NotFound(f"no group named {group!r}; the groups are {names}", field="group")
        return {"behaviour": self.model(), "group": group}

    def segment_definitions(self, prefix: str) -> list[dict[str, Any]]:
        return [
            {
                "name": f"{prefix}{group.name}",
                "description": group.description,
                "condition": self.condition(group.name),
            }
            for group in self.groups
        ]


def cluster(
    profile_ids: Sequence[str],
    matrix: Sequence[Sequence[float]],
    features: Sequence[Feature],
    *,
    min_groups: int = 2,
    max_groups: int = 8,
    seed: int = 0,
) -> Discovery:
    """Group profiles by their feature counts (`matrix`, one row per profile id)."""
    windows = [window_length(feature.within) for feature in features]
    if not features:
        raise DomainError(
            "no behaviour features: there are no track events yet, or none was named",
            field="events",
        )
    if len(profile_ids) < MIN_PROFILES:
        raise DomainError(
            f"behaviour discovery needs at least {MIN_PROFILES} profiles with events;"
            f" found {len(profile_ids)}",
            field="profiles",
        )
    if min_groups < 2 or max_groups < min_groups:
        raise DomainError(
            f"the number of groups must be at least 2 and min_groups ({min_groups}) at most"
            f" max_groups ({max_groups})",
            field="max_groups",
        )
    raw = np.asarray(matrix, dtype=np.float64)
    if raw.shape != (len(profile_ids), len(features)):
        raise ValueError(
            f"the matrix is {raw.shape}, expected one row per profile ({len(profile_ids)})"
            f" and one column per feature ({len(features)})"
        )

    mean = raw.mean(axis=0)
    spread = raw.std(axis=0)
    # The model is fitted in the space of its rounded parameters, so that the stored model
    # is exactly the one that was fitted.
    center = _rounded(mean)
    scale = _rounded(np.where(spread > 0, spread, 1.0))
    standard = (raw - center) / scale

    distinct = len(np.unique(standard, axis=0))
    if distinct < 2:
        raise DomainError(
            f"all {len(profile_ids)} profiles have the same counts of the chosen events;"
            " there is nothing to group: choose other events or longer windows",
            field="events",
        )
    # k-means cannot make more groups than there are distinct points, and the silhouette
    # needs at least one group of two.
    largest = min(max_groups, len(profile_ids) - 1, distinct)
    best: KMeans | None = None
    k_scores: dict[int, float] = {}
    for k in range(min(min_groups, largest), largest + 1):
        fit = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(standard)
        sample = _SILHOUETTE_SAMPLE if len(profile_ids) > _SILHOUETTE_SAMPLE else None
        score = float(
            silhouette_score(standard, fit.labels_, sample_size=sample, random_state=seed)
        )
        k_scores[k] = _round(score)
        # Strictly better only: on a tie, the fewer groups.
        if best is None or k_scores[k] > k_scores[best.n_clusters]:
            best = fit
    assert best is not None

    # Largest group first; fit labels only order the groups, the rounded model places
    # every profile, exactly as `nearest_group` will place it later.
    sizes = np.bincount(best.labels_, minlength=best.n_clusters)
    order = sorted(range(best.n_clusters), key=lambda g: -sizes[g])
    centroids = _rounded(best.cluster_centers_[order])
    assigned = _assign(raw, center, scale, centroids)

    groups: list[Group] = []
    names: dict[int, str] = {}
    for index, centroid in enumerate(centroids):
        members = raw[assigned == index]
        # Rounding can, in theory, leave a group with no profile nearer to it than another.
        if len(members) == 0:
            continue
        found = _deviations(members.mean(axis=0), mean, spread)
        names[index], description = _portrait(found, features, windows, set(names.values()))
        groups.append(
            Group(
                name=names[index],
                size=len(members),
                description=description,
                centroid=[float(value) for value in centroid],
            )
        )
    labels = {
        profile_id: names[int(index)]
        for profile_id, index in zip(profile_ids, assigned, strict=True)
    }
    return Discovery(
        features=list(features),
        center=[float(value) for value in center],
        scale=[float(value) for value in scale],
        groups=groups,
        silhouette=k_scores[best.n_clusters],
        k_scores=k_scores,
        labels=labels,
    )


def nearest_group(behaviour: Mapping[str, Any], counts: Sequence[float]) -> str:
    """The group of a model (`Discovery.model()`) whose centroid is nearest to `counts`.

    Squared Euclidean distance in standardised space; on a tie, the first group in order.
    """
    center: Sequence[float] = behaviour["center"]
    scale: Sequence[float] = behaviour["scale"]
    centroids: Mapping[str, Sequence[float]] = behaviour["centroids"]
    if len(counts) != len(center):
        raise ValueError(f"{len(counts)} counts given to a model of {len(center)} features")
    nearest: str | None = None
    shortest = 0.0
    for name, centroid in centroids.items():
        # The same operations in the same order as `_assign`, so that both agree to the bit.
        distance = 0.0
        for x, c, s, m in zip(counts, center, scale, centroid, strict=True):
            diff = (x - c) / s - m
            distance += diff * diff
        if nearest is None or distance < shortest:
            nearest, shortest = name, distance
    if nearest is None:
        raise ValueError("the behaviour model has no groups")
    return nearest


def _assign(raw: Matrix, center: Matrix, scale: Matrix, centroids: Matrix) -> npt.NDArray[np.intp]:
    """`nearest_group` for every row at once (argmin keeps the first on a tie)."""
    distance = np.zeros((raw.shape[0], centroids.shape[0]))
    for j in range(raw.shape[1]):
        diff = ((raw[:, j] - center[j]) / scale[j])[:, None] - centroids[None, :, j]
        distance += diff * diff
    nearest: npt.NDArray[np.intp] = distance.argmin(axis=1)
    return nearest


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _rounded(values: Matrix) -> Matrix:
    rounded: Matrix = np.vectorize(_round, otypes=[np.float64])(values)
    return rounded


def window_length(within: str) -> timedelta:
    """The length of a feature's window, or an error a user can act on."""
    try:
        window = parse_duration(within)
    except ValueError as error:
        raise DomainError(str(error), field="days") from None
    if window <= timedelta(0):
        raise DomainError(f"{within!r} is an empty window; give one such as P3D", field="days")
    return window


# --- plain words -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Distinction:
    feature: int
    deviation: float  # group mean - population mean, in standard deviations
    group_mean: float
    population_mean: float


def _deviations(group_mean: Matrix, mean: Matrix, spread: Matrix) -> list[_Distinction]:
    """Every feature that varies in the population, where the group differs most first.

    One at least: profiles that are not all alike differ on some feature.
    """
    found = [
        _Distinction(j, float((group_mean[j] - mean[j]) / spread[j]), group_mean[j], mean[j])
        for j in range(len(mean))
        if spread[j] > 0
    ]
    found.sort(key=lambda d: -abs(d.deviation))
    return found


def _portrait(
    found: list[_Distinction],
    features: Sequence[Feature],
    windows: list[timedelta],
    used: set[str],
) -> tuple[str, str]:
    """A group's name, unique among `used`, and its description, which starts with what
    the name says."""
    # What a group does more than the others says more about it than what it does less:
    # "many-help-viewed-14d" rather than "few-feature-used-3d".
    more = sorted((d for d in found if d.deviation > 0), key=lambda d: -d.deviation)
    candidates = more + [d for d in found if d.deviation <= 0]
    slugs = [_slug(d, features, windows) for d in candidates]
    chosen = next((i for i, slug in enumerate(slugs) if slug not in used), None)
    if chosen is None:
        chosen, number = 0, 2
        while f"{slugs[0]}-{number}" in used:
            number += 1
        name = f"{slugs[0]}-{number}"
    else:
        name = slugs[chosen]
    named_after = candidates[chosen]
    others = [d for d in found if abs(d.deviation) >= _DISTINCTIVE and d is not named_after]
    described = [named_after, *others[: _DESCRIBED - 1]]
    return name, "; ".join(_phrase(d, features, windows) for d in described)


def _slug(d: _Distinction, features: Sequence[Feature], windows: list[timedelta]) -> str:
    amount = "no" if d.group_mean == 0 else "many" if d.deviation > 0 else "few"
    event = re.sub(r"[^a-z0-9]+", "-", features[d.feature].event.lower()).strip("-")[:40]
    return f"{amount}-{event or 'event'}-{_span_slug(windows[d.feature])}"


def _phrase(d: _Distinction, features: Sequence[Feature], windows: list[timedelta]) -> str:
    event = f"'{features[d.feature].event}'"
    window = f"in the first {_span_words(windows[d.feature])}"
    if d.group_mean == 0:
        return f"no {event} {window} (average {d.population_mean:.1f})"
    ratio = _times(d.group_mean / d.population_mean)
    return (
        f"{event} {ratio} times the average {window}"
        f" ({d.group_mean:.1f} vs {d.population_mean:.1f})"
    )


def _times(ratio: float) -> str:
    if ratio >= 10:
        return f"{ratio:.0f}"
    if ratio >= 0.1:
        return f"{ratio:.1f}"
    return f"{ratio:.2g}"


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def _span_parts(span: timedelta) -> list[tuple[int, str]]:
    seconds = int(span.total_seconds())
    parts = []
    for unit, length in _UNITS:
        amount, seconds = divmod(seconds, length)
        if amount:
            parts.append((amount, unit))
    return parts


def _span_words(span: timedelta) -> str:
    parts = _span_parts(span)
    if not parts:
        return f"{span.total_seconds():g} seconds"
    return " ".join(f"{n} {unit}" if n == 1 else f"{n} {unit}s" for n, unit in parts)


def _span_slug(span: timedelta) -> str:
    return "".join(f"{n}{unit[0]}" for n, unit in _span_parts(span)) or "0s"
