"""Word of a commit wakes the handlers of what it wrote: of its log, and in the outbox of
the kinds it wrote; word that names no kind wakes every handler of the log."""

from __future__ import annotations

from ariane.storage.commits import CommitSignal


def test_a_commit_of_one_kind_moves_the_generation_of_that_kind_only() -> None:
    signal = CommitSignal("sqlite:///unused.db")
    queued, entered = {"MessageQueued"}, {"SegmentEntered", "SegmentExited"}
    before = (signal.generation("outbox", queued), signal.generation("outbox", entered))
    whole, events = signal.generation("outbox"), signal.generation("events")
    signal.committed(["outbox:MessageQueued"])
    assert signal.generation("outbox", queued) != before[0]
    assert signal.generation("outbox", entered) == before[1]
    assert signal.generation("outbox") != whole
    assert signal.generation("events") == events


def test_word_without_a_kind_wakes_every_kind_of_its_log_or_of_both() -> None:
    signal = CommitSignal("sqlite:///unused.db")
    kinds = {"PointsEarned"}
    seen = signal.generation("outbox", kinds), signal.generation("events")
    signal.committed(["outbox"])
    assert signal.generation("outbox", kinds) != seen[0]
    assert signal.generation("events") == seen[1]
    seen = signal.generation("outbox", kinds), signal.generation("events")
    signal.committed()
    assert signal.generation("outbox", kinds) != seen[0]
    assert signal.generation("events") != seen[1]


def test_word_of_something_else_wakes_no_one() -> None:
    signal = CommitSignal("sqlite:///unused.db")
    seen = signal.generation("outbox"), signal.generation("events")
    signal.committed(["elsewhere"])
    assert (signal.generation("outbox"), signal.generation("events")) == seen
