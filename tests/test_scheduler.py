"""The scheduler on its own: fairness between owners and the waiting-build caps (no Docker)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from traitlets import TraitError

from r2d_core.errors import RateLimited
from r2d_core.manager import BuildManager
from r2d_core.models import Build, BuildState
from r2d_core.scheduler import Scheduler


@dataclass
class Limits:
    max_concurrent_builds: int = 1
    max_builds_per_owner: int = 1
    max_queued_builds: int = 1000
    max_queued_builds_per_owner: int = 1000


def make_build(owner: str, n: int) -> Build:
    return Build(
        id=f"{owner}-{n}", owner=owner, name=f"img{n}", repo="r", ref="HEAD", sha="0" * 40,
        image=f"r2d-{owner}-img{n}:{'0' * 40}",
    )  # fmt: skip


def finish(scheduler: Scheduler, build: Build) -> None:
    build.state = BuildState.BUILT
    scheduler.release(build)


def test_one_owners_hundred_builds_do_not_delay_another_owners_first():
    s = Scheduler(Limits())
    hog = [make_build("hog", i) for i in range(100)]
    for build in hog:
        s.enqueue(build)
    assert s.startable() == [hog[0]]
    newcomer = make_build("new", 0)
    s.enqueue(newcomer)
    # the newcomer is next: the hog was served last
    assert s.queue_position(newcomer) == 0
    assert s.queue_position(hog[1]) == 1
    finish(s, hog[0])
    assert s.startable() == [newcomer]
    finish(s, newcomer)
    assert s.startable() == [hog[1]]


def test_owners_take_turns_with_several_slots():
    s = Scheduler(Limits(max_concurrent_builds=3, max_builds_per_owner=3))
    builds = {o: [make_build(o, i) for i in range(4)] for o in "abc"}
    for build in builds["a"]:
        s.enqueue(build)
    for o in "bc":
        for build in builds[o]:
            s.enqueue(build)
    first = s.startable()
    assert [b.owner for b in first] == ["a", "b", "c"]  # one each, not a's three
    assert [b.owner for b in s.waiting[:3]] == ["a", "b", "c"]
    finish(s, first[1])  # b's build ends: the owner served longest ago waiting goes next
    assert [b.owner for b in s.startable()] == ["a"]


def test_per_owner_running_limit_skips_the_owner():
    s = Scheduler(Limits(max_concurrent_builds=2, max_builds_per_owner=1))
    a = [make_build("a", i) for i in range(3)]
    for build in a:
        s.enqueue(build)
    assert s.startable() == [a[0]]  # the second slot stays free: a is at its limit
    assert s.running_count() == 1 and s.waiting_count("a") == 2


def test_per_owner_waiting_cap_names_the_limit_and_leaves_others_room():
    s = Scheduler(Limits(max_queued_builds=5, max_queued_builds_per_owner=2))
    s.enqueue(make_build("a", 0))
    s.enqueue(make_build("a", 1))
    with pytest.raises(RateLimited) as info:
        s.check_room("a")
    error = info.value
    assert "max_queued_builds_per_owner = 2" in str(error) and "a has 2 builds waiting" in str(
        error
    )
    assert error.retry_after and error.details["limit"] == "max_queued_builds_per_owner"
    s.check_room("b")  # another owner still gets in
    for i in range(3):
        s.enqueue(make_build(f"o{i}", 0))
    with pytest.raises(RateLimited) as info:
        s.check_room("b")  # the global cap holds
    assert info.value.details["limit"] == "max_queued_builds"


def test_retry_after_goes_by_recent_build_durations():
    """The 429's Retry-After: the median duration of recent builds minus how long the running
    build nearest its end has run, bounded; 30 s before any build has finished."""
    s = Scheduler(Limits(max_concurrent_builds=2, max_builds_per_owner=1))
    now = 1_000_000.0
    assert s.retry_after("a", now=now) == 30  # nothing to go by
    for i, duration in enumerate((80.0, 100.0, 400.0)):  # median 100 s
        done = make_build("old", i)
        s.enqueue(done)
        assert s.startable() == [done]
        done.started, done.finished = now - 1000, now - 1000 + duration
        finish(s, done)
    a, b = make_build("a", 0), make_build("b", 0)
    for build in (a, b):
        s.enqueue(build)
    assert s.startable() == [a, b]
    a.started, b.started = now - 40, now - 75
    assert s.retry_after(now=now) == 25  # anybody's slot: b's, in 100 - 75 s
    assert s.retry_after("a", now=now) == 60  # a holds its only slot: its own build, 100 - 40
    assert s.retry_after("c", now=now) == 25
    a.started = now - 99
    assert s.retry_after("a", now=now) == 5  # overdue or nearly: not sooner than the minimum
    a.started = now
    s._durations.extend([3600.0] * 10)  # hour-long builds
    assert s.retry_after("a", now=now) == 300  # never longer than the maximum
    # cancelled builds say nothing about how long builds take
    c = make_build("c", 0)
    s.enqueue(c)
    s.discard(c)
    c.state, c.started, c.finished = BuildState.CANCELLED, now - 5, now
    s.release(c)
    assert 5.0 not in s._durations


def test_retry_after_reaches_the_429():
    s = Scheduler(Limits(max_queued_builds_per_owner=1))
    done = make_build("old", 0)
    s.enqueue(done)
    s.startable()
    done.started, done.finished = 0.0, 120.0
    finish(s, done)
    running = make_build("a", 0)
    s.enqueue(running)
    s.startable()
    running.started = time.time() - 20
    s.enqueue(make_build("a", 1))
    with pytest.raises(RateLimited) as info:
        s.check_room("a")
    assert 95 <= info.value.retry_after <= 100  # 120 - 20, as the clock moves


def test_discard_and_release_keep_counts_right():
    s = Scheduler(Limits())
    a0, a1 = make_build("a", 0), make_build("a", 1)
    s.enqueue(a0)
    s.enqueue(a1)
    s.discard(a1)
    assert s.waiting_count() == 1 and not s.is_waiting(a1) and s.queue_position(a1) is None
    assert s.active_build(a0.image) is a0
    assert s.startable() == [a0]
    finish(s, a0)
    assert s.active_build(a0.image) is None and s._served == {}  # nothing kept about "a"


@pytest.mark.parametrize("trait", ["max_queued_builds", "max_queued_builds_per_owner"])
def test_queue_caps_validated(trait):
    with pytest.raises(TraitError, match=f"{trait} must be at least 1"):
        BuildManager(**{trait: 0})


def test_queue_cap_env(monkeypatch):
    monkeypatch.setenv("R2D_MAX_QUEUED_BUILDS_PER_OWNER", "3")
    monkeypatch.setenv("R2D_MAX_QUEUED_BUILDS", "7")
    m = BuildManager()
    assert (m.max_queued_builds_per_owner, m.max_queued_builds) == (3, 7)
