"""Build records that no image holds (issue 13 follow-up): records of failed, timed-out and
cancelled builds; their retention (``keep_failed_records``, ``max_failed_record_days``); deleting a
whole image deletes them; a record waiting for its retry survives a stop (flushed on a graceful
stop, or stored by the next start from the build container that remains).

Real dockerd (two: the service's, and a fresh one with an empty data root), real git daemon, real
``docker-registry`` (anonymous, htpasswd and bearer token where auth matters)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from r2d_core import metrics
from r2d_core.builders import DockerBuilder
from r2d_core.lifecycle import LifecyclePolicy
from r2d_core.logs import LogBuffer
from r2d_core.manager import BuildManager
from r2d_core.models import Build, BuildState, iso
from r2d_core.records import encode_log, encode_record
from r2d_core.registry import RegistryAuth, RegistryClient
from r2d_core.registry.artifacts import ArtifactStore, StoredRecord
from r2d_core.registry.artifacts_tags import RECORD_TAG_PREFIX, record_tag
from r2d_core.registry.models import OCI_MANIFEST
from tests.harness import REPO2DOCKER_IMAGE
from tests.harness.dockerd import Dockerd
from tests.harness.registry import RegistryServer
from tests.registry_fixtures import require_registry_binary
from tests.test_archive_service import config_for, pushed, raw
from tests.test_manager import wait_for_line

pytestmark = [pytest.mark.docker, pytest.mark.registry]

DAY = 86400.0


@pytest.fixture(params=["anonymous", "htpasswd", "token"])
def registry(request):
    require_registry_binary()
    server = RegistryServer(request.param)
    server.start()
    yield server
    server.close()


@pytest.fixture
def fresh_engine():
    """A second dockerd on an empty data root: an engine that holds none of the service's state."""
    engine = Dockerd(seed=False)
    engine.start()
    yield engine
    engine.stop()


def path_of(image: str) -> str:
    return image.split("/", 1)[1].rsplit(":", 1)[0]


def client_for(registry: RegistryServer) -> RegistryClient:
    auth = None
    if registry.mode == "htpasswd":
        auth = RegistryAuth("alice", registry.users["alice"])
    elif registry.mode == "token":
        auth = RegistryAuth("admin", registry.users["admin"])
    return RegistryClient(registry.url, auth=auth)


async def record_tags(registry: RegistryServer, path: str) -> list[str]:
    async with client_for(registry) as client:
        try:
            tags = await client.tags(path)
        except Exception:
            return []
    return sorted(t for t in tags if t.startswith(RECORD_TAG_PREFIX))


async def stored_record(registry: RegistryServer, path: str, build_id: str) -> dict:
    """The record JSON of ``build_id`` as the registry holds it (from the embedded layer)."""
    import base64

    async with client_for(registry) as client:
        body = await client.raw_manifest(path, record_tag(build_id), accept=OCI_MANIFEST)
    manifest = json.loads(body)
    layer = manifest["layers"][0]
    return json.loads(base64.b64decode(layer["data"]))


async def seed_failed(
    registry: RegistryServer, repository: str, build_id: str, created: float, owner: str = "pia"
) -> None:
    """A failed build's record written straight into the registry, ``created`` at that time."""
    log = LogBuffer()
    log.append("failed", f"failure of {build_id}")
    log.close()
    name = repository.split("-", 2)[-1]
    build = Build(
        id=build_id,
        owner=owner,
        name=name,
        repo="git://127.0.0.1/x",
        ref="HEAD",
        sha="e" * 40,
        image=f"{registry.host}/{repository}:{'e' * 40}",
        push=True,
        state=BuildState.FAILED,
        error="it broke",
        created=created,
        log=log,
    )
    async with client_for(registry) as client:
        await ArtifactStore(client).push(
            repository,
            build_id=build_id,
            owner=owner,
            created=iso(created) or "",
            record=encode_record(build),
            log=encode_log(build.log),
            image_tag=None,
        )


