"""A bounded, followable log buffer: one per build, any number of async followers.

Followers get every line in order: a replay from line ``since`` and then live lines, with no line lost
or repeated (unless the follower falls further behind than the buffer holds, in which case it resumes
at the oldest line kept). Waking followers costs one future per appended batch, not one per follower.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["LogBuffer", "LogLine"]


@dataclass(frozen=True)
class LogLine:
    """One line of a build log; ``n`` is its 0-based number in the whole log."""

    n: int
    phase: str
    message: str
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, object]:
        return {"n": self.n, "phase": self.phase, "message": self.message}


class LogBuffer:
    """Keeps the last ``max_lines`` lines; ``follow()`` replays then waits for more."""

    def __init__(self, max_lines: int = 20000) -> None:
        self._lines: deque[LogLine] = deque(maxlen=max_lines)
        self._total = 0
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def total(self) -> int:
        """How many lines were ever appended (the next line's number)."""
        return self._total

    @property
    def first(self) -> int:
        """The number of the oldest line still kept."""
        return self._lines[0].n if self._lines else self._total

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, phase: str, message: str) -> LogLine:
        if self._closed:
            raise RuntimeError("log is closed")
        line = LogLine(self._total, phase, message)
        self._lines.append(line)
        self._total += 1
        self._wake()
        return line

    def close(self) -> None:
        """No more lines: followers finish after replaying what is left."""
        self._closed = True
        self._wake()

    def notify(self) -> None:
        """Wake followers without a new line (the build's state changed)."""
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lines(self, since: int = 0) -> list[LogLine]:
        """The kept lines numbered ``since`` and later."""
        start = max(since, self.first) - self.first
        if start <= 0:
            return list(self._lines)
        return [self._lines[i] for i in range(start, len(self._lines))]

    def tail(self, count: int) -> list[str]:
        """The last ``count`` messages."""
        return [line.message for line in list(self._lines)[-count:]] if count > 0 else []

    async def wait_for_change(self) -> None:
        """Return when a line is appended or the log is closed."""
        if self._closed:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    async def follow(self, since: int = 0) -> AsyncIterator[LogLine]:
        """Yield lines from ``since`` on, then live lines until the log is closed."""
        cursor = max(since, 0)
        while True:
            if cursor < self._total:
                for line in self.lines(cursor):
                    yield line
                    cursor = line.n + 1
                continue
            if self._closed:
                return
            await self.wait_for_change()
