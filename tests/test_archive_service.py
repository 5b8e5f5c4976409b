"""Nothing lost when the engine goes (issue 13): build with push, wipe the engine (a new dockerd on
an empty data root), start a new manager: the image is listed from the registry, the builds
appear with their records (same ids) and their logs replay byte-for-byte; artifacts are absent
from listings; deleting the image deletes its artifacts; a registry outage during the artifact
upload leaves the build ``built`` with a warning, and the upload is retried.

Real dockerd (two), real git daemon, real ``docker-registry`` in all three auth modes."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from r2d_core.manager import BuildManager
from r2d_core.models import BuildState
from r2d_core.registry.artifacts_tags import record_tag, referrers_tag
from tests.harness.dockerd import Dockerd
from tests.harness.registry import RegistryServer
from tests.registry_fixtures import registry_config, serve_registry
from tests.test_manager import wait_done

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@pytest.fixture(params=["anonymous", "htpasswd", "token"])
def registry(request):
    yield from serve_registry(request.param)


@pytest.fixture
def fresh_engine():
    """A second dockerd on an empty data root: an engine that holds none of the service's state."""
    engine = Dockerd(seed=False)
    engine.start()
    yield engine
    engine.stop()


def config_for(registry: RegistryServer, docker_host: str) -> Config:
    return registry_config(docker_host, registry, image_cache_ttl=0)


async def pushed(m, git_server, repo: str, name: str, owner: str = "pia"):
    """A build of the fixture repository ``repo`` that pushes, once it is done."""
    build = (await m.submit(repo=git_server.url(repo), owner=owner, name=name, push=True)).build
    await wait_done(build)
    return build


def raw(build) -> str:
    return "".join(line.message + "\n" for line in build.log.lines())


def events(build) -> list[tuple]:
    """What the event stream sends of each line: id, phase, message, time, omitted."""
    return [
        (x.n, x.phase, x.message, x.time, x.omitted.to_dict() if x.omitted else None)
        for x in build.log.lines()
    ]


async def test_restart_on_a_fresh_engine_restores_from_the_registry(
    registry, docker_host, local_images, git_server, fresh_engine
):
    m = BuildManager(config=config_for(registry, docker_host))
    await m.start()
    try:
        built = await pushed(m, git_server, "hello", "kept")
        failed = await pushed(m, git_server, "fails", "broken")
        assert built.state == BuildState.BUILT and built.push_error is None
        assert failed.state == BuildState.FAILED
        await m.archive.idle()
        assert built.record_error is None and failed.record_error is None
        before = {b.id: (b.to_dict(), raw(b), events(b)) for b in (built, failed)}
        client = m.registry.client()
        path = built.image.split("/", 1)[1].rsplit(":", 1)[0]
        digest = await client.digest(path, built.sha)
        tags = set(await client.tags(path))
        assert {record_tag(built.id), referrers_tag(digest)} <= tags
        # artifacts are no image versions
        [group] = await m.list_images(["pia"])
        assert [v.tag for v in group.versions] == [built.sha]
        secret = registry.users.get("alice" if registry.mode == "htpasswd" else "admin")
    finally:
        await m.stop()

    # the pod moved: a new engine with nothing in it, the same registry
    m2 = BuildManager(config=config_for(registry, fresh_engine.host))
    await m2.start()
    try:
        [group] = await m2.list_images(["pia"])
        assert group.name == "kept" and [v.tag for v in group.versions] == [built.sha]
        assert group.versions[0].pushed and not group.versions[0].local
        assert group.versions[0].build_id == built.id
        builds = m2.list_builds(["pia"])
        assert [b.id for b in builds] == [failed.id, built.id]  # newest first, same ids
        for restored in builds:
            old_dict, old_raw, old_events = before[restored.id]
            assert raw(restored) == old_raw  # byte-for-byte
            assert events(restored) == old_events
            new_dict = restored.to_dict()
            for key in (
                "owner",
                "name",
                "repo",
                "ref",
                "sha",
                "image",
                "state",
                "error",
                "failed_step",
                "push_error",
                "requested_by",
                "created",
                "started",
                "finished",
                "log",
                "last_lines",
            ):
                assert new_dict[key] == old_dict[key], key
            assert restored.recovered
            if secret:
                assert secret not in raw(restored)
        # followers replay and end (the restored log is closed)
        assert [x.n async for x in builds[1].log.follow()] == [e[0] for e in before[built.id][2]]

        # delete the image: its artifacts go with it; the failed build's record stays
        result = await m2.delete_image("pia", "kept")
        assert result == {"deleted": [built.image], "errors": []}
        client = m2.registry.client()
        assert await client.tags(path) == []
        failed_path = failed.image.split("/", 1)[1].rsplit(":", 1)[0]
        assert await client.tags(failed_path) == [record_tag(failed.id)]
    finally:
        await m2.stop()


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_registry_outage_during_the_record_upload_is_retried(
    registry, docker_host, local_images, git_server
):
    m = BuildManager(config=config_for(registry, docker_host))
    await m.start()
    try:
        original = m.archive.build_done

        def outage_then_upload(build):
            registry.stop()  # the image is pushed; the registry goes before its record
            original(build)

        m.archive.build_done = outage_then_upload
        build = await pushed(m, git_server, "hello", "outage")
        await m.archive.idle()
        assert build.state == BuildState.BUILT and build.push_error is None
        assert build.record_error and "retries" in build.record_error
        assert build.to_dict()["record_error"] == build.record_error
        assert build.id in m.archive.pending

        registry.start()
        await m.archive.retry_now()
        assert build.record_error is None and not m.archive.pending
        path = build.image.split("/", 1)[1].rsplit(":", 1)[0]
        assert record_tag(build.id) in await m.registry.client().tags(path)
    finally:
        await m.stop()


