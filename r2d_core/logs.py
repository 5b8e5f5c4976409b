"""A build log bounded in bytes: one per build, any number of async followers, one shared budget.

A :class:`LogBuffer` keeps the HEAD of a build's log (its first bytes: which repository, which
buildpack) and its TAIL (its last bytes: where a build fails), and in between, once the log outgrows
its limit, one truncation marker line that says exactly what was dropped::

    … 180,000 lines (41 MB) omitted (lines 2,101-182,100) …

Numbers and resuming: every line has its 0-based number ``n`` in the whole log, kept lines and dropped
ones alike. The marker carries the number of the LAST omitted line, so the numbers a reader gets are
strictly increasing across the gap (head … marker … tail) and "resume after the marker" (``since =
marker.n + 1``) continues with the first line of the tail. A reader that resumes at a line that has
been dropped since gets the marker first, then the tail: nothing is skipped without notice.

Bounds: a line longer than ``max_line_bytes`` is split into several lines (never dropped); each line
is charged its Python memory (``sys.getsizeof`` of the text plus a fixed per-line overhead, measured),
so ``max_bytes`` bounds the memory a log holds, not just its text. A :class:`LogBudget` shared by all
buffers bounds their sum: when it is exceeded, the oldest finished logs are compacted to a smaller
head and tail first, then (rarely) the oldest running ones.

Followers get every kept line in order: a replay from line ``since`` in byte-bounded chunks
(:meth:`LogBuffer.read`) and then live lines. Waking followers costs one future per appended batch,
not one per follower.
"""

from __future__ import annotations

import asyncio
import sys
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from itertools import islice

__all__ = [
    "LINE_OVERHEAD",
    "MAX_RAW_LINE",
    "LineSplitter",
    "LogBudget",
    "LogBuffer",
    "LogLine",
    "Omission",
    "format_bytes",
    "split_message",
]

#: memory a kept line costs besides its text: the LogLine object, its ints/float and the deque slot
#: (measured with tracemalloc on CPython 3.11: ~136 bytes)
LINE_OVERHEAD = 144

#: a line longer than this (UTF-8 bytes) is split into several lines
DEFAULT_MAX_LINE_BYTES = 64 * 1024


#: a builder's raw output line (a repo2docker JSON record) longer than this many characters is cut
#: into pieces of this size before it is parsed: a JSON record up to 8 Mi characters (a 5 MB line
#: of build output) still arrives whole, and no single line can take more memory than this
MAX_RAW_LINE = 8 * 1024 * 1024


class LineSplitter:
    """Cut a stream of text chunks into lines (without the newline), none over ``max_chars``.

    Unlike ``str.split`` on an ever-growing buffer, the pending text is kept as a list of parts
    (no quadratic copying) and is never longer than ``max_chars``: output with no newline at all is
    cut into pieces of ``max_chars``. :meth:`flush` returns the last line if the output did not end
    with a newline (it is kept, not dropped).
    """

    def __init__(self, max_chars: int = MAX_RAW_LINE) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be positive")
        self.max_chars = max_chars
        self._parts: list[str] = []
        self._pending = 0

    def feed(self, chunk: str) -> list[str]:
        lines: list[str] = []
        start = 0
        while start < len(chunk):
            newline = chunk.find("\n", start)
            end = len(chunk) if newline < 0 else newline
            room = self.max_chars - self._pending
            if end - start > room:  # the line goes over the limit: cut it at the limit
                self._parts.append(chunk[start : start + room])
                lines.append("".join(self._parts))
                self._parts, self._pending = [], 0
                start += room
                continue
            if newline < 0:
                self._parts.append(chunk[start:])
                self._pending += len(chunk) - start
                break
            self._parts.append(chunk[start:newline])
            lines.append("".join(self._parts))
            self._parts, self._pending = [], 0
            start = newline + 1
        return lines

    def flush(self) -> str | None:
        """The unfinished last line, if any."""
        if not self._parts:
            return None
        line = "".join(self._parts)
        self._parts, self._pending = [], 0
        return line if line else None


