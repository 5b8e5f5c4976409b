"""What a build costs between its request and ``done`` (issue 14).

The image index learns of a finished build from the build's own image inspect: no re-listing of
every image between repo2docker's exit and ``done``, and a listing already under way does not drop
the new image. The build container's first line comes before the fetch stage is compiled."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest

from r2d_core.catalog import ImageCatalog
from r2d_core.models import LABEL_PREFIX, BuildState
from r2d_core.naming import image_reference
from tests.test_manager import make_manager, wait_done  # noqa: F401 - fixture

SETTINGS = SimpleNamespace(
    image_prefix="r2d-", image_name_template="{prefix}{owner}-{name}:{sha}", image_cache_ttl=60.0
)


def _inspect(owner: str, name: str, sha: str) -> dict[str, Any]:
    reference = image_reference(
        SETTINGS.image_name_template, prefix="r2d-", owner=owner, name=name, sha=sha
    )
    labels = {
        f"{LABEL_PREFIX}{k}": v
        for k, v in {"owner": owner, "name": name, "sha": sha, "build-id": "b1"}.items()
    }
    return {
        "Id": "sha256:" + "1" * 64,
        "RepoTags": [reference],
        "Created": "2026-12-01T08:00:00.123456789Z",
        "Size": 1234,
        "Config": {"Labels": labels},
    }


class _SlowEngine:
    """An engine whose listing waits until told (as one under way while a build finishes)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def list_images(self) -> list[dict[str, Any]]:
        self.calls += 1
        await self.release.wait()
        return []  # listed before the build's image existed


async def _direct(coro: Any) -> Any:
    return await coro


def _catalog(engine: Any) -> ImageCatalog:
    return ImageCatalog(
        settings=SETTINGS,
        engine=engine,
        registry=SimpleNamespace(configured=False),
        engine_call=_direct,
        log=logging.getLogger("test"),
    )


async def test_add_local_indexes_an_image_named_as_its_labels_say():
    catalog = _catalog(_SlowEngine())
    info = _inspect("alice", "hello", "a" * 40)
    assert catalog.add_local(info)
    [group] = catalog.groups({"alice"})
    assert group.versions[0].reference == info["RepoTags"][0]
    assert group.versions[0].local and group.versions[0].size == 1234
    # mis-tagged: labelled as alice's but named otherwise -> not ours, not indexed
    wrong = {**_inspect("alice", "hello", "b" * 40), "RepoTags": ["elsewhere:latest"]}
    assert not catalog.add_local(wrong)
    assert not catalog.knows("elsewhere:latest")


async def test_listing_under_way_keeps_an_image_added_meanwhile():
    engine = _SlowEngine()
    catalog = _catalog(engine)
    listing = asyncio.create_task(catalog.refresh(force=True))
    while engine.calls == 0:
        await asyncio.sleep(0)
    info = _inspect("bob", "hello", "c" * 40)
    catalog.add_local(info)
    engine.release.set()
    await listing
    assert catalog.knows(info["RepoTags"][0])


@pytest.mark.docker
@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_finished_build_is_indexed_without_listing_the_engine(
    make_manager,  # noqa: F811 - the fixture imported above
    git_server,
    builder,
):
    m = await make_manager(builder)
    calls: list[float] = []
    list_images = m.engine.list_images

    async def counting() -> list[dict[str, Any]]:
        calls.append(time.monotonic())
        return await list_images()

    build = (
        await m.submit(repo=git_server.url("hello"), ref="main", owner=f"inc-{builder}", name="h")
    ).build
    assert build is not None
    m.engine.list_images = counting  # from here on: the build runs and finishes
    await wait_done(build)
    assert build.state == BuildState.BUILT, build.error
    assert m.catalog.knows(build.image)
    assert calls == []
    # one "Fetching" line: the build container's bootstrap announces, the fetch stage does not
    fetching = [line.message for line in build.log.lines() if line.message.startswith("Fetching ")]
    assert fetching == [f"Fetching {build.repo} at {build.sha}"]
    groups = await m.list_images([f"inc-{builder}"])
    assert [v.reference for g in groups for v in g.versions] == [build.image]
    # leave no build container on the session's engine (other tests count them)
    await m.builder.forget(build)


