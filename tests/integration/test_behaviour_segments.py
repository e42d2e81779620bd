"""Groups found by behavioural discovery, saved as segments, that new profiles join live."""

from __future__ import annotations

from collections import Counter

from ariane.bootstrap import Container
from ariane.services.discovery import discover
from tests.integration.test_discovery import population, send


def test_discovered_groups_become_segments_that_new_people_join(container: Container) -> None:
    now = container.clock()
    known = population(now)
    send(container, known)
    found = discover(container.db)
    applied = container.segments.apply({"segments": found.segment_definitions("trial-")})
    assert sorted(applied["created"]) == sorted(f"trial-{g.name}" for g in found.groups)

    # The backfill places everyone where discovery did.
    owner: dict[str, str] = {}
    for group in found.groups:
        page = container.segments.members(f"trial-{group.name}", limit=1000)
        assert page["total"] == group.size
        owner.update((m["profile_id"], group.name) for m in page["members"])
    assert owner == found.labels

    # The group most of each kind fell into.
    ids = {container.profiles.lookup("user_id", u.user_id): u.kind for u in known}
    usual = {
        kind: Counter(found.labels[p] for p, k in ids.items() if k == kind).most_common(1)[0][0]
        for kind in {u.kind for u in known}
    }
    newcomers = [u for u in population(now, seed=99) if u.kind in usual][:30]
    for user in newcomers:
        user.user_id = f"new-{user.user_id}"
    send(container, newcomers)
    placed = 0
    for user in newcomers:
        profile = container.profiles.view(container.profiles.lookup("user_id", user.user_id))
        names = [s["name"] for s in profile["segments"]]
        assert len(names) == 1, names
        placed += names == [f"trial-{usual[user.kind]}"]
    assert placed >= 0.9 * len(newcomers)
