"""``asyncio.timeout`` on every supported Python (3.10 has none: the TLJH plugin runs in the Hub's
environment, Python 3.10 on Ubuntu 22.04).

:func:`timeout` is ``asyncio.timeout`` where it exists, else :func:`timeout_compat`: the block's
task is cancelled at the deadline and :class:`asyncio.TimeoutError` raised. Catch
``asyncio.TimeoutError``, which on 3.11+ is the builtin ``TimeoutError`` and on 3.10 is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["timeout", "timeout_compat"]


@contextlib.asynccontextmanager
async def timeout_compat(seconds: float | None) -> AsyncIterator[None]:
    """The block may run ``seconds`` (None: no limit); one timer, not the extra task
    ``asyncio.wait_for`` makes."""
    if seconds is None:
        yield
        return
    task = asyncio.current_task()
    assert task is not None, "timeout_compat() is used inside a task"
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(max(0.0, seconds), expire)
    try:
        yield
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        timer.cancel()


timeout: Callable[[float | None], Any] = getattr(asyncio, "timeout", timeout_compat)