@pytest.mark.docker
@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_built_image_is_inspected_once_before_repo2docker_exits(
    make_manager,  # noqa: F811 - the fixture imported above
    git_server,
    builder,
):
    """The outcome needs the image's inspect: it is asked once, as soon as BuildKit has named
    the image, while repo2docker winds down, not again after its exit (the process's exit, or
    for the DockerBuilder the fetch stage's exit line)."""
    m = await make_manager(builder)
    inspected: list[float] = []
    exited: list[float] = []
    inspect_image = m.engine.inspect_image
    start = m.builder.start

    async def counting(reference: str) -> dict[str, Any] | None:
        inspected.append(time.monotonic())
        return await inspect_image(reference)

    async def starting(build: Any) -> Any:
        process = await start(build)
        wait = process.wait

        async def waiting() -> int:
            code = await wait()
            exited.append(time.monotonic())
            return code

        process.wait = waiting
        output = process.output

        async def outputting() -> Any:
            async for raw in output():
                if '"phase": "r2d-exit"' in raw:  # the Docker build ends on this line
                    exited.append(time.monotonic())
                yield raw

        process.output = outputting
        return process

    m.builder.start = starting
    build = (
        await m.submit(repo=git_server.url("hello"), ref="main", owner=f"probe-{builder}", name="h")
    ).build
    assert build is not None
    m.engine.inspect_image = counting  # from here on: the build runs and finishes
    await wait_done(build)
    assert build.state == BuildState.BUILT, build.error
    assert m.catalog.knows(build.image)
    # once, not once more after the exit; that it overlaps the exit is a timing (./dev bench:
    # "done after exit"), which on loaded machines it may miss by microseconds
    assert len(inspected) == 1 and exited, (inspected, exited)
    await m.builder.forget(build)


def test_bootstrap_prints_the_first_line_before_compiling_the_fetch_stage():
    """The announcement comes first, even when the rest cannot run (here: an incomplete spec)."""
    import json
    import subprocess
    import sys

    from r2d_core.builders import fetch_bootstrap
    from r2d_core.fetch import SPEC_ENV

    spec = {"announce": "Fetching git://127.0.0.1:1/r at " + "a" * 40}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", fetch_bootstrap()],
        env={SPEC_ENV: json.dumps(spec)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    first = json.loads(proc.stdout.splitlines()[0])
    assert first == {"phase": "fetching", "message": spec["announce"] + "\n"}


@pytest.mark.docker
async def test_credentials_reach_the_build_container_without_a_copy_before_its_start(
    make_manager,  # noqa: F811 - the fixture imported above
    git_server,
    docker_host,
    tmp_path,
):
    """A private repository with the DockerBuilder: the credentials go to the container's stdin
    at the same time as its start (no put_archive before it: one serial round trip less) and
    still reach git; the container keeps nothing of them (inspect, diff, cp, logs)."""
    import base64
    import json

    from r2d_core.models import Credentials
    from tests.harness.githttp import PASSWORD, USER, GitHTTPServer
    from tests.test_manager import _assert_no_secret_in_build_container, _docker

    root = tmp_path / "git-root"
    root.mkdir()
    (root / "hello.git").symlink_to(git_server.repos["hello"].path)
    server = GitHTTPServer(root).start()
    build = None
    try:
        m = await make_manager("docker", allowed_repo_patterns=[r"^http://127\.0\.0\.1:\d+/"])

        async def no_copy(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("a put_archive before the start")

        m.engine.put_archive = no_copy
        build = (
            await m.submit(
                repo=server.url("hello.git"),
                ref="v1",
                owner="stdin",
                name="private",
                credentials=Credentials(USER, PASSWORD),
            )
        ).build
        assert build is not None
        await wait_done(build)
        assert build.state == BuildState.BUILT, build.error
        name = f"r2d-build-{build.id}"
        config = json.loads(_docker(docker_host, "inspect", name))[0]["Config"]
        assert config["OpenStdin"] and config["StdinOnce"]
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode())
        _assert_no_secret_in_build_container(docker_host, build, [PASSWORD.encode(), token])
        assert PASSWORD.encode() not in _docker(docker_host, "logs", name)
        await m.builder.forget(build)
    finally:
        server.stop()


async def test_forced_refreshes_asked_together_share_one_listing(
    make_manager,  # noqa: F811 - the fixture imported above
):
    """A burst of deletes (each forces the index up to date, before and after) listed every
    image of the engine once per caller, one after another under the index lock: the callers
    waiting for the lock are served by a listing that began after they asked."""
    m = await make_manager()
    calls = 0
    real = m.catalog.engine.list_images

    async def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)  # a listing takes a while: the others queue on the lock
        return await real(*args, **kwargs)

    m.catalog.engine.list_images = counted
    await asyncio.gather(*(m.catalog.refresh(force=True) for _ in range(20)))
    assert 1 <= calls <= 2, calls  # the first caller's, and one for those who asked during it
    calls = 0
    await m.catalog.refresh(force=True)  # asked after: a listing of its own
    assert calls == 1