def deleted_count(kind: str, reason: str) -> float:
    return metrics.LIFECYCLE_DELETED.labels(kind, reason)._value.get()


# ---- the rule, and its defaults ------------------------------------------------------------------
def _stored(build_id: str, created: float | None, subject: str | None = None) -> StoredRecord:
    return StoredRecord(
        repository="r2d-pia-x",
        build_id=build_id,
        owner="pia",
        created=iso(created) if created is not None else "not a time",
        digest=f"sha256:{build_id:0>64}",
        record={},
        log=None,
        subject=subject,
    )


def test_records_to_drop_keeps_the_newest_and_drops_the_old():
    from r2d_core.record_retention import records_to_drop

    now = 1_000 * DAY
    records = [
        _stored("1", now - 1 * DAY),
        _stored("2", now - 2 * DAY),
        _stored("3", now - 3 * DAY),
        _stored("4", now - 40 * DAY),
        _stored("5", None),  # no readable time: the oldest for the count, never too old
        _stored("6", now - 90 * DAY, subject="sha256:" + "a" * 64),  # a pushed version's
    ]
    by_count = records_to_drop(records, keep=3, max_age=0, now=now)
    assert sorted((r.build_id, why) for r, why in by_count) == [
        ("4", "keep_failed_records"),
        ("5", "keep_failed_records"),
    ]
    by_age = records_to_drop(records, keep=0, max_age=30 * DAY, now=now)
    assert [(r.build_id, why) for r, why in by_age] == [("4", "max_failed_record_days")]
    assert records_to_drop(records, keep=0, max_age=0, now=now) == []
    both = records_to_drop(records, keep=10, max_age=2.5 * DAY, now=now)
    assert sorted(r.build_id for r, _ in both) == ["3", "4"]


def test_failed_record_bounds_default_to_build_history_and_unused_days():
    from traitlets.config import Config

    c = Config()
    c.BuildManager.build_history = 37
    c.LifecyclePolicy.max_unused_days = 12.5
    m = BuildManager(config=c)
    assert m.lifecycle.keep_failed_records == 37
    assert m.lifecycle.max_failed_record_days == 12.5
    c.LifecyclePolicy.keep_failed_records = 3
    c.LifecyclePolicy.max_failed_record_days = 0
    m = BuildManager(config=c)
    assert (m.lifecycle.keep_failed_records, m.lifecycle.max_failed_record_days) == (3, 0)
    from traitlets import TraitError

    with pytest.raises(TraitError, match="keep_failed_records"):
        LifecyclePolicy(keep_failed_records=-1)


# ---- 1. retention of failed builds' records -----------------------------------------------------
@pytest.mark.parametrize("registry", ["htpasswd"], indirect=True)
async def test_failed_records_are_bounded_per_image_after_each_failed_build(
    registry, docker_host, local_images, git_server, caplog
):
    now = time.time()
    for i in range(3):  # three older failures of the same image, one of another image
        await seed_failed(registry, "r2d-pia-broken", f"00000000aa0{i}", now - (10 - i) * 60)
    await seed_failed(registry, "r2d-pia-other", "00000000bb00", now - 3600)
    c = config_for(registry, docker_host)
    c.LifecyclePolicy.keep_failed_records = 2
    c.LifecyclePolicy.prune_interval = 0
    m = BuildManager(config=c)
    await m.start()
    before = deleted_count("build_record", "keep_failed_records")
    caplog.set_level(logging.INFO)
    try:
        failed = await pushed(m, git_server, "fails", "broken")
        assert failed.state == BuildState.FAILED
        await m.archive.idle()
        await m.lifecycle.settle()
        # the newest two: this build's and the newest seeded one
        assert await record_tags(registry, "r2d-pia-broken") == sorted(
            [record_tag(failed.id), record_tag("00000000aa02")]
        )
        assert await record_tags(registry, "r2d-pia-other") == [record_tag("00000000bb00")]
        assert deleted_count("build_record", "keep_failed_records") - before == 2
        assert "deleted pia's build record 00000000aa00" in caplog.text
        assert "keep_failed_records = 2" in caplog.text
    finally:
        await m.stop()