def format_bytes(size: int) -> str:
    """Decimal units, as people say them: 512 B, 3.2 kB, 41 MB, 1.5 GB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _text_bytes(message: str) -> int:
    """The UTF-8 size of ``message`` (ASCII, the common case, without encoding it)."""
    return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))


def split_message(message: str, max_bytes: int = DEFAULT_MAX_LINE_BYTES) -> list[str]:
    """``message`` cut into pieces of at most ``max_bytes`` UTF-8 bytes, at character boundaries."""
    if len(message) * 4 <= max_bytes or _text_bytes(message) <= max_bytes:
        return [message]
    if message.isascii():
        return [message[i : i + max_bytes] for i in range(0, len(message), max_bytes)]
    data = message.encode("utf-8", "surrogatepass")
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a multi-byte character
            end -= 1
        pieces.append(data[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return pieces


@dataclass(frozen=True)
class Omission:
    """What a truncation marker stands for: lines ``first``..``last`` (0-based, inclusive)."""

    first: int
    last: int
    bytes: int

    @property
    def lines(self) -> int:
        return self.last - self.first + 1

    def message(self) -> str:
        return (
            f"… {self.lines:,} lines ({format_bytes(self.bytes)}) omitted "
            f"(lines {self.first + 1:,}-{self.last + 1:,}) …"
        )

    def to_dict(self) -> dict[str, int]:
        return {"lines": self.lines, "bytes": self.bytes, "first": self.first, "last": self.last}


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a build log; ``n`` is its 0-based number in the whole log.

    ``size`` is its size in the raw log (UTF-8 bytes plus the newline). The truncation marker is a
    LogLine too, with ``omitted`` set and ``n`` the number of the last line it stands for.
    """

    n: int
    phase: str
    message: str
    time: float = field(default_factory=time.time)
    size: int = 0
    omitted: Omission | None = None

    @property
    def cost(self) -> int:
        return sys.getsizeof(self.message) + LINE_OVERHEAD

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"n": self.n, "phase": self.phase, "message": self.message}
        if self.omitted is not None:
            data["omitted"] = self.omitted.to_dict()
        return data


class _Account:
    """A buffer's memory charge, shared with the budget (which outlives the buffer)."""

    __slots__ = ("cost",)

    def __init__(self) -> None:
        self.cost = 0


