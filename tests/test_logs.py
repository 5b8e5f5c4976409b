"""The bounded, followable log buffer."""

from __future__ import annotations

import asyncio

from r2d_core.logs import LogBuffer


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


async def test_bounded_buffer_keeps_the_newest_lines():
    log = LogBuffer(max_lines=10)
    for i in range(25):
        log.append("building", str(i))
    log.close()
    assert log.total == 25 and log.first == 15
    assert [line.n for line in log.lines()] == list(range(15, 25))
    assert await collect(log, since=3) == list(
        range(15, 25)
    )  # too far behind: from the oldest kept
    assert log.tail(3) == ["22", "23", "24"]


async def test_wait_for_change_returns_on_close():
    log = LogBuffer()
    waiter = asyncio.create_task(log.wait_for_change())
    await asyncio.sleep(0)
    assert not waiter.done()
    log.close()
    await asyncio.wait_for(waiter, 1)
