"""Fair queue and build timeouts, on the real private dockerd and git daemon."""

from __future__ import annotations

import asyncio

import pytest

from r2d_core.errors import RateLimited
from r2d_core.models import BuildState
from tests.test_manager import make_manager, messages, wait_done, wait_for_line  # noqa: F401

pytestmark = [pytest.mark.docker]


async def test_fair_queue_between_two_owners(make_manager, git_server):  # noqa: F811
    m = await make_manager(
        max_concurrent_builds=1, max_builds_per_owner=1, max_queued_builds_per_owner=2
    )
    repo = git_server.url("hello")
    hog = [(await m.submit(repo=repo, owner="hog", name=f"fair{i}")).build for i in range(3)]
    # one running, two waiting: the hog's next build is refused, naming the limit
    with pytest.raises(RateLimited, match="max_queued_builds_per_owner = 2") as info:
        await m.submit(repo=repo, owner="hog", name="fair3")
    assert info.value.retry_after
    # ... while another owner still gets in, and goes first once the slot is free
    other = (await m.submit(repo=repo, owner="other", name="fair")).build
    assert m.queue_position(other) == 0 and m.queue_position(hog[1]) == 1
    await asyncio.gather(*(wait_done(b, timeout=300) for b in [*hog, other]))
    assert all(b.state == BuildState.BUILT for b in [*hog, other])
    assert hog[0].finished <= other.started < hog[1].started
