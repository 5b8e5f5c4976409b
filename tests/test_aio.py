"""r2d_core.aio: the deadline used where Python 3.10 has no ``asyncio.timeout``."""

from __future__ import annotations

import asyncio

import pytest

from r2d_core.aio import timeout_compat


async def test_deadline_for_python_310_times_out_and_passes_other_cancels_on():
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        async with timeout_compat(0.05):
            await asyncio.sleep(5)
    assert loop.time() - started < 2
    async with timeout_compat(5):
        await asyncio.sleep(0)  # within the deadline: nothing raised, the timer is cancelled

    async def block() -> None:
        async with timeout_compat(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(block())
    await asyncio.sleep(0.01)
    task.cancel()  # a cancel from outside stays a cancel, not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    async with timeout_compat(None):
        await asyncio.sleep(0)  # None: no deadline at all