@pytest.mark.parametrize("registry", ["anonymous", "token"], indirect=True)
async def test_old_failed_records_go_with_the_periodic_task_pushed_ones_stay(
    registry, docker_host, local_images, git_server
):
    c = config_for(registry, docker_host)
    c.LifecyclePolicy.max_failed_record_days = 5
    c.LifecyclePolicy.prune_interval = 0
    m = BuildManager(config=c)
    await m.start()
    before = deleted_count("build_record", "max_failed_record_days")
    try:
        built = await pushed(m, git_server, "hello", "aged")
        failed = await pushed(m, git_server, "fails", "aged")
        await m.archive.idle()
        path = path_of(built.image)
        assert await record_tags(registry, path) == sorted(
            [record_tag(built.id), record_tag(failed.id)]
        )
        await seed_failed(registry, path, "00000000cc00", time.time() - 3 * DAY)

        m.lifecycle.now = lambda: time.time() + 4 * DAY  # the real failure is 4 days old
        report = await m.lifecycle.run_once()
        assert report["failed_records"] == 1  # the seeded one, 7 days old now
        assert await record_tags(registry, path) == sorted(
            [record_tag(built.id), record_tag(failed.id)]
        )
        m.lifecycle.now = lambda: time.time() + 30 * DAY
        assert (await m.lifecycle.run_once(owners=["someone-else"]))["failed_records"] == 0
        assert (await m.lifecycle.run_once())["failed_records"] == 1
        # the pushed version's record stays with its version (max_unused_days is off)
        assert await record_tags(registry, path) == [record_tag(built.id)]
        [group] = await m.list_images(["pia"])
        assert [v.tag for v in group.versions] == [built.sha]
        assert deleted_count("build_record", "max_failed_record_days") - before == 2
    finally:
        await m.stop()


# ---- 2. deleting an image deletes its failed builds' records ------------------------------------
@pytest.mark.parametrize("registry", ["anonymous", "htpasswd", "token"], indirect=True)
async def test_deleting_an_image_deletes_its_failed_records_one_version_keeps_them(
    registry, docker_host, local_images, git_server
):
    m = BuildManager(config=config_for(registry, docker_host))
    await m.start()
    try:
        built = await pushed(m, git_server, "hello", "gone")
        failed = await pushed(m, git_server, "fails", "gone")
        other = await pushed(m, git_server, "fails", "stays")
        await m.archive.idle()
        path = path_of(built.image)
        assert await record_tags(registry, path) == sorted(
            [record_tag(built.id), record_tag(failed.id)]
        )

        # one version: only that version's artifacts go
        result = await m.delete_image("pia", "gone", built.sha)
        assert result == {"deleted": [built.image], "errors": []}
        assert await record_tags(registry, path) == [record_tag(failed.id)]

        # the whole image (no version left): its failed builds' records go, counted
        before = deleted_count("build_record", "image_deleted")
        assert await m.delete_image("pia", "gone") == {"deleted": [], "errors": []}
        async with client_for(registry) as client:
            assert await client.tags(path) == []
        assert deleted_count("build_record", "image_deleted") - before == 1
        from r2d_core.errors import NotFound

        with pytest.raises(NotFound):
            await m.delete_image("pia", "gone")
        # another image's failed record is not touched
        assert await record_tags(registry, path_of(other.image)) == [record_tag(other.id)]

        # and an image with a version and failed builds, deleted at once
        built2 = await pushed(m, git_server, "hello", "both")
        await pushed(m, git_server, "fails", "both")  # a failed build of the same image
        # at once: the failed build's record may still be on its way; it must not come back
        result = await m.delete_image("pia", "both")
        assert result == {"deleted": [built2.image], "errors": []}
        await m.archive.idle()
        async with client_for(registry) as client:
            assert await client.tags(path_of(built2.image)) == []
    finally:
        await m.stop()


