# ruff: noqa: F811 - fixtures are imported from tests.test_manager / tests.test_manager_registry
"""Correctness defects of the build manager (issue 10, issue 15), each on real components:
a private dockerd, the git daemon, docker-registry behind a slow proxy, and a unix-socket proxy
in front of the engine that drops its connections (an engine hiccup)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest
from traitlets.config import Config

from r2d_core import aio, metrics
from r2d_core.builders import BuildProcess, LocalProcessBuilder, RecoveredBuild
from r2d_core.engine import DockerEngine
from r2d_core.errors import Unavailable
from r2d_core.manager import BuildManager
from r2d_core.models import Build, BuildState
from tests.registry_fixtures import registry_config
from tests.test_manager import (  # noqa: F401
    LOOPBACK_GIT,
    make_config,
    make_manager,
    messages,
    wait_done,
    wait_for_line,
)
from tests.test_manager_limits import SILENT, container_running, fixture_repo
from tests.test_manager_registry import SlowProxy, registry  # noqa: F401

pytestmark = [pytest.mark.docker]


# ---- an unexpected exception inside a build task ----------------------------------------------
class _BrokenProcess(BuildProcess):
    def __init__(self) -> None:
        self.cancelled = False

    async def output(self) -> AsyncIterator[str]:
        yield '{"phase": "fetching", "message": "about to break"}'
        raise TypeError("not an R2DError")

    async def wait(self) -> int:
        return 0

    async def cancel(self) -> None:
        self.cancelled = True


class BrokenStart(LocalProcessBuilder):
    async def start(self, build: Build) -> BuildProcess:
        raise RuntimeError("a bug in the builder")


class BrokenFollow(LocalProcessBuilder):
    async def start(self, build: Build) -> BuildProcess:
        return _BrokenProcess()


@pytest.mark.parametrize("builder_class", [BrokenStart, BrokenFollow])
async def test_unexpected_exception_fails_the_build_and_frees_the_slot(
    make_manager, git_server, builder_class
):
    m = await make_manager(builder_class=builder_class, max_concurrent_builds=1)
    args = {"repo": git_server.url("hello"), "owner": "bug", "name": builder_class.__name__}
    build = (await m.submit(**args)).build
    await asyncio.wait_for(wait_done(build), 20)  # before: in progress forever
    assert build.state == BuildState.FAILED
    assert build.error.startswith("internal error: ")
    assert any("Internal error" in line for line in messages(build))
    assert m.list_builds(states=["queued", "fetching", "building", "pushing"]) == []
    # the slot and the image are free: the same request is a new build, not a dead one joined
    again = await m.submit(**args)
    assert not again.joined and again.build is not build
    await asyncio.wait_for(wait_done(again.build), 20)


async def test_unexpected_exception_in_a_forced_rebuild_keeps_the_previous_image(
    make_manager, git_server, docker_host
):
    args = {"repo": git_server.url("hello"), "ref": "v1", "owner": "bug", "name": "kept"}
    first = (await (await make_manager()).submit(**args)).build
    await wait_done(first)
    broken = await make_manager(builder_class=BrokenStart)
    forced = (await broken.submit(**args, force=True)).build
    await asyncio.wait_for(wait_done(forced), 20)
    assert forced.state == BuildState.FAILED and "internal error" in forced.error
    engine = DockerEngine(host=docker_host)
    try:
        info = await engine.inspect_image(first.image)  # moved aside, then put back
    finally:
        await engine.close()
    assert info is not None and info["Config"]["Labels"]["repo2docker-service.build-id"] == first.id


class BrokenRecovery(LocalProcessBuilder):
    """Finds one finished build whose log cannot be read back (an unexpected exception)."""

    async def recover(self) -> list[RecoveredBuild]:
        fields = {
            "build-id": "0badc0ffee00", "owner": "bug", "name": "recovered", "sha": "1" * 40,
            "image": "r2d-bug-recovered:" + "1" * 40, "push": "0",
        }  # fmt: skip
        return [RecoveredBuild(fields, _BrokenProcess(), running=False, exit_code=0)]


async def test_unexpected_exception_reading_a_recovered_log_releases_the_build(make_manager):
    m = await make_manager(builder_class=BrokenRecovery)
    build = m.get_build("0badc0ffee00")
    assert build.state == BuildState.BUILT  # from the container's exit status, at once
    await asyncio.wait_for(wait_done(build), 20)  # the log closes: followers are not left hanging
    assert build.state == BuildState.BUILT and build.log.closed


# ---- cancel of a push -------------------------------------------------------------------------
async def _wait_pushing(build: Build, proxy: SlowProxy, start: int, at_least: int = 20_000) -> None:
    async with aio.timeout(120):
        while not (build.state == BuildState.PUSHING and proxy.uploaded >= start + at_least):
            assert not build.done, (build.state, build.error, build.push_error)
            await asyncio.sleep(0.05)


@pytest.mark.registry
@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_cancel_stops_a_push_and_a_push_only_build(
    registry, docker_host, local_images, git_server
):
    proxy = SlowProxy(registry.port, rate=60_000)
    await proxy.start()
    m = BuildManager(config=registry_config(docker_host, registry, via=proxy.port))
    await m.start()
    try:
        args = {"repo": git_server.url("hello"), "ref": "v1", "owner": "cpu", "name": "cpush"}
        build = (await m.submit(**args, push=True)).build
        await _wait_pushing(build, proxy, 0)
        t0 = time.monotonic()
        await m.cancel(build.id, by="cpu")
        assert build.state == BuildState.CANCELLED  # before: still pushing after 15 s
        assert time.monotonic() - t0 < 10
        assert "cancelled" in build.push_error
        # the engine stopped pushing: with the brake off, a push still going would end in a
        # moment (what the proxy still forwards is what sat in socket buffers)
        proxy.rate = 50_000_000
        await asyncio.sleep(3)
        assert not await m.catalog.in_registry(build.image)
        [group] = await m.list_images(["cpu"])
        assert group.versions[0].local and not group.versions[0].pushed

        # the unbraked seconds above may have let every layer reach the registry (what sat in
        # socket buffers), leaving the retry only a manifest and a few layer checks, which even a
        # hard brake lets through in a moment: hold every upload instead, so that the retry is
        # surely caught pushing (it has sent its first bytes, none reached the registry)
        proxy.flowing.clear()
        retry = (await m.submit(**args, push=True)).build
        assert retry.push_only
        await _wait_pushing(retry, proxy, proxy.uploaded, at_least=1)
        await m.cancel(retry.id)
        assert retry.state == BuildState.CANCELLED
        [group] = await m.list_images(["cpu"])
        assert not group.versions[0].pushed
    finally:
        proxy.flowing.set()
        await m.stop()
        await proxy.stop()


# ---- delete during a forced rebuild -----------------------------------------------------------
async def test_delete_during_forced_rebuild_is_not_undone(make_manager, git_server, docker_host):
    m = await make_manager()
    args = {"repo": git_server.url("hello"), "ref": "v1", "owner": "del", "name": "rebuilt"}
    first = (await m.submit(**args)).build
    await wait_done(first)
    forced = (await m.submit(**args, force=True)).build
    async for _line in forced.log.follow():
        break  # running: the previous image is moved aside now
    await asyncio.sleep(0.2)
    result = await m.delete_image("del", "rebuilt")  # before: 404 (the version is moved aside)
    assert result == {"deleted": [first.image], "errors": []}
    await m.cancel(forced.id)
    assert forced.state == BuildState.CANCELLED
    assert await m.list_images(["del"]) == []  # before: the backup was put back
    engine = DockerEngine(host=docker_host)
    try:
        assert await engine.inspect_image(first.image) is None
        tags = [t for i in await engine.list_images() for t in i.get("RepoTags") or []]
        assert not any("r2d-previous" in t for t in tags)
    finally:
        await engine.close()


# ---- an engine hiccup while a build container runs ---------------------------------------------
class SocketProxy:
    """A unix-socket proxy in front of the engine whose open connections can be dropped."""

    def __init__(self, target: str, path: str) -> None:
        self.target, self.path = target, path
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.base_events.Server | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._handle, self.path)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.drop()

    def drop(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def behind_proxy(docker_host, local_images, git_server, tmp_path):
    """``factory(**traits)`` -> (proxy, started manager): a DockerBuilder manager that reaches the
    engine through a :class:`SocketProxy`, while its build containers talk to the engine directly
    (so they go on when the proxy drops or refuses connections)."""
    socket = docker_host[len("unix://") :]
    proxy = SocketProxy(socket, str(tmp_path / "engine.sock"))
    await proxy.start()
    managers: list[BuildManager] = []

    async def factory(**manager: object) -> tuple[SocketProxy, BuildManager]:
        c = make_config(proxy.host, "docker", **manager)
        c.DockerBuilder.docker_socket = socket  # the build container talks to the engine directly
        m = BuildManager(config=c)
        await m.start()
        managers.append(m)
        return proxy, m

    yield factory
    if proxy.server is None or not proxy.server.is_serving():
        await proxy.start()  # a test left the engine "unreachable": let the clean-up through
    for m in managers:
        for build in m.list_builds():
            if not build.done:
                with contextlib.suppress(Exception):
                    await m.cancel(build.id, wait=10)
        await m.stop()
    await proxy.stop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(proxy.path)


async def test_engine_hiccup_does_not_fail_a_running_build_container(behind_proxy, git_server):
    proxy, m = await behind_proxy()
    repo = fixture_repo(
        git_server, "ticks", "for i in 1 2 3 4 5 6 7 8; do echo r2d-tick $i; sleep 1; done"
    )
    build = (await m.submit(repo=repo, owner="hic", name="ticks")).build
    await wait_for_line(build, "r2d-tick 2")
    proxy.drop()  # the log stream breaks; the container goes on
    await asyncio.sleep(0.5)
    assert not build.done, (build.state, build.error)  # before: failed, "lost contact"
    joined = await m.submit(repo=repo, owner="hic", name="ticks")
    assert joined.joined and joined.build is build  # no second build of the same image
    await wait_done(build)
    assert build.state == BuildState.BUILT, (build.error, messages(build)[-5:])
    ticks = [
        line for line in messages(build) if line.startswith("r2d-tick") or " r2d-tick " in line
    ]
    numbers = [line.rsplit(" ", 1)[-1] for line in ticks if "echo" not in line]
    assert sorted(set(numbers)) == [str(i) for i in range(1, 9)]
    assert len(numbers) == len(set(numbers))  # re-read from the start, no line twice


# ---- _adopt: a build container that outlived the build's end in the service ---------------------
async def test_build_given_up_for_lost_is_followed_again_when_the_engine_answers(
    behind_proxy, git_server, docker_host
):
    """The log stream keeps breaking with nothing new to read: the service gives the build up
    ("lost contact") while its container builds on. Once the engine answers again (the
    reconnect's _sync), the container is adopted: the build is followed again, from its log's
    start, and an identical request joins it instead of starting a second build."""
    proxy, m = await behind_proxy(build_timeout=0, build_inactivity_timeout=0)
    repo = fixture_repo(git_server, "silent", SILENT)
    build = (await m.submit(repo=repo, owner="lost", name="silent")).build
    await wait_for_line(build, "r2d-silent")

    async def flap() -> None:
        while True:
            proxy.drop()
            await asyncio.sleep(0.05)

    flapping = asyncio.create_task(flap())
    try:
        await asyncio.wait_for(wait_done(build), 60)
    finally:
        flapping.cancel()
    assert build.state == BuildState.FAILED and "lost contact" in build.error, build.error
    assert await container_running(docker_host, build.id)
    await m._sync()  # what the manager runs once the engine is reachable again
    again = m.get_build(build.id)
    assert again is not build and again.recovered and not again.done, (again.state, again.error)
    await wait_for_line(again, "r2d-silent")  # its log, read again from the start
    joined = await m.submit(repo=repo, owner="lost", name="silent")
    assert joined.joined and joined.build is again  # not a second build of the same image
    await m.cancel(again.id)
    assert again.state == BuildState.CANCELLED
    assert not await container_running(docker_host, build.id)


async def test_cancelled_build_whose_kill_was_lost_is_killed_when_the_engine_answers(
    behind_proxy, git_server, docker_host
):
    """A cancel while the engine is unreachable: the build ends cancelled in the service, but the
    kill never reached its container. Once the engine answers again, the container found
    running is killed (not adopted as a build in progress)."""
    proxy, m = await behind_proxy(build_timeout=0, build_inactivity_timeout=0)
    repo = fixture_repo(git_server, "silent", SILENT)
    build = (await m.submit(repo=repo, owner="kill", name="silent")).build
    await wait_for_line(build, "r2d-silent")
    await proxy.stop()  # no new connection to the engine, the open ones dropped
    with pytest.raises(Unavailable):
        await m.cancel(build.id, wait=1)
    await asyncio.wait_for(wait_done(build), 30)
    assert build.state == BuildState.CANCELLED
    assert await container_running(docker_host, build.id)  # the kill was lost
    await proxy.start()
    await m._sync()  # what the manager runs once the engine is reachable again
    deadline = time.monotonic() + 30
    while await container_running(docker_host, build.id):
        assert time.monotonic() < deadline, "the container of the cancelled build still runs"
        await asyncio.sleep(0.2)
    assert m.get_build(build.id) is build and build.state == BuildState.CANCELLED


# ---- builds found again after a restart ---------------------------------------------------------
async def test_recovered_finished_builds_show_their_real_state_at_once(
    make_manager, git_server, docker_host
):
    first = await make_manager("docker")
    ok = (await first.submit(repo=git_server.url("hello"), ref="v2", owner="rec", name="ok")).build
    bad = (await first.submit(repo=git_server.url("fails"), owner="rec", name="bad")).build
    await wait_done(ok)
    await wait_done(bad)
    assert (ok.state, bad.state) == (BuildState.BUILT, BuildState.FAILED)
    await first.stop()
    engine = DockerEngine(host=docker_host)
    try:
        await engine.remove_image(ok.image)  # deleted while the service was down
    finally:
        await engine.close()

    counted = {o: metrics.BUILDS.labels(o)._value.get() for o in ("built", "failed")}
    second = await make_manager("docker")
    # the very first listing, before any log is re-read (before: both "fetching", cancellable)
    states = {b.id: (b.state, b.done) for b in second.list_builds(["rec"])}
    assert states[ok.id] == (BuildState.BUILT, True)
    assert states[bad.id] == (BuildState.FAILED, True)
    again_ok, again_bad = second.get_build(ok.id), second.get_build(bad.id)
    await wait_done(again_ok)
    await wait_done(again_bad)
    assert again_ok.state == BuildState.BUILT, again_ok.error  # before: failed, image missing
    assert again_bad.state == BuildState.FAILED and again_bad.error
    assert await second.list_images(["rec"]) == []
    # the first process counted them when they ended; finding them again is no new build
    assert {o: metrics.BUILDS.labels(o)._value.get() for o in counted} == counted


@pytest.mark.registry
@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_recovered_pushed_build_does_not_push_again(
    registry, docker_host, local_images, git_server
):
    def config() -> Config:
        c = make_config(docker_host, "docker")
        c.BuildManager.image_prefix = f"{registry.host}/r2d-"
        c.Registry.url = registry.url
        c.Registry.listing_ttl = 0
        return c

    first = BuildManager(config=config())
    await first.start()
    try:
        build = (
            await first.submit(
                repo=git_server.url("hello"), ref="v1", owner="rep", name="pushed", push=True
            )
        ).build
        await wait_done(build)
        assert build.state == BuildState.BUILT and build.push_error is None
    finally:
        await first.stop()
    second = BuildManager(config=config())
    await second.start()
    try:
        again = second.get_build(build.id)
        await wait_done(again)
        assert again.state == BuildState.BUILT and again.push_error is None
        assert not any("Pushing" in line for line in messages(again))  # before: pushed again
    finally:
        await second.stop()