class LogBuffer:
    """Keeps the first ``head_bytes`` and the last bytes up to ``max_bytes`` in all of a build's log.

    ``follow()`` replays, then waits for more.
    """

    def __init__(
        self,
        max_bytes: int = 4 * 1024 * 1024,
        *,
        head_bytes: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        budget: LogBudget | None = None,
    ) -> None:
        if max_line_bytes < 16:
            raise ValueError("max_line_bytes must be at least 16")
        self._head: list[LogLine] = []
        self._tail: deque[LogLine] = deque()
        self._head_open = True  # lines still go to the head
        self._head_cost = 0
        self._tail_cost = 0
        self._gap_first = -1  # number of the first omitted line (-1: nothing omitted)
        self._gap_bytes = 0
        self._gap_phase = ""  # the marker takes the phase and time of the last omitted line
        self._gap_time = 0.0
        self._total = 0
        self._total_bytes = 0
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self.max_line_bytes = max_line_bytes
        self._account = _Account()
        self._set_limits(max_bytes, head_bytes)
        self._budget = budget
        if budget is not None:
            budget._register(self)

    def _set_limits(self, max_bytes: int, head_bytes: int | None) -> None:
        # the tail always keeps the newest line, so a buffer holds at most max_bytes plus one line
        self.max_bytes = max(0, max_bytes)
        head = self.max_bytes // 4 if head_bytes is None else head_bytes
        self.head_bytes = max(0, min(head, self.max_bytes // 2))

    @classmethod
    def restored(
        cls,
        lines: Iterable[LogLine],
        *,
        total: int,
        total_bytes: int,
        budget: LogBudget | None = None,
    ) -> LogBuffer:
        """A closed log holding ``lines`` as a kept log had them (numbers, marker and all).

        For a build's log read back from the registry (:mod:`r2d_core.records`): the lines before
        the marker are the head, the marker's :class:`Omission` is the gap, the rest the tail, so
        a replay (numbers, marker, resume after it) is the very one the original gave.
        """
        kept = list(lines)
        buffer = cls(max(sum(line.cost for line in kept), 64 * 1024), head_bytes=0)
        buffer._head_open = False
        in_head = any(line.omitted is not None for line in kept)
        for line in kept:
            if line.omitted is not None:
                buffer._gap_first = line.omitted.first
                buffer._gap_bytes = line.omitted.bytes
                buffer._gap_phase, buffer._gap_time = line.phase, line.time
                in_head = False
            elif in_head:
                buffer._head.append(line)
                buffer._head_cost += line.cost
            else:
                buffer._tail.append(line)
                buffer._tail_cost += line.cost
        buffer.head_bytes = buffer._head_cost
        buffer._total = max(total, kept[-1].n + 1 if kept else 0)
        buffer._total_bytes = total_bytes
        buffer._closed = True
        if budget is not None:
            buffer.join_budget(budget)
        return buffer

    def join_budget(self, budget: LogBudget) -> None:
        """Count this restored log against ``budget``: what ``restored(budget=...)`` does, for a
        log decoded in a worker thread (the budget is the event loop's to change)."""
        self._budget = budget
        budget._register(self)
        self._charge(0)

    # ---- state -------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """How many lines were ever appended (the next line's number)."""
        return self._total

    @property
    def total_bytes(self) -> int:
        """The size of the whole log, as a raw text log (UTF-8, one newline per line)."""
        return self._total_bytes

    @property
    def first(self) -> int:
        """The number of the oldest line still kept."""
        if self._head:
            return self._head[0].n
        return self._tail[0].n if self._tail else self._total

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cost(self) -> int:
        """The memory the kept lines are charged (what ``max_bytes`` bounds)."""
        return self._head_cost + self._tail_cost

    @property
    def omission(self) -> Omission | None:
        """The lines dropped so far, or None if the whole log is kept."""
        if self._gap_first < 0:
            return None
        last = self._tail[0].n - 1 if self._tail else self._total - 1
        return Omission(self._gap_first, last, self._gap_bytes)

    def marker(self) -> LogLine | None:
        """The truncation marker line, or None if nothing was omitted."""
        omission = self.omission
        if omission is None:
            return None
        return LogLine(
            omission.last, self._gap_phase, omission.message(), self._gap_time, 0, omission
        )

    def summary(self) -> dict[str, int]:
        """Counts for the API: lines and bytes of the whole log and of what was omitted."""
        omission = self.omission
        return {
            "lines": self._total,
            "bytes": self._total_bytes,
            "omitted_lines": omission.lines if omission else 0,
            "omitted_bytes": omission.bytes if omission else 0,
        }

    # ---- writing -----------------------------------------------------------------------------
    def append(self, phase: str, message: str) -> LogLine:
        """Add one line (split into several if it is longer than ``max_line_bytes``)."""
        if self._closed:
            raise RuntimeError("log is closed")
        before = self.cost
        line = None
        for piece in split_message(message, self.max_line_bytes):
            line = LogLine(self._total, phase, piece, time.time(), _text_bytes(piece) + 1)
            self._total += 1
            self._total_bytes += line.size
            self._add(line)
            self._trim_tail()
        self._charge(before)
        self._wake()
        assert line is not None
        return line

    def _add(self, line: LogLine) -> None:
        cost = line.cost
        if self._head_open:
            if self._head_cost + cost <= self.head_bytes:
                self._head.append(line)
                self._head_cost += cost
                return
            self._head_open = False
        self._tail.append(line)
        self._tail_cost += cost

    def _omit(self, line: LogLine) -> None:
        if self._gap_first < 0 or line.n < self._gap_first:
            self._gap_first = line.n
        self._gap_bytes += line.size

    def _trim_tail(self) -> None:
        limit = self.max_bytes - self._head_cost
        while self._tail_cost > limit and len(self._tail) > 1:
            line = self._tail.popleft()
            self._tail_cost -= line.cost
            self._omit(line)
            self._gap_phase, self._gap_time = line.phase, line.time

    def compact(self, max_bytes: int) -> None:
        """Shrink to at most ``max_bytes`` (head and tail both shrink); also lowers the limit."""
        before = self.cost
        head = max_bytes // 4
        self._set_limits(min(max_bytes, self.max_bytes), min(head, self.head_bytes))
        self._head_open = False  # a compacted log keeps its head as it is now
        while self._head and self._head_cost > self.head_bytes:
            line = self._head.pop()
            self._head_cost -= line.cost
            if self._gap_first < 0:  # nothing omitted yet: the head runs on into the tail
                self._tail.appendleft(line)
                self._tail_cost += line.cost
            else:  # lines between the head and the gap join the gap
                self._omit(line)
        self._trim_tail()
        self._charge(before, trim=False)
        self._wake()

    def _charge(self, before: int, trim: bool = True) -> None:
        delta = self.cost - before
        self._account.cost += delta
        if self._budget is not None and delta:
            self._budget._change(delta, trim)

    def close(self) -> None:
        """No more lines: followers finish after replaying what is left."""
        self._closed = True
        self._wake()
        if self._budget is not None:
            self._budget.trim()

    def notify(self) -> None:
        """Wake followers without a new line (the build's state changed)."""
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- reading -----------------------------------------------------------------------------
    def _iter(self, since: int) -> Iterable[LogLine]:
        """Kept lines numbered ``since`` and later, with the marker where the gap is."""
        since = max(since, 0)
        if self._head and since <= self._head[-1].n:
            yield from islice(self._head, max(0, since - self._head[0].n), None)
        marker = self.marker()
        if marker is not None and since <= marker.n:
            yield marker
        if self._tail:
            yield from islice(self._tail, max(0, since - self._tail[0].n), None)

    def read(self, since: int = 0, max_bytes: int = 64 * 1024) -> list[LogLine]:
        """Kept lines from ``since`` on, at most ``max_bytes`` of text (at least one line)."""
        chunk: list[LogLine] = []
        size = 0
        for line in self._iter(since):
            size += line.size or len(line.message) + 1
            if chunk and size > max_bytes:
                break
            chunk.append(line)
        return chunk

    def lines(self, since: int = 0) -> list[LogLine]:
        """The kept lines numbered ``since`` and later (with the marker, if lines were omitted)."""
        return list(self._iter(since))

    def tail(self, count: int) -> list[str]:
        """The last ``count`` messages (the marker counts as one)."""
        if count <= 0:
            return []
        out: list[str] = [line.message for line in islice(reversed(self._tail), count)]
        if len(out) < count and (marker := self.marker()) is not None:
            out.append(marker.message)
        if len(out) < count:
            out.extend(line.message for line in islice(reversed(self._head), count - len(out)))
        return out[::-1]

    async def wait_for_change(self) -> None:
        """Return when a line is appended or the log is closed."""
        if self._closed:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    async def follow(self, since: int = 0, chunk_bytes: int = 64 * 1024) -> AsyncIterator[LogLine]:
        """Yield lines from ``since`` on, then live lines until the log is closed."""
        cursor = max(since, 0)
        while True:
            if cursor < self._total:
                for line in self.read(cursor, chunk_bytes):
                    yield line
                    cursor = line.n + 1
                continue
            if self._closed:
                return
            await self.wait_for_change()


class LogBudget:
    """The memory all build logs may hold together (``max_bytes``; 0 = unbounded).

    When the sum is over, logs are compacted, oldest first: finished logs but the newest quarter
    to ``compact_bytes``, then finished logs to ``minimum_bytes``, then running logs to
    ``compact_bytes``, until the sum is below 90% of the budget (so that a busy service does not
    compact on every line). Logs leave the budget
    when they are garbage-collected (the manager forgot the build and no follower holds it).
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        compact_bytes: int = 512 * 1024,
        minimum_bytes: int = 32 * 1024,
    ) -> None:
        self.max_bytes = max_bytes
        self.compact_bytes = compact_bytes
        self.minimum_bytes = minimum_bytes
        self.used = 0
        self.compactions = 0
        # when compaction cannot get under the budget (all logs as small as they may get), the next
        # attempt waits until the sum grew by another compact_bytes: no scan of every log per line
        self._retry_at = 0
        self._buffers: weakref.WeakValueDictionary[int, LogBuffer] = weakref.WeakValueDictionary()
        self._next = 0

    def __len__(self) -> int:
        return len(self._buffers)

    def _register(self, buffer: LogBuffer) -> None:
        key, self._next = self._next, self._next + 1
        self._buffers[key] = buffer
        weakref.finalize(buffer, self._release, buffer._account)

    def _release(self, account: _Account) -> None:
        self.used -= account.cost
        account.cost = 0
        self._retry_at = 0

    def _change(self, delta: int, trim: bool) -> None:
        self.used += delta
        if trim and self.max_bytes and self.used > max(self.max_bytes, self._retry_at):
            self.trim()

    def trim(self) -> None:
        """Compact logs, oldest finished first, until the sum is under 90% of the budget."""
        if not self.max_bytes or self.used <= self.max_bytes:
            return
        target = self.max_bytes * 9 // 10
        buffers = list(self._buffers.values())  # registration order: oldest build first
        finished = [b for b in buffers if b.closed]
        running = [b for b in buffers if not b.closed]
        # the most recently finished builds (the ones people still look at, and whose followers
        # may still be replaying) keep their logs longest: the first pass spares the newest quarter
        older = finished[: len(finished) * 3 // 4]
        self._retry_at = 0
        for group, size in (
            (older, self.compact_bytes),
            (finished, self.minimum_bytes),
            (running, self.compact_bytes),
        ):
            for buffer in group:
                if self.used <= target:
                    return
                if buffer.cost > size:
                    buffer.compact(size)
                    self.compactions += 1
        if self.used > target:
            self._retry_at = self.used + self.compact_bytes
