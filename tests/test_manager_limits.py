# ruff: noqa: F811 - the make_manager fixture is imported from tests.test_manager
"""Fair queue and build timeouts, on the real private dockerd and git daemon."""

from __future__ import annotations

import asyncio
import time

import pytest
from traitlets import TraitError

from r2d_core.engine import DockerEngine
from r2d_core.errors import NotFound, RateLimited
from r2d_core.manager import BuildManager
from r2d_core.models import BuildState
from tests.harness import BUSYBOX_IMAGE
from tests.test_manager import make_manager, messages, wait_done, wait_for_line  # noqa: F401

pytestmark = [pytest.mark.docker]


async def test_fair_queue_between_two_owners(make_manager, git_server):
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


def fixture_repo(git_server, name: str, run: str) -> str:
    """A one-step Dockerfile repository (added once per git server)."""
    if name not in git_server.repos:
        git_server.add_repo(name, {"Dockerfile": f"FROM {BUSYBOX_IMAGE}\nRUN {run}\n"})
    return git_server.url(name)


#: never ends, never silent: only the total time limit stops it
FOREVER = "while true; do printf 'r2d-forever\\n'; sleep 1; done"
#: one line, then silence
SILENT = "printf 'r2d-silent\\n'; sleep 600"


async def container_running(docker_host: str, build_id: str) -> bool:
    engine = DockerEngine(host=docker_host)
    try:
        info = await engine.inspect_container(f"r2d-build-{build_id}")
    except NotFound:
        return False
    finally:
        await engine.close()
    return bool(info["State"]["Running"])


async def test_build_timeout_stops_a_build_that_never_ends(make_manager, git_server):
    m = await make_manager(build_timeout=6, build_inactivity_timeout=0, max_builds_per_owner=1)
    repo = fixture_repo(git_server, "forever", FOREVER)
    build = (await m.submit(repo=repo, owner="tim", name="forever")).build
    await wait_done(build, timeout=90)
    assert build.state == BuildState.FAILED
    assert build.error == "build exceeded the time limit of 6 s (c.BuildManager.build_timeout)"
    assert build.finished - build.started < 40
    assert any("r2d-forever" in line for line in messages(build))  # it was really building
    # the slot is free: the owner's next build starts at once
    nxt = (await m.submit(repo=git_server.url("hello"), owner="tim", name="after")).build
    assert nxt.state != BuildState.QUEUED
    await wait_done(nxt)


async def test_inactivity_timeout_stops_a_silent_build_container(
    make_manager, git_server, docker_host
):
    m = await make_manager("docker", build_timeout=0, build_inactivity_timeout=5)
    repo = fixture_repo(git_server, "silent", SILENT)
    build = (await m.submit(repo=repo, owner="sid", name="silent")).build
    await wait_done(build, timeout=90)
    assert build.state == BuildState.FAILED, (build.state, build.error)
    assert build.error == (
        "build printed nothing for 5 s (c.BuildManager.build_inactivity_timeout)"
    )
    assert any("r2d-silent" in line for line in messages(build))
    assert not await container_running(docker_host, build.id)  # stopped, not left building
    assert m.list_builds(states=["fetching", "building", "pushing"]) == []


async def test_recovered_running_build_held_to_the_total_limit(
    make_manager, git_server, docker_host
):
    first = await make_manager("docker", build_timeout=0, build_inactivity_timeout=0)
    repo = fixture_repo(git_server, "forever", FOREVER)
    build = (await first.submit(repo=repo, owner="rex", name="forever")).build
    await wait_for_line(build, "r2d-forever")
    await first.stop()  # the container goes on building
    assert await container_running(docker_host, build.id)
    elapsed = time.time() - build.started
    second = await make_manager("docker", build_timeout=max(2, int(elapsed) + 1))
    again = second.get_build(build.id)
    await wait_done(again, timeout=60)
    assert again.state == BuildState.FAILED
    assert "exceeded the time limit" in again.error and "build_timeout" in again.error
    assert not await container_running(docker_host, build.id)


async def test_build_container_killed_for_memory_says_so_live_and_recovered(
    make_manager, git_server, docker_host
):
    """A build container over its memory limit (c.DockerBuilder.extra_host_config) is killed by
    the kernel: the build says it ran out of memory, not only "exit status 137"; so does the
    same build found again by the next service process."""
    first = await make_manager("docker", start=False)
    limit = 6 * 2**20  # the least Docker accepts: the build container's Python cannot start
    first.builder.extra_host_config = {"Memory": limit, "MemorySwap": limit}
    await first.start()
    build = (await first.submit(repo=git_server.url("hello"), owner="mem", name="oom")).build
    await wait_done(build, timeout=90)
    assert build.state == BuildState.FAILED
    assert build.exit_code == 137, (build.exit_code, build.error)
    assert build.error == "the build ran out of memory (killed by the kernel's OOM killer)"
    await first.stop()
    second = await make_manager("docker")
    again = second.get_build(build.id)
    assert again.recovered and again.state == BuildState.FAILED
    assert again.error == build.error


@pytest.mark.parametrize("trait", ["build_timeout", "build_inactivity_timeout"])
def test_timeouts_validated_and_from_env(trait, monkeypatch):
    with pytest.raises(TraitError, match=f"{trait} must be 0"):
        BuildManager(**{trait: -1})
    monkeypatch.setenv(f"R2D_{trait.upper()}", "12.5")
    assert getattr(BuildManager(), trait) == 12.5
    assert getattr(BuildManager(**{trait: 0}), trait) == 0  # 0 = off
