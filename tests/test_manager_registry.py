"""Builds that push to a real docker-registry, listings that merge local and registry images, and
a registry that goes away. Real dockerd, real git daemon, real ``docker-registry`` on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from traitlets.config import Config

from r2d_core import aio
from r2d_core.engine import DockerEngine
from r2d_core.errors import InvalidRequest
from r2d_core.manager import BuildManager
from r2d_core.models import BuildState
from tests.registry_fixtures import registry_config, serve_registry
from tests.test_manager import LOOPBACK_GIT, StartedManagers, wait_done

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@pytest.fixture(params=["anonymous", "htpasswd"])
def registry(request):
    yield from serve_registry(request.param)


@pytest.fixture
async def registry_manager(registry, docker_host, local_images, git_server):
    started = StartedManagers()

    async def factory(**registry_traits) -> BuildManager:
        c = registry_config(docker_host, registry, image_cache_ttl=0)
        for key, value in registry_traits.items():
            setattr(c.Registry, key, value)
        return await started.start(c)

    yield factory
    await started.stop_all()


@pytest.mark.parametrize("registry", ["anonymous", "htpasswd", "token"], indirect=True)
async def test_build_push_list_skip_delete(registry_manager, registry, git_server, docker_host):
    m = await registry_manager()
    build = (
        await m.submit(
            repo=git_server.url("hello"), ref="v1", owner="pia", name="pushed", push=True
        )
    ).build
    states = []

    async def watch() -> None:
        async for _ in build.log.follow():
            states.append(build.state)

    await watch()
    assert build.state == BuildState.BUILT and build.push_error is None, build.push_error
    assert BuildState.PUSHING in states
    assert any("Pushed" in line.message for line in build.log.lines())
    if registry.mode != "anonymous":
        secret = registry.users["alice" if registry.mode == "htpasswd" else "admin"]
        assert secret not in "\n".join(line.message for line in build.log.lines())

    client = m.registry.client()
    path = build.image.split("/", 1)[1].rsplit(":", 1)[0]
    assert build.sha in await client.tags(path)
    [group] = await m.list_images(["pia"])
    assert group.versions[0].local and group.versions[0].pushed

    # gone locally: still listed from the registry, and a new request is answered from there
    engine = DockerEngine(host=docker_host)
    try:
        await engine.remove_image(build.image)
    finally:
        await engine.close()
    [group] = await m.list_images(["pia"])
    assert not group.versions[0].local and group.versions[0].pushed
    again = await m.submit(repo=git_server.url("hello"), ref="v1", owner="pia", name="pushed")
    assert again.skipped

    result = await m.delete_image("pia", "pushed")
    assert result == {"deleted": [build.image], "errors": []}
    assert await client.tags(path) == []
    assert await m.list_images(["pia"]) == []


async def test_push_needs_the_registry_prefix(registry, docker_host, local_images, git_server):
    c = Config()
    c.DockerEngine.host = docker_host
    c.BuildManager.allowed_repo_patterns = LOOPBACK_GIT
    c.BuildManager.allowed_networks = ["127.0.0.0/8"]
    c.Registry.url = registry.url
    m = BuildManager(config=c)  # default prefix "r2d-": images cannot go to the registry
    await m.start()
    try:
        with pytest.raises(InvalidRequest, match="image_prefix"):
            await m.submit(repo=git_server.url("hello"), owner="pia", name="x", push=True)
    finally:
        await m.stop()


async def test_registry_down_builds_locally_and_push_can_be_retried(
    registry_manager, registry, git_server
):
    m = await registry_manager()
    registry.stop()
    try:
        build = (
            await m.submit(
                repo=git_server.url("hello"), ref="v2", owner="quin", name="down", push=True
            )
        ).build
        await wait_done(build)
        assert build.state == BuildState.BUILT
        assert build.push_error and "unavailable" not in build.image
        groups = await m.list_images(["quin"])
        assert groups and groups[0].versions[0].local and not groups[0].versions[0].pushed
        assert m.image_warnings and registry.host in m.image_warnings[0]
        assert (await m.health())["registry"] is False
    finally:
        registry.start()
    retry = await m.submit(
        repo=git_server.url("hello"), ref="v2", owner="quin", name="down", push=True
    )
    assert retry.build is not None and retry.build.push_only
    await wait_done(retry.build)
    assert retry.build.state == BuildState.BUILT and retry.build.push_error is None
    [group] = await m.list_images(["quin"])
    assert group.versions[0].pushed and not m.image_warnings
    # pushed now: another push request is answered without work
    assert (
        await m.submit(repo=git_server.url("hello"), ref="v2", owner="quin", name="down", push=True)
    ).skipped


@pytest.mark.parametrize("registry", ["htpasswd"], indirect=True)
async def test_wrong_credentials_fail_the_push_not_the_build(
    registry_manager, registry, git_server
):
    m = await registry_manager(password="wrong-password")
    build = (
        await m.submit(
            repo=git_server.url("hello"), ref="dev", owner="rob", name="creds", push=True
        )
    ).build
    await wait_done(build)
    assert build.state == BuildState.BUILT
    assert build.push_error
    assert "wrong-password" not in build.push_error
    assert "wrong-password" not in "\n".join(line.message for line in build.log.lines())


class SlowProxy:
    """A loopback TCP proxy that forwards uploads slowly and says when some bytes went through:
    it makes a push last long enough to stop the registry in the middle of it."""

    def __init__(self, target_port: int, rate: int = 400_000) -> None:
        self.target_port = target_port
        self.rate = rate
        self.uploaded = 0
        # cleared: uploads are counted but held (nothing reaches the registry until it is set)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upload: bool) -> None:
            try:
                while chunk := await src.read(16384):
                    if upload:
                        self.uploaded += len(chunk)
                        await self.flowing.wait()
                        await asyncio.sleep(len(chunk) / self.rate)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_registry_stopped_mid_push(registry, docker_host, local_images, git_server):
    proxy = SlowProxy(registry.port)
    await proxy.start()
    c = registry_config(docker_host, registry, via=proxy.port)
    c.Registry.timeout = 5
    m = BuildManager(config=c)
    await m.start()
    try:
        build = (
            await m.submit(
                repo=git_server.url("hello"), ref="main", owner="mid", name="midpush", push=True
            )
        ).build
        async with aio.timeout(120):
            while not (build.state == BuildState.PUSHING and proxy.uploaded > 100_000):
                assert not build.done, (build.state, build.error, build.push_error)
                await asyncio.sleep(0.05)
        await asyncio.to_thread(registry.stop)
        await wait_done(build)
        assert build.state == BuildState.BUILT  # built locally, the push failed
        assert build.push_error
        [group] = await m.list_images(["mid"])
        assert group.versions[0].local and not group.versions[0].pushed
        assert m.image_warnings
        # back up: the same request pushes what was built
        await asyncio.to_thread(registry.start)
        proxy.rate = 50_000_000
        retry = (
            await m.submit(
                repo=git_server.url("hello"), ref="main", owner="mid", name="midpush", push=True
            )
        ).build
        assert retry is not None and retry.push_only
        await wait_done(retry)
        assert retry.push_error is None, retry.push_error
        [group] = await m.list_images(["mid"])
        assert group.versions[0].pushed, m.image_warnings
    finally:
        await m.stop()
        await proxy.stop()


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_always_push(registry_manager, registry, git_server):
    m = await registry_manager()
    m.always_push = True
    build = (
        await m.submit(repo=git_server.url("hello"), ref="v2", owner="ava", name="always")
    ).build
    assert build.push
    await wait_done(build)
    assert build.state == BuildState.BUILT and build.push_error is None
    [group] = await m.list_images(["ava"])
    assert group.versions[0].pushed


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_options_and_annotations_round_trip_through_the_registry(
    registry_manager, registry, git_server, docker_host
):
    """A pushed image's options and annotations come back from the registry's labels once the
    local image is gone, also for a new manager (a restart), and it is found built by options."""
    m = await registry_manager()
    m.build_options.allowed = ["build_args"]
    options = {"build_args": {"GREETING": "reg"}}
    annotations = {"tljh.mem_limit": "1G", "display.description": "from the registry"}
    build = (
        await m.submit(
            repo=git_server.url("hello"),
            ref="v1",
            owner="ria",
            name="annotated",
            push=True,
            options=options,
            annotations=annotations,
        )
    ).build
    await wait_done(build)
    assert build.state == BuildState.BUILT and build.push_error is None, build.push_error
    engine = DockerEngine(host=docker_host)
    try:
        await engine.remove_image(build.image)
    finally:
        await engine.close()
    second = await registry_manager()
    second.build_options.allowed = ["build_args"]
    [group] = await second.list_images(["ria"])
    [version] = group.versions
    assert version.reference == build.image and not version.local and version.pushed
    assert version.options == options and version.annotations == annotations
    again = await second.submit(
        repo=git_server.url("hello"), ref="v1", owner="ria", name="annotated", options=options
    )
    assert again.skipped and again.reference == build.image
    # other options: another image of the same commit, not found in the registry
    other = await second.submit(
        repo=git_server.url("hello"),
        ref="v1",
        owner="ria",
        name="annotated",
        options={"build_args": {"GREETING": "other"}},
    )
    assert other.build is not None and other.build.image != build.image
    await wait_done(other.build)
