"""Behaviour discovery's clustering, descriptions and live model, on made-up counts."""

from __future__ import annotations

import random

import orjson
import pytest
from sklearn.metrics import adjusted_rand_score

from ariane.analytics.discovery import Discovery, Feature, cluster, nearest_group
from ariane.domain.errors import DomainError, NotFound

FEATURES = [
    Feature("Feature Used", "P3D"),
    Feature("Feature Used", "P14D"),
    Feature("Help Viewed", "P14D"),
    Feature("Trial Started", "P3D"),
]

# Mean counts of each feature, per kind of user.
KINDS = {
    "explorer": (20.0, 22.0, 0.5),
    "learner": (2.0, 5.0, 9.0),
    "power": (25.0, 110.0, 1.0),
}


def population(size: int, seed: int = 1) -> tuple[list[str], list[list[float]], list[str]]:
    rng = random.Random(seed)
    ids, rows, truth = [], [], []
    for number in range(size):
        kind = list(KINDS)[number % len(KINDS)]
        early, total, help_viewed = KINDS[kind]
        first_days = max(0, round(rng.gauss(early, early / 4)))
        rows.append(
            [
                float(first_days),
                float(first_days + max(0, round(rng.gauss(total - early, total / 8)))),
                float(max(0, round(rng.gauss(help_viewed, 1.5)))),
                # Everyone starts a trial once: a feature with no spread at all.
                1.0,
            ]
        )
        ids.append(f"p{number:03d}")
        truth.append(kind)
    return ids, rows, truth


@pytest.fixture(scope="module")
def found() -> tuple[Discovery, list[list[float]], list[str]]:
    ids, rows, truth = population(120)
    return cluster(ids, rows, FEATURES), rows, truth


def test_finds_the_kinds_of_users_and_how_many_there_are(
    found: tuple[Discovery, list[list[float]], list[str]],
) -> None:
    discovery, _, truth = found
    assert max(discovery.k_scores, key=lambda k: discovery.k_scores[k]) == 3
    assert set(discovery.k_scores) == set(range(2, 9))
    assert discovery.silhouette == discovery.k_scores[3]
    labels = [discovery.labels[f"p{n:03d}"] for n in range(120)]
    assert adjusted_rand_score(truth, labels) == 1.0
    assert [g.size for g in discovery.groups] == [40, 40, 40]
    assert len({g.name for g in discovery.groups}) == 3


def test_a_feature_without_spread_is_kept_with_a_unit_scale(
    found: tuple[Discovery, list[list[float]], list[str]],
) -> None:
    discovery, _, _ = found
    assert discovery.center[3] == 1.0
    assert discovery.scale[3] == 1.0
    assert all(g.centroid[3] == 0.0 for g in discovery.groups)


def test_groups_are_described_in_plain_words_by_what_sets_them_apart(
    found: tuple[Discovery, list[list[float]], list[str]],
) -> None:
    discovery, _, truth = found
    by_kind = {
        kind: discovery.labels[f"p{n:03d}"] for n, kind in enumerate(truth) if n < len(KINDS)
    }
    groups = {g.name: g for g in discovery.groups}
    learner = groups[by_kind["learner"]]
    assert learner.name == "many-help-viewed-14d"
    assert learner.description.startswith("'Help Viewed' ")
    assert " times the average in the first 14 days (" in learner.description
    power = groups[by_kind["power"]]
    assert power.name == "many-feature-used-14d"
    for group in discovery.groups:
        # Never the feature everyone shares, which says nothing about anyone.
        assert "Trial Started" not in group.description
        assert group.description.count("'") >= 2


def test_the_saved_model_places_every_profile_in_the_group_it_was_found_in(
    found: tuple[Discovery, list[list[float]], list[str]],
) -> None:
    discovery, rows, _ = found
    # As a segment stores it: through JSON.
    condition = orjson.loads(orjson.dumps(discovery.condition(discovery.groups[0].name)))
    for number, row in enumerate(rows):
        expected = discovery.labels[f"p{number:03d}"]
        assert nearest_group(condition["behaviour"], [int(x) for x in row]) == expected


def test_condition_is_the_behaviour_node_of_one_group(
    found: tuple[Discovery, list[list[float]], list[str]],
) -> None:
    discovery, _, _ = found
    name = discovery.groups[1].name
    condition = discovery.condition(name)
    assert set(condition) == {"behaviour", "group"}
    assert condition["group"] == name
    model = condition["behaviour"]
    assert set(model) == {"features", "center", "scale", "centroids"}
    assert model["features"][0] == {"event": "Feature Used", "within": "P3D"}
    assert list(model["centroids"]) == [g.name for g in discovery.groups]
    assert model["centroids"][name] == discovery.groups[1].centroid
    # Six significant digits at most.
    for value in [*model["center"], *model["scale"], *model["centroids"][name]]:
        assert float(f"{value:.6g}") == value
    with pytest.raises(NotFound) as error:
        discovery.condition("nobody")
    assert error.value.field == "group"


def test_segment_definitions_name_each_group_under_a_prefix(
    found: tuple[Discovery, list[list[float]], list[str]],
) -> None:
    discovery, _, _ = found
    definitions = discovery.segment_definitions("trial-")
    assert [d["name"] for d in definitions] == [f"trial-{g.name}" for g in discovery.groups]
    assert [d["description"] for d in definitions] == [g.description for g in discovery.groups]
    assert definitions[2]["condition"] == discovery.condition(discovery.groups[2].name)


def test_too_few_profiles_is_an_error_that_says_how_many_are_needed() -> None:
    with pytest.raises(DomainError) as error:
        cluster(["a", "b"], [[1.0], [5.0]], [Feature("Feature Used", "P3D")])
    assert "at least 3 profiles" in error.value.message
    assert "found 2" in error.value.message


def test_three_profiles_make_two_groups_at_most() -> None:
    discovery = cluster(["a", "b", "c"], [[0.0], [1.0], [9.0]], [Feature("Used", "P3D")])
    assert set(discovery.k_scores) == {2}
    assert discovery.labels["a"] == discovery.labels["b"] != discovery.labels["c"]
    assert discovery.groups[1].name == "many-used-3d"
    assert discovery.groups[0].name == "few-used-3d"


def test_profiles_that_all_behave_alike_cannot_be_grouped() -> None:
    with pytest.raises(DomainError) as error:
        cluster(["a", "b", "c", "d"], [[2.0, 0.0]] * 4, FEATURES[:2])
    assert error.value.field == "events"


def test_no_features_or_a_bad_window_is_an_error() -> None:
    with pytest.raises(DomainError) as error:
        cluster(["a", "b", "c"], [[], [], []], [])
    assert error.value.field == "events"
    with pytest.raises(DomainError) as error:
        cluster(["a", "b", "c"], [[1.0], [2.0], [3.0]], [Feature("Used", "3 days")])
    assert error.value.field == "days"


def test_nearest_group_breaks_a_tie_for_the_first_group() -> None:
    model = {
        "features": [{"event": "Used", "within": "PT6H"}],
        "center": [2.0],
        "scale": [2.0],
        "centroids": {"low": [-1.0], "high": [1.0]},
    }
    assert nearest_group(model, [2]) == "low"
    assert nearest_group(model, [3]) == "high"
    assert nearest_group({**model, "centroids": {"high": [1.0], "low": [-1.0]}}, [2]) == "high"
    with pytest.raises(ValueError):
        nearest_group(model, [1, 2])
