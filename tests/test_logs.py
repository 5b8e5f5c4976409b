"""The bounded, followable log buffer."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from r2d_core.logs import (
    LINE_OVERHEAD,
    LineSplitter,
    LogBudget,
    LogBuffer,
    format_bytes,
    split_message,
)


async def collect(log: LogBuffer, since: int = 0) -> list[int]:
    return [line.n async for line in log.follow(since)]


async def test_replay_then_live_then_end():
    log = LogBuffer()
    for i in range(3):
        log.append("fetching", f"line {i}")
    follower = asyncio.create_task(collect(log))
    await asyncio.sleep(0)
    for i in range(3, 6):
        log.append("building", f"line {i}")
        await asyncio.sleep(0)
    log.close()
    assert await asyncio.wait_for(follower, 2) == [0, 1, 2, 3, 4, 5]
    assert await collect(log, since=4) == [4, 5]  # resume after line 3
    assert await collect(log, since=99) == []


async def test_many_followers_get_every_line_in_order():
    log = LogBuffer()
    followers = [asyncio.create_task(collect(log, since=i % 3)) for i in range(200)]
    for i in range(50):
        log.append("building", str(i))
        if i % 7 == 0:
            await asyncio.sleep(0)
    log.notify()  # a state change wakes followers without adding a line
    log.close()
    results = await asyncio.wait_for(asyncio.gather(*followers), 5)
    for i, result in enumerate(results):
        assert result == list(range(i % 3, 50))


async def test_wait_for_change_returns_on_close():
    log = LogBuffer()
    waiter = asyncio.create_task(log.wait_for_change())
    await asyncio.sleep(0)
    assert not waiter.done()
    log.close()
    await asyncio.wait_for(waiter, 1)


# ---- bounded in bytes: head + marker + tail ---------------------------------------------------
def fill(log: LogBuffer, count: int, width: int = 40) -> list[str]:
    messages = [f"{i:08d} " + "x" * (width - 9) for i in range(count)]
    for i, message in enumerate(messages):
        log.append("building" if i else "fetching", message)
    return messages


def test_head_marker_tail_count_exactly():
    log = LogBuffer(max_bytes=200_000)
    messages = fill(log, 20_000)
    kept = log.lines()
    markers = [line for line in kept if line.omitted is not None]
    assert len(markers) == 1
    marker = markers[0]
    head = [line for line in kept if line.n < marker.n and line.omitted is None]
    tail = [line for line in kept if line.n > marker.n]
    # the head is the log's beginning, the tail its end, with no hole but the one the marker names
    assert [line.n for line in head] == list(range(len(head))) and head
    assert [line.n for line in tail] == list(range(marker.n + 1, 20_000)) and tail
    omitted = range(len(head), marker.n + 1)
    assert marker.omitted.first == len(head) and marker.omitted.last == marker.n
    assert marker.omitted.lines == len(omitted) == 20_000 - len(head) - len(tail)
    assert marker.omitted.bytes == sum(len(messages[i]) + 1 for i in omitted)
    assert marker.message == (
        f"… {len(omitted):,} lines ({format_bytes(marker.omitted.bytes)}) omitted "
        f"(lines {len(head) + 1:,}-{marker.n + 1:,}) …"
    )
    assert [line.message for line in head + tail] == [messages[line.n] for line in head + tail]
    # memory bounded: the charge (text + per-line overhead) stays within the limit
    assert log.cost <= 200_000
    assert log.cost == sum(sys.getsizeof(line.message) + LINE_OVERHEAD for line in head + tail)
    assert log.summary() == {
        "lines": 20_000,
        "bytes": sum(len(m) + 1 for m in messages),
        "omitted_lines": marker.omitted.lines,
        "omitted_bytes": marker.omitted.bytes,
    }
    assert log.tail(2) == messages[-2:]


def test_small_log_is_kept_whole_without_marker():
    log = LogBuffer(max_bytes=1_000_000)
    messages = fill(log, 100)
    assert [line.message for line in log.lines()] == messages
    assert log.marker() is None and log.summary()["omitted_lines"] == 0


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 41_000_000, 9_950_000, 2 * 10**12)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "41 MB",
        "9.9 MB",
        "2000 GB",
    ]


def test_over_long_lines_are_split_never_dropped():
    log = LogBuffer(max_bytes=1_000_000, max_line_bytes=65536)
    big = "".join(chr(ord("a") + i % 26) for i in range(5_000_000))
    log.append("building", "before")
    log.append("building", big)
    log.append("building", "after")
    kept = log.lines()
    assert kept[0].message == "before" and kept[-1].message == "after"
    assert all(len(line.message.encode()) <= 65536 for line in kept)
    assert log.total == 2 + -(-5_000_000 // 65536)  # 77 pieces
    marker = next(line for line in kept if line.omitted)
    head = [line.message for line in kept if line.n < marker.n][1:]
    tail = [line.message for line in kept if line.n > marker.n][:-1]
    assert big.startswith("".join(head)) and big.endswith("".join(tail))  # in order
    kept_bytes = sum(line.size for line in kept if not line.omitted)
    assert kept_bytes + marker.omitted.bytes == log.total_bytes == 7 + 5_000_000 + 77 + 6


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_split_respects_utf8_characters(char):
    text = ("ab" + char) * 10_000
    pieces = split_message(text, 1000)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= 1000 for p in pieces)


# ---- resume ids across the gap ------------------------------------------------------------------
async def test_resume_ids_are_monotone_and_meaningful_across_the_gap():
    log = LogBuffer(max_bytes=100_000)
    fill(log, 5_000)
    log.close()
    replay = [line async for line in log.follow(0)]
    ids = [line.n for line in replay]
    assert ids == sorted(set(ids))  # strictly increasing
    marker = next(line for line in replay if line.omitted)
    # resume right after the marker: the first tail line, no marker again
    after = [line async for line in log.follow(marker.n + 1)]
    assert after[0].n == marker.n + 1 and not any(line.omitted for line in after)
    # resume at a line that is gone: the marker first, then the tail
    inside = [line async for line in log.follow(marker.omitted.first + 10)]
    assert inside[0].omitted == marker.omitted and inside[1].n == marker.n + 1
    # resume within the head: the rest of the head, then the marker
    head = [line async for line in log.follow(3)]
    assert head[0].n == 3 and head[marker.omitted.first - 3].omitted is not None


async def test_a_follower_that_falls_behind_gets_the_marker():
    log = LogBuffer(max_bytes=60_000)
    seen = []
    fill(log, 10)
    follower = log.follow(0)
    seen.append(await follower.__anext__())  # line 0, then it stalls while 5,000 lines arrive
    fill(log, 5_000)
    log.close()
    seen += [line async for line in follower]
    ids = [line.n for line in seen]
    assert ids == sorted(set(ids)) and ids[-1] == 5_009
    assert sum(1 for line in seen if line.omitted) == 1


def test_read_returns_bounded_chunks():
    log = LogBuffer(max_bytes=10_000_000)
    fill(log, 10_000, width=100)
    cursor, chunks = 0, 0
    while chunk := log.read(cursor, max_bytes=64 * 1024):
        assert sum(line.size for line in chunk) <= 64 * 1024
        assert chunk[0].n == cursor
        cursor, chunks = chunk[-1].n + 1, chunks + 1
    assert cursor == 10_000
    assert -(-10_000 * 101 // (64 * 1024)) <= chunks <= 10_000 * 101 // (64 * 1024 - 101) + 1


# ---- the shared budget --------------------------------------------------------------------------
def test_budget_compacts_the_oldest_finished_logs_first():
    budget = LogBudget(3_000_000, compact_bytes=100_000, minimum_bytes=20_000)
    logs = []
    for _ in range(6):
        log = LogBuffer(max_bytes=1_000_000, budget=budget)
        fill(log, 5_000, width=60)
        log.close()
        logs.append(log)
    running = LogBuffer(max_bytes=1_000_000, budget=budget)
    fill(running, 5_000, width=60)
    assert budget.used == sum(log.cost for log in [*logs, running]) <= 3_000_000
    # the newest finished log and the running one are whole-sized; the oldest were compacted,
    # each still with its head, marker and tail
    assert running.cost > 900_000 and logs[-1].cost > 900_000
    assert logs[0].cost <= 100_000
    for log in logs[:2]:
        kept = log.lines()
        assert kept[0].n == 0 and kept[-1].n == 4_999
        assert sum(1 for line in kept if line.omitted) == 1
    # a log the manager forgot (garbage) leaves the budget
    used, gone = budget.used, logs.pop(0).cost
    gc.collect()
    assert budget.used == used - gone and len(budget) == 6


def test_budget_trims_running_logs_last():
    budget = LogBudget(1_000_000, compact_bytes=100_000, minimum_bytes=20_000)
    old = LogBuffer(max_bytes=600_000, budget=budget)
    fill(old, 5_000)
    old.close()
    live = [LogBuffer(max_bytes=600_000, budget=budget) for _ in range(2)]
    for log in live:
        fill(log, 5_000)
    assert old.cost <= 20_000  # finished: down to the minimum before any running log shrinks
    assert budget.used <= 1_000_000 + 600_000
    fill(live[0], 5_000)
    assert budget.used <= 1_000_000


# ---- raw output into lines ----------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_line_splitter_bounds_pending_and_keeps_the_last_line(chunk_size):
    text = "a\n\nbcdefghij\n" + "x" * 25 + "\nend-without-newline"
    splitter = LineSplitter(max_chars=10)
    lines = []
    for i in range(0, len(text), chunk_size):
        lines += splitter.feed(text[i : i + chunk_size])
        assert splitter._pending <= 10
    last = splitter.flush()
    assert lines == ["a", "", "bcdefghij", "x" * 10, "x" * 10, "x" * 5, "end-withou"]
    assert last == "t-newline"
    assert splitter.flush() is None


def test_line_splitter_line_of_exactly_the_limit():
    splitter = LineSplitter(max_chars=4)
    assert splitter.feed("abcd") == [] and splitter.feed("\nef") == ["abcd"]
    assert splitter.flush() == "ef"


async def test_compacting_a_log_kept_whole_and_replays_are_identical():
    log = LogBuffer(max_bytes=10_000_000)
    messages = fill(log, 2_000)
    log.close()
    assert log.marker() is None
    log.compact(50_000)  # what the budget does to an old finished log
    assert log.cost <= 50_000
    first = [line async for line in log.follow(0)]
    assert first == [line async for line in log.follow(0)]  # the marker too: same text, same time
    marker = next(line for line in first if line.omitted)
    assert marker.omitted.last == 1_999 - sum(1 for line in first if line.n > marker.n)
    assert [line.message for line in first if not line.omitted] == [
        messages[line.n] for line in first if not line.omitted
    ]
    assert first[-1].message == messages[-1] and first[0].message == messages[0]


def test_budget_keeps_the_newest_finished_logs_whole():
    """Steady state of a busy service: old logs shrink to the minimum before a new one is cut."""
    budget = LogBudget(3_000_000, compact_bytes=300_000, minimum_bytes=20_000)
    logs = []
    for _ in range(12):
        log = LogBuffer(max_bytes=1_000_000, budget=budget)
        fill(log, 5_000, width=60)
        log.close()
        logs.append(log)
        assert budget.used <= 3_000_000
    assert logs[-1].cost > 900_000 and logs[-2].cost > 900_000
    assert all(log.cost <= 20_000 for log in logs[:6])
    for log in logs:  # every one still has its first and last line, and one marker between
        kept = log.lines()
        assert kept[0].n == 0 and kept[-1].n == 4_999
        assert sum(1 for line in kept if line.omitted) == 1


def test_the_managers_budget_is_a_metric():
    from r2d_core.manager import BuildManager
    from r2d_core.metrics import REGISTRY

    manager = BuildManager(max_total_log_bytes=8 * 2**20)
    log = manager._new_log()
    fill(log, 1_000)
    assert REGISTRY.get_sample_value("r2d_log_bytes") == manager.log_budget.used == log.cost > 0
