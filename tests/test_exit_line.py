"""The fetch stage's exit line: a DockerBuilder build ends on it, not when the engine has taken the
container down (~40 ms later); a line without the build's nonce is hidden and ends nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from r2d_core.builders import BuildProcess, LocalProcessBuilder
from r2d_core.engine import DockerEngine
from r2d_core.fetch import EXIT_PHASE
from r2d_core.models import Build, BuildState
from tests.test_manager import make_manager, messages, wait_done  # noqa: F401 - fixture

pytestmark = [pytest.mark.docker]

NONCE = "n0nce-of-this-build"


def exit_line(status: object, nonce: object = NONCE) -> str:
    return json.dumps({"phase": EXIT_PHASE, "status": status, "nonce": nonce})


class _Scripted(BuildProcess):
    """Prints ``lines``, then exits with ``status`` (None: never exits, as a container the engine
    has not reported yet)."""

    def __init__(self, lines: list[str], status: int | None) -> None:
        self.lines = lines
        self.status = status
        self.exit_nonce = NONCE

    async def output(self) -> AsyncIterator[str]:
        for line in self.lines:
            yield line

    async def wait(self) -> int:
        if self.status is None:
            await asyncio.Event().wait()  # forever
        assert self.status is not None
        return self.status

    async def cancel(self) -> None:
        self.status = -9


def scripted(lines: list[str], status: int | None) -> type[LocalProcessBuilder]:
    class Scripted(LocalProcessBuilder):
        async def start(self, build: Build) -> BuildProcess:
            return _Scripted(lines, status)

    return Scripted


async def test_the_build_ends_on_its_exit_line_before_the_process_is_reported_gone(
    make_manager,  # noqa: F811
    git_server,
):
    lines = ['{"phase": "building", "message": "step 1"}', exit_line(3)]
    m = await make_manager(builder_class=scripted(lines, None))
    build = (await m.submit(repo=git_server.url("hello"), owner="ending", name="early")).build
    await asyncio.wait_for(wait_done(build), 20)  # before: waited for an exit that never came
    assert build.state == BuildState.FAILED and build.exit_code == 3
    assert "status 3" in build.error
    assert messages(build)[:1] == ["step 1"], messages(build)
    assert not any(EXIT_PHASE in message for message in messages(build))


@pytest.mark.parametrize(
    "forged",
    [
        exit_line(0, "not-the-nonce"),
        exit_line(0, None),
        exit_line("0"),
        exit_line(True),
        exit_line(256),
        '{"phase": "r2d-exit"}',
    ],
)
async def test_an_exit_line_without_the_nonce_ends_nothing_and_is_hidden(
    make_manager,  # noqa: F811
    git_server,
    forged,
):
    lines = [forged, '{"phase": "building", "message": "still going"}']
    m = await make_manager(builder_class=scripted(lines, 5))
    build = (await m.submit(repo=git_server.url("hello"), owner="ending", name="forged")).build
    await asyncio.wait_for(wait_done(build), 20)
    assert build.exit_code == 5  # the process's own status, after its last line
    assert messages(build)[0] == "still going", messages(build)  # the forged line left no trace
    assert not any(EXIT_PHASE in message for message in messages(build))


async def test_a_docker_build_prints_its_exit_line_and_the_log_keeps_none(
    make_manager,  # noqa: F811
    git_server,
    docker_host,
):
    m = await make_manager("docker")
    build = (
        await m.submit(repo=git_server.url("hello"), ref="main", owner="ending", name="docker")
    ).build
    await wait_done(build)
    engine = DockerEngine(host=docker_host)
    try:
        assert build.state == BuildState.BUILT, build.error
        assert build.exit_code == 0
        assert not [m for m in messages(build) if EXIT_PHASE in m], messages(build)[-5:]
        # the engine's copy of the output ends with the stage's line (the path was taken)
        logged = [line async for line in engine.container_output(f"r2d-build-{build.id}")]
    finally:
        await engine.close()
        # leave no build container on the session's engine (other tests count them)
        await m.builder.forget(build)
    last = json.loads(logged[-1])
    assert last["phase"] == EXIT_PHASE and last["status"] == 0
    assert isinstance(last["nonce"], str) and len(last["nonce"]) >= 16
