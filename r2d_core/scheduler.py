"""The scheduler: builds waiting for a slot, the slots they hold, one build per image.

Pure bookkeeping, no Docker and no tasks: :class:`~r2d_core.manager.BuildManager` asks
:meth:`Scheduler.startable` which waiting builds may start now, starts them, and hands each slot
back with :meth:`Scheduler.release` when its build is done. The limits are read live from the
manager's traits (:class:`SchedulerLimits`), so a changed setting applies at the next decision.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Protocol

from .errors import RateLimited
from .models import Build, BuildState

__all__ = ["Scheduler", "SchedulerLimits"]

#: Retry-After of a 429, in seconds: without finished builds to go by, and the bounds (not sooner
#: than a slot can plausibly free up; never so late that a client gives up on a queue that moves)
RETRY_AFTER_DEFAULT, RETRY_AFTER_MIN, RETRY_AFTER_MAX = 30, 5, 300
#: finished builds whose durations the Retry-After estimate goes by (the most recent ones)
_DURATIONS_KEPT = 50


class SchedulerLimits(Protocol):
    """The limits the scheduler enforces: BuildManager's traits of the same names."""

    max_concurrent_builds: int
    max_builds_per_owner: int
    max_queued_builds: int
    max_queued_builds_per_owner: int


class Scheduler:
    """Waiting builds per owner, builds holding a slot, and the build in progress per image.

    Fair between owners: each owner's builds wait in their own line (first come, first served),
    and a free slot goes to the waiting owner served longest ago (round-robin over owners with
    waiting builds), so one owner's hundred waiting builds do not delay another owner's first one.
    """

    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        #: owner -> their waiting builds, oldest first (dict order breaks ties between owners)
        self._lines: dict[str, deque[Build]] = {}
        self._waiting = 0
        #: build id -> build, for every build holding a slot (running, or followed after a restart)
        self._slots: dict[str, Build] = {}
        #: image reference -> its queued or running build (a second request joins it)
        self.active: dict[str, Build] = {}
        self._order: list[Build] | None = None  # the projected start order, computed when asked
        #: owner -> when they last got a slot (a counter), for owners with builds waiting or running
        self._served: dict[str, int] = {}
        self._tick = 0
        #: how long recent builds held their slot (built or failed), newest last
        self._durations: deque[float] = deque(maxlen=_DURATIONS_KEPT)

    # ---- queries ----------------------------------------------------------------------------------
    @property
    def waiting(self) -> list[Build]:
        """Waiting builds in the order they would start if every owner had a free slot."""
        if self._order is None:
            lines = sorted(self._lines.items(), key=lambda item: self._last_served(item[0]))
            self._order = _interleave([line for _, line in lines])
        return list(self._order)

    def waiting_count(self, owner: str | None = None) -> int:
        if owner is None:
            return self._waiting
        line = self._lines.get(owner)
        return len(line) if line else 0

    def is_waiting(self, build: Build) -> bool:
        line = self._lines.get(build.owner)
        return line is not None and build in line

    def queue_position(self, build: Build) -> int | None:
        """0 for the next build to start; None when ``build`` is not waiting."""
        if not self.is_waiting(build):
            return None
        self.waiting  # noqa: B018 - computes the order when it is stale
        assert self._order is not None
        return self._order.index(build)

    def running_count(self, owner: str | None = None) -> int:
        """Builds holding a slot that are not done (of ``owner``, or everybody's)."""
        return sum(
            1
            for build in self._slots.values()
            if not build.done and (owner is None or build.owner == owner)
        )

    def active_build(self, image: str) -> Build | None:
        """The queued or running build of ``image``, if any."""
        return self.active.get(image)

    def forced_rebuilds(self, owner: str, name: str, tag: str | None = None) -> list[Build]:
        """Queued or running forced rebuilds of ``owner``'s ``name`` (of the version ``tag``)."""
        return [
            b
            for b in self.active.values()
            if b.owner == owner
            and b.name == name
            and b.previous_image_id is not None
            and (tag is None or b.image.rsplit(":", 1)[1] == tag)
        ]

    # ---- changes ----------------------------------------------------------------------------------
    def check_room(self, owner: str) -> None:
        """Raise :class:`RateLimited` when ``owner`` (or everybody) may not queue another build."""
        per_owner = self.limits.max_queued_builds_per_owner
        mine = self.waiting_count(owner)
        if mine >= per_owner:
            raise RateLimited(
                f"{owner} has {mine} builds waiting already, the most one owner may have waiting "
                f"(c.BuildManager.max_queued_builds_per_owner = {per_owner}); try again when one "
                "has started",
                retry_after=self.retry_after(owner),
                limit="max_queued_builds_per_owner",
                owner=owner,
            )
        if self._waiting >= self.limits.max_queued_builds:
            raise RateLimited(
                f"{self._waiting} builds are waiting already; try again later",
                retry_after=self.retry_after(),
                limit="max_queued_builds",
            )

    def retry_after(self, owner: str | None = None, now: float | None = None) -> int:
        """Seconds until a slot is likely to free up (a waiting build starts, making room): the
        median duration of recent builds minus how long the running build nearest its end has
        run, bounded to [:data:`RETRY_AFTER_MIN`, :data:`RETRY_AFTER_MAX`]. Only ``owner``'s
        running builds count when they hold all of ``owner``'s slots. :data:`RETRY_AFTER_DEFAULT`
        before any build has finished, or when nothing runs."""
        if not self._durations:
            return RETRY_AFTER_DEFAULT
        running = [b for b in self._slots.values() if not b.done and b.started is not None]
        if owner is not None and self.running_count(owner) >= self.limits.max_builds_per_owner:
            running = [b for b in running if b.owner == owner]
        if not running:
            return RETRY_AFTER_DEFAULT
        typical = statistics.median(self._durations)
        now = time.time() if now is None else now
        soonest = min(typical - (now - b.started) for b in running)  # type: ignore[operator]
        return round(min(max(soonest, RETRY_AFTER_MIN), RETRY_AFTER_MAX))

    def enqueue(self, build: Build) -> None:
        """Add a new build at the end of its owner's line; it becomes its image's active build."""
        self.active[build.image] = build
        self._lines.setdefault(build.owner, deque()).append(build)
        self._waiting += 1
        self._order = None

    def hold(self, build: Build, *, active: bool) -> None:
        """Give ``build`` a slot without queueing (a build found again after a restart)."""
        if active and build.image not in self.active:
            self.active[build.image] = build
        self._slots[build.id] = build

    def startable(self) -> list[Build]:
        """Take the waiting builds that may start now off the queue; each now holds a slot.

        Owners take turns: the next slot goes to the waiting owner (below their running limit)
        who was served longest ago, never-served owners first, each owner's builds oldest first,
        until the global limit is reached.
        """
        started: list[Build] = []
        while self._lines and self.running_count() < self.limits.max_concurrent_builds:
            candidates = [
                owner
                for owner in self._lines
                if self.running_count(owner) < self.limits.max_builds_per_owner
            ]
            if not candidates:
                break
            owner = min(candidates, key=self._last_served)  # ties: the line queued first
            line = self._lines[owner]
            build = line.popleft()
            if not line:
                del self._lines[owner]
            self._waiting -= 1
            self._order = None
            self._tick += 1
            self._served[owner] = self._tick
            self._slots[build.id] = build
            started.append(build)
        return started

    def _last_served(self, owner: str) -> int:
        return self._served.get(owner, -1)

    def discard(self, build: Build) -> None:
        """Take a build off the queue if it waits there (cancelled before it started)."""
        line = self._lines.get(build.owner)
        if line is None or build not in line:
            return
        line.remove(build)
        if not line:
            del self._lines[build.owner]
        self._waiting -= 1
        self._order = None

    def release(self, build: Build) -> None:
        """``build`` is done: free its slot and its image."""
        self.discard(build)
        if self.active.get(build.image) is build:
            del self.active[build.image]
        held = self._slots.pop(build.id, None)
        if (
            held is not None
            and build.state in (BuildState.BUILT, BuildState.FAILED)
            and build.started is not None
            and build.finished is not None
        ):
            self._durations.append(max(0.0, build.finished - build.started))
        if build.owner not in self._lines and not self.running_count(build.owner):
            self._served.pop(build.owner, None)  # nothing left: forget the owner (memory bounded)


def _interleave(lines: list[deque[Build]]) -> list[Build]:
    """Round-robin over the lines: the first of each, then the second of each, ..."""
    order: list[Build] = []
    depth = 0
    while True:
        row = [line[depth] for line in lines if len(line) > depth]
        if not row:
            return order
        order.extend(row)
        depth += 1