@pytest.mark.parametrize("registry", ["htpasswd"], indirect=True)
async def test_records_are_read_once_the_registry_is_back(registry, docker_host, local_images):
    import asyncio
    import time

    from r2d_core.logs import LogBuffer
    from r2d_core.models import Build
    from r2d_core.records import encode_log, encode_record
    from r2d_core.registry import RegistryAuth, RegistryClient
    from r2d_core.registry.artifacts import ArtifactStore

    log = LogBuffer()
    log.append("failed", "it broke")
    log.close()
    build = Build(
        id="00000000beef",
        owner="pia",
        name="late",
        repo="git://127.0.0.1/x",
        ref="HEAD",
        sha="c" * 40,
        image=f"{registry.host}/r2d-pia-late:{'c' * 40}",
        push=True,
        state=BuildState.FAILED,
        error="it broke",
        log=log,
    )
    auth = RegistryAuth("alice", registry.users["alice"])
    async with RegistryClient(registry.url, auth=auth) as client:
        await ArtifactStore(client).push(
            "r2d-pia-late",
            build_id=build.id,
            owner="pia",
            created="2026-12-01T08:00:00.000000Z",
            record=encode_record(build),
            log=encode_log(build.log),
            image_tag=None,
        )
    registry.stop()
    c = config_for(registry, docker_host)
    c.BuildManager.reconnect_interval = 0.05
    m = BuildManager(config=c)
    await m.start()  # the registry is down: the service starts all the same
    try:
        assert m.list_builds(["pia"]) == []
        registry.start()
        deadline = time.monotonic() + 20
        while not m.list_builds(["pia"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        [restored] = m.list_builds(["pia"])
        assert (restored.id, restored.state, restored.error) == (
            build.id,
            BuildState.FAILED,
            "it broke",
        )
        assert [x.message for x in restored.log.lines()] == ["it broke"]
    finally:
        await m.stop()


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_a_record_naming_another_owner_is_not_restored(registry, docker_host, local_images):
    from r2d_core.logs import LogBuffer
    from r2d_core.models import Build
    from r2d_core.records import encode_log, encode_record
    from r2d_core.registry import RegistryClient
    from r2d_core.registry.artifacts import ArtifactStore

    async with RegistryClient(registry.url) as client:
        store = ArtifactStore(client)
        for i, (owner, image_repo) in enumerate(
            [("bob", "r2d-mallory-x"), ("bob", "r2d-bob-x"), ("mallory", "r2d-mallory-x")]
        ):
            log = LogBuffer()
            log.close()
            build = Build(
                id=f"{i:012x}",
                owner=owner,
                name="x",
                repo="git://127.0.0.1/x",
                ref="HEAD",
                sha="d" * 40,
                image=f"{registry.host}/{image_repo}:{'d' * 40}",
                push=True,
                state=BuildState.FAILED,
                log=log,
            )
            # all three written into mallory's repository
            await store.push(
                "r2d-mallory-x",
                build_id=build.id,
                owner=owner,
                created=f"2026-12-01T08:00:0{i}.000000Z",
                record=encode_record(build),
                log=encode_log(build.log),
                image_tag=None,
            )
    m = BuildManager(config=config_for(registry, docker_host))
    await m.start()
    try:
        assert m.list_builds(["bob"]) == []
        assert [b.id for b in m.list_builds(["mallory"])] == [f"{2:012x}"]
    finally:
        await m.stop()