@pytest.mark.parametrize("registry", ["htpasswd"], indirect=True)
async def test_a_whole_image_delete_removes_records_whose_version_went_by_other_means(
    registry, docker_host, local_images, git_server
):
    m = BuildManager(config=config_for(registry, docker_host))
    await m.start()
    try:
        built = await pushed(m, git_server, "hello", "dangling")
        await m.archive.idle()
        path = path_of(built.image)
        async with client_for(registry) as client:
            # an administrator deletes the version in the registry directly
            await client.delete_manifest(path, await client.digest(path, built.sha))
            assert await client.tags(path) != []  # its record and fallback index remain
        before = deleted_count("build_record", "image_deleted")
        result = await m.delete_image("pia", "dangling")  # the local image is still listed
        assert result == {"deleted": [built.image], "errors": []}
        async with client_for(registry) as client:
            assert await client.tags(path) == []
        assert deleted_count("build_record", "image_deleted") - before == 1
    finally:
        await m.stop()


# ---- 3. cancelled and timed-out builds leave a record ---------------------------------------------
@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_cancelled_and_timed_out_builds_are_restored_on_a_fresh_engine(
    registry,
    docker_host,
    local_images,
    git_server,
    fresh_engine,
):
    c = config_for(registry, docker_host)
    m = BuildManager(config=c)
    await m.start()
    try:
        cancelled = (
            await m.submit(repo=git_server.url("slow"), owner="pia", name="stopped", push=True)
        ).build
        await wait_for_line(cancelled, "r2d-slow 2")
        await m.cancel(cancelled.id, by="pia")
        assert cancelled.state == BuildState.CANCELLED
        m.build_timeout = 4
        timed_out = await pushed(m, git_server, "slow", "late")
        assert timed_out.state == BuildState.FAILED and timed_out.stop_reason
        await m.archive.idle()
        assert cancelled.record_error is None and timed_out.record_error is None
        record = await stored_record(registry, path_of(cancelled.image), cancelled.id)
        assert (record["state"], record["outcome"]) == ("cancelled", "cancelled")
        record = await stored_record(registry, path_of(timed_out.image), timed_out.id)
        assert (record["state"], record["outcome"]) == ("failed", "timed_out")
        assert "c.BuildManager.build_timeout" in record["stop_reason"]
        before = {b.id: raw(b) for b in (cancelled, timed_out)}
    finally:
        await m.stop()

    m2 = BuildManager(config=config_for(registry, fresh_engine.host))
    await m2.start()
    try:
        restored = {b.id: b for b in m2.list_builds(["pia"])}
        assert restored[cancelled.id].state == BuildState.CANCELLED
        assert raw(restored[cancelled.id]) == before[cancelled.id]
        assert "Cancelling (cancelled by pia)\nBuild cancelled\n" in before[cancelled.id]
        late = restored[timed_out.id]
        assert late.state == BuildState.FAILED and late.error == timed_out.error
        assert late.stop_reason == timed_out.stop_reason
        assert raw(late) == before[timed_out.id]
        assert "Stopping the build: build exceeded the time limit" in raw(late)
    finally:
        await m2.stop()


