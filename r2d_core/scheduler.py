"""The scheduler: builds waiting for a slot, the slots they hold, one build per image.

Pure bookkeeping, no Docker and no tasks: :class:`~r2d_core.manager.BuildManager` asks
:meth:`Scheduler.startable` which waiting builds may start now, starts them, and hands each slot
back with :meth:`Scheduler.release` when its build is done. The limits are read live from the
manager's traits (:class:`SchedulerLimits`), so a changed setting applies at the next decision.
"""

from __future__ import annotations

from typing import Protocol

from .errors import RateLimited
from .models import Build

__all__ = ["Scheduler", "SchedulerLimits"]


class SchedulerLimits(Protocol):
    """The limits the scheduler enforces: BuildManager's traits of the same names."""

    max_concurrent_builds: int
    max_builds_per_owner: int
    max_queued_builds: int


class Scheduler:
    """Waiting builds (in order), builds holding a slot, and the build in progress per image."""

    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self._queue: list[Build] = []
        #: build id -> build, for every build holding a slot (running, or followed after a restart)
        self._slots: dict[str, Build] = {}
        #: image reference -> its queued or running build (a second request joins it)
        self.active: dict[str, Build] = {}

    # ---- queries ----------------------------------------------------------------------------------
    @property
    def waiting(self) -> list[Build]:
        """Waiting builds, in the order they were queued."""
        return list(self._queue)

    def is_waiting(self, build: Build) -> bool:
        return build in self._queue

    def queue_position(self, build: Build) -> int | None:
        """0 for the next build to start; None when ``build`` is not waiting."""
        try:
            return self._queue.index(build)
        except ValueError:
            return None

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

    # ---- changes ----------------------------------------------------------------------------------
    def check_room(self) -> None:
        """Raise :class:`RateLimited` when no more builds may wait."""
        if len(self._queue) >= self.limits.max_queued_builds:
            raise RateLimited(
                f"{len(self._queue)} builds are waiting already; try again later", retry_after=30
            )

    def enqueue(self, build: Build) -> None:
        """Add a new build at the end of the queue; it becomes its image's active build."""
        self.active[build.image] = build
        self._queue.append(build)

    def hold(self, build: Build, *, active: bool) -> None:
        """Give ``build`` a slot without queueing (a build found again after a restart)."""
        if active:
            self.active[build.image] = build
        self._slots[build.id] = build

    def startable(self) -> list[Build]:
        """Take the waiting builds that may start now off the queue; each now holds a slot.

        In queue order, skipping an owner at their limit, until the global limit is reached.
        """
        started: list[Build] = []
        for build in list(self._queue):
            if self.running_count() >= self.limits.max_concurrent_builds:
                break
            if self.running_count(build.owner) >= self.limits.max_builds_per_owner:
                continue
            self._queue.remove(build)
            self._slots[build.id] = build
            started.append(build)
        return started

    def discard(self, build: Build) -> None:
        """Take a build off the queue if it waits there (cancelled before it started)."""
        if build in self._queue:
            self._queue.remove(build)

    def release(self, build: Build) -> None:
        """``build`` is done: free its slot and its image."""
        self.discard(build)
        if self.active.get(build.image) is build:
            del self.active[build.image]
        self._slots.pop(build.id, None)