# ---- 4. a record waiting for its retry survives a stop ------------------------------------------
def _outage_at_record(m: BuildManager, registry: RegistryServer, build_name: str) -> None:
    """The registry goes right after ``build_name``'s push, before its record is stored."""
    original = m.archive.build_done

    def build_done(build):
        if build.name == build_name:
            registry.stop()
        original(build)

    m.archive.build_done = build_done


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
async def test_a_graceful_stop_flushes_pending_records_and_local_builds_it_stops(
    registry,
    docker_host,
    local_images,
    git_server,
    fresh_engine,
):
    m = BuildManager(config=config_for(registry, docker_host))
    await m.start()
    try:
        _outage_at_record(m, registry, "flushed")
        build = await pushed(m, git_server, "hello", "flushed")
        await m.archive.idle()
        assert build.state == BuildState.BUILT and build.push_error is None
        assert build.id in m.archive.pending and build.record_error
        registry.start()  # back, but the retry is minutes away
        running = (
            await m.submit(repo=git_server.url("slow"), owner="pia", name="running", push=True)
        ).build
        await wait_for_line(running, "r2d-slow 2")
    finally:
        await m.stop()  # flushes: the pending record, and the local build the stop cancels
    assert build.record_error is None
    assert await record_tags(registry, path_of(build.image)) == [record_tag(build.id)]
    assert running.state == BuildState.CANCELLED
    assert await record_tags(registry, path_of(running.image)) == [record_tag(running.id)]

    m2 = BuildManager(config=config_for(registry, fresh_engine.host))
    await m2.start()
    try:
        restored = {b.id: b for b in m2.list_builds(["pia"])}
        assert restored[build.id].state == BuildState.BUILT
        assert restored[running.id].state == BuildState.CANCELLED
        assert "Build stopped with the service" in raw(restored[running.id])
    finally:
        await m2.stop()


@pytest.mark.parametrize("registry", ["token"], indirect=True)
async def test_the_next_start_stores_a_lost_record_from_its_build_container_only(
    registry, docker_host, local_images, git_server
):
    def docker_config():
        c = config_for(registry, docker_host)
        c.BuildManager.builder_class = DockerBuilder
        c.DockerBuilder.image = REPO2DOCKER_IMAGE
        c.DockerBuilder.network_mode = "host"
        c.BuildManager.record_flush_timeout = 2
        return c

    m = BuildManager(config=docker_config())
    await m.start()
    try:
        kept = await pushed(m, git_server, "hello", "kept")
        await m.archive.idle()
        assert kept.record_error is None
        async with client_for(registry) as client:
            kept_digest = await client.digest(path_of(kept.image), record_tag(kept.id))
        _outage_at_record(m, registry, "lost")
        lost = await pushed(m, git_server, "hello", "lost")
        await m.archive.idle()
        assert lost.state == BuildState.BUILT and lost.push_error is None, lost.push_error
        assert lost.id in m.archive.pending
    finally:
        await m.stop()  # the registry is still down: the flush cannot store it
    registry.start()
    assert await record_tags(registry, path_of(lost.image)) == []

    m2 = BuildManager(config=docker_config())
    await m2.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await m2.archive.idle()
            if await record_tags(registry, path_of(lost.image)):
                break
            await asyncio.sleep(0.2)
        assert await record_tags(registry, path_of(lost.image)) == [record_tag(lost.id)]
        restored = m2.get_build(lost.id)
        assert restored.record_error is None and restored.state == BuildState.BUILT
        record = await stored_record(registry, path_of(lost.image), lost.id)
        assert record["state"] == "built" and record["push_error"] is None
        # attached to the pushed image, as if it had been stored at once
        async with client_for(registry) as client:
            body = await client.raw_manifest(
                path_of(lost.image), record_tag(lost.id), accept=OCI_MANIFEST
            )
            image_digest = await client.digest(path_of(lost.image), lost.sha)
        assert json.loads(body)["subject"]["digest"] == image_digest
        # a record the registry had already is not written again (nor its log replaced by
        # the container's, which lacks the push lines)
        await m2.archive.idle()
        async with client_for(registry) as client:
            assert await client.digest(path_of(kept.image), record_tag(kept.id)) == kept_digest
    finally:
        for build in m2.list_builds():  # their containers: not left to other tests' pruning
            if build.done:
                await m2.forget_build(build)
        await m2.stop()
