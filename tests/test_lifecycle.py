"""The image lifecycle policy against a real private dockerd, git daemon and docker-registry:
retention (locally and in the registry), unused versions, per-owner limits, the disk guard and
pruning of build containers, dangling images and the BuildKit cache. Pure rules first."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import pytest
from traitlets import TraitError
from traitlets.config import Config

from r2d_core.builders import DockerBuilder
from r2d_core.diskspace import build_cache_size, engine_usage
from r2d_core.engine import DockerEngine
from r2d_core.errors import InsufficientStorage, QuotaExceeded, http_status
from r2d_core.lifecycle import DAY, LifecyclePolicy, last_used, unused_versions, versions_beyond
from r2d_core.manager import BuildManager
from r2d_core.models import LABEL_PREFIX, BuildState, ImageVersion
from r2d_core.registry.artifacts_tags import is_artifact_tag, record_tag, referrers_tag
from r2d_core.sizes import format_bytes, parse_bytes
from tests.harness.registry import RegistryServer
from tests.registry_fixtures import registry_config, require_registry_binary
from tests.test_manager import StartedManagers, make_config, messages, wait_done


# ---- pure rules ----------------------------------------------------------------------------------
def _version(tag: str, created: float) -> ImageVersion:
    return ImageVersion(
        reference=f"r2d-a-x:{tag}",
        owner="a",
        name="x",
        repo="",
        ref="",
        sha=tag,
        created=created,
        size=1,
    )


def test_parse_and_format_bytes():
    assert parse_bytes("10G") == 10 * 1024**3
    assert parse_bytes("1.5 GiB") == int(1.5 * 1024**3)
    assert parse_bytes("500m") == 500 * 1024**2
    assert parse_bytes("123") == 123 and parse_bytes(7) == 7
    for bad in ("ten", "-1G", "1X", ""):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**4) == "3.0 TiB"


def test_traits_accept_sizes_and_refuse_nonsense(monkeypatch):
    c = Config()
    c.LifecyclePolicy.max_bytes_per_owner = "2G"
    assert LifecyclePolicy(config=c).max_bytes_per_owner == 2 * 1024**3
    monkeypatch.setenv("R2D_MIN_FREE_BYTES", "5G")
    monkeypatch.setenv("R2D_KEEP_VERSIONS", "3")
    policy = LifecyclePolicy()
    assert policy.min_free_bytes == 5 * 1024**3 and policy.keep_versions == 3
    with pytest.raises(TraitError, match="not a size"):
        LifecyclePolicy().max_bytes_per_owner = "lots"
    with pytest.raises(TraitError, match="min_free_percent"):
        LifecyclePolicy().min_free_percent = 150
    # off by default: nothing deleted or refused, only the harmless pruning
    monkeypatch.delenv("R2D_MIN_FREE_BYTES")
    monkeypatch.delenv("R2D_KEEP_VERSIONS")
    policy = LifecyclePolicy()
    assert not (policy.keep_versions or policy.max_unused_days or policy.max_images_per_owner)
    assert not (policy.max_bytes_per_owner or policy.min_free_bytes or policy.build_cache_max_bytes)
    assert policy.prune_dangling_images and policy.prune_interval == 3600


def test_versions_beyond_keeps_the_newest():
    versions = [_version("b", 200), _version("a", 100), _version("c", 300)]
    assert [v.tag for v in versions_beyond(versions, 2)] == ["a"]
    assert versions_beyond(versions, 0) == [] and versions_beyond(versions, 5) == []


def test_unused_means_neither_built_nor_requested_since():
    now = 100 * DAY
    old, fresh, requested = _version("old", 1.0), _version("fresh", now - DAY), _version("r", 1.0)
    seen = {requested.reference: now - 0.5 * DAY}
    assert last_used(requested, seen) == now - 0.5 * DAY
    found = unused_versions([old, fresh, requested], seen, now=now, days=2)
    assert [v.tag for v in found] == ["old"]
    assert unused_versions([old], {}, now=now, days=0) == []


def test_engine_usage_and_build_cache_count_what_pruning_can_free():
    df = {"BuildCache": [{"Size": 10, "Shared": True}, {"Size": 5}, {"Size": 7, "Shared": False}]}
    assert build_cache_size(df) == 12
    df |= {
        "LayersSize": 100,
        "Containers": [{"SizeRw": 3}, {}],
        "Volumes": [{"UsageData": {"Size": 20}}, {"UsageData": None}],
    }
    assert engine_usage(df) == 100 + 3 + 20 + 12


def test_errors_map_to_their_statuses():
    assert http_status(QuotaExceeded("x")) == 409 and QuotaExceeded("x").code == "quota_exceeded"
    assert http_status(InsufficientStorage("x")) == 503


# ---- against the real engine ---------------------------------------------------------------------
# The engine is shared by the whole session: every call that could touch all images passes the
# test's own owners.


@pytest.fixture
async def lifecycle_manager(docker_host, local_images, git_server):
    started = StartedManagers()

    async def factory(
        builder: str = "local", registry: RegistryServer | None = None, **policy: object
    ) -> BuildManager:
        if registry is not None:
            c = registry_config(docker_host, registry, builder=builder, image_cache_ttl=0)
        else:
            c = make_config(docker_host, builder, image_cache_ttl=0)
        c.LifecyclePolicy.prune_interval = 0  # the tests run the periodic task's body themselves
        for key, value in policy.items():
            setattr(c.LifecyclePolicy, key, value)
        return await started.start(c)

    yield factory
    await started.stop_all()


async def build(m: BuildManager, git_server, owner: str, ref: str, name: str = "img", **kw):
    result = await m.submit(repo=git_server.url("hello"), ref=ref, owner=owner, name=name, **kw)
    assert result.build is not None, result
    await wait_done(result.build)
    assert result.build.state == BuildState.BUILT, (result.build.error, messages(result.build))
    await m.lifecycle.settle()  # what the build's success set off (retention, cache) is done
    return result.build


async def inspect(docker_host: str, reference: str):
    engine = DockerEngine(host=docker_host)
    try:
        return await engine.inspect_image(reference)
    finally:
        await engine.close()


@pytest.fixture
def registry_no_delete():
    require_registry_binary()
    server = RegistryServer("anonymous", delete_enabled=False)
    server.start()
    yield server
    server.close()


@pytest.mark.docker
@pytest.mark.registry
async def test_keep_versions_removes_the_oldest_locally_and_in_the_registry(
    lifecycle_manager, git_server, docker_host, caplog
):
    caplog.set_level(logging.INFO)
    require_registry_binary()
    registry = RegistryServer("anonymous")
    registry.start()
    try:
        m = await lifecycle_manager(registry=registry, keep_versions=2)
        v1 = await build(m, git_server, "keeper", "v1", push=True)
        v2 = await build(m, git_server, "keeper", "v2", push=True)
        [group] = await m.list_images(["keeper"])
        assert [v.tag for v in group.versions] == [v2.sha, v1.sha]  # two: nothing dropped yet
        path = v1.image.split("/", 1)[1].rsplit(":", 1)[0]
        await m.archive.idle()  # the builds' records and logs are in the registry
        tags = set(await m.registry.client().tags(path))
        assert {t for t in tags if not is_artifact_tag(t)} == {v1.sha, v2.sha}
        assert {record_tag(v1.id), record_tag(v2.id)} <= tags

        v3 = await build(m, git_server, "keeper", "main", push=True)
        deleted = [r.getMessage() for r in caplog.records if "Lifecycle: deleted" in r.getMessage()]
        assert deleted == [
            f"Lifecycle: deleted keeper's image {v1.image} locally and in the registry "
            "(keep_versions=2: 3 versions of keeper's image 'img', this is not among the newest)"
        ]
        [group] = await m.list_images(["keeper"])
        assert [v.tag for v in group.versions] == [v3.sha, v2.sha]
        assert await inspect(docker_host, v1.image) is None
        assert await inspect(docker_host, v2.image) is not None
        await m.archive.idle()
        tags = set(await m.registry.client().tags(path))
        assert {t for t in tags if not is_artifact_tag(t)} == {v2.sha, v3.sha}
        # v1's record and its referrers index went with it; the kept versions keep theirs
        assert record_tag(v1.id) not in tags
        client = m.registry.client()
        kept = {referrers_tag(await client.digest(path, v.sha)) for v in (v2, v3)}
        assert {t for t in tags if t.startswith("sha256-")} == kept
        assert {record_tag(v2.id), record_tag(v3.id)} <= tags
        # another image of the same owner is its own count
        other = await build(m, git_server, "keeper", "v1", name="other")
        assert len((await m.get_image("keeper", "img")).versions) == 2
        assert (await m.get_image("keeper", "other")).versions[0].reference == other.image
    finally:
        registry.close()


@pytest.mark.docker
@pytest.mark.registry
async def test_keep_versions_warns_when_the_registry_refuses_deletes(
    lifecycle_manager, git_server, docker_host, registry_no_delete, caplog
):
    caplog.set_level(logging.INFO)
    m = await lifecycle_manager(registry=registry_no_delete, keep_versions=1)
    v1 = await build(m, git_server, "nodelete", "v1", push=True)
    await build(m, git_server, "nodelete", "v2", push=True)
    log = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"Lifecycle: could not delete {v1.image} from the registry (keep_versions)" in log
    assert "storage.delete.enabled" in log  # the message says how to fix it
    assert await inspect(docker_host, v1.image) is None  # local deletion still happened
    [group] = await m.list_images(["nodelete"])
    old = [v for v in group.versions if v.reference == v1.image]
    assert old and old[0].pushed and not old[0].local


@pytest.mark.docker
async def test_per_owner_image_limit_refuses_before_queueing(lifecycle_manager, git_server):
    m = await lifecycle_manager(max_images_per_owner=2)
    repo = git_server.url("hello")
    first = (await m.submit(repo=repo, ref="v1", owner="quota-a", name="q")).build
    second = (await m.submit(repo=repo, ref="v2", owner="quota-a", name="q")).build
    assert first and second
    with pytest.raises(QuotaExceeded) as refused:
        await m.submit(repo=repo, ref="main", owner="quota-a", name="q")
    message = str(refused.value)
    assert "quota-a has 2 of 2 images, 2 of them being built" in message
    assert "c.LifecyclePolicy.max_images_per_owner" in message and "delete one first" in message
    assert refused.value.details["limit"] == "max_images_per_owner"
    assert len([b for b in m.list_builds(["quota-a"])]) == 2  # nothing was queued
    # another owner is not affected
    other = await m.submit(repo=repo, ref="main", owner="quota-b", name="q")
    assert other.build is not None
    for b in (first, second, other.build):
        await wait_done(b)
    # at the limit: an existing version is still answered, a new one refused
    assert (await m.submit(repo=repo, ref="v1", owner="quota-a", name="q")).skipped
    with pytest.raises(QuotaExceeded, match="quota-a has 2 of 2 images"):
        await m.submit(repo=repo, ref="dev", owner="quota-a", name="other")
    # with keep_versions, a new version of an image at its limit replaces the oldest
    m.lifecycle.keep_versions = 2
    third = (await m.submit(repo=repo, ref="main", owner="quota-a", name="q")).build
    assert third is not None
    await wait_done(third)
    await m.lifecycle.settle()
    assert [v.reference for v in (await m.get_image("quota-a", "q")).versions] == [
        third.image,
        second.image,
    ]
    # bytes: an owner at or over the limit gets no new build
    m.lifecycle.keep_versions = 0
    m.lifecycle.max_images_per_owner = 0
    m.lifecycle.max_bytes_per_owner = "1K"
    with pytest.raises(QuotaExceeded, match=r"quota-a's images take .* of 1\.0 KiB") as refused:
        await m.submit(repo=repo, ref="dev", owner="quota-a", name="q")
    assert "max_bytes_per_owner" in str(refused.value)


@pytest.mark.docker
async def test_disk_guard_refuses_new_builds_naming_the_free_space(
    lifecycle_manager, git_server, dockerd
):
    m = await lifecycle_manager()
    repo = git_server.url("hello")
    built = await build(m, git_server, "guarded", "v1")
    m.lifecycle.min_free_bytes = "1P"  # more than this disk has
    with pytest.raises(InsufficientStorage) as refused:
        await m.submit(repo=repo, ref="v2", owner="guarded", name="img")
    free = refused.value.details["free_bytes"]
    assert 0 < free < 1024**5
    assert f"has {format_bytes(free)} free" in str(refused.value)
    assert "c.LifecyclePolicy.min_free_bytes" in str(refused.value)
    assert http_status(refused.value) == 503
    assert not [b for b in m.list_builds(["guarded"]) if not b.done]
    space = await m.lifecycle.disk_space()
    assert space is not None and space.source == f"statvfs {dockerd.data_root}"
    # an image that exists is still answered
    again = await m.submit(repo=repo, ref="v1", owner="guarded", name="img")
    assert again.skipped and again.image.newest.reference == built.image

    # a share of the disk instead
    m.lifecycle.min_free_bytes = 0
    m.lifecycle.min_free_percent = 99.99
    with pytest.raises(InsufficientStorage, match="min_free_percent"):
        await m.submit(repo=repo, ref="v2", owner="guarded", name="img")

    # a service that cannot see the disk estimates from a configured size and /system/df
    m.lifecycle.min_free_percent = 0
    m.lifecycle.min_free_bytes = "1M"
    m.lifecycle.data_root_size = "1M"  # less than the engine's images take: nothing is free
    space = await m.lifecycle.disk_space(fresh=True)
    assert space is not None and space.source == "estimate" and space.free == 0
    with pytest.raises(InsufficientStorage, match="has 0 B free"):
        await m.submit(repo=repo, ref="v2", owner="guarded", name="img")
    m.lifecycle.min_free_bytes = 0
    allowed = (await m.submit(repo=repo, ref="v2", owner="guarded", name="img")).build
    assert allowed is not None
    await wait_done(allowed)


@pytest.mark.docker
async def test_unused_versions_are_dropped_by_the_periodic_task(
    lifecycle_manager, git_server, docker_host
):
    m = await lifecycle_manager(max_unused_days=2)
    v1 = await build(m, git_server, "idle", "v1")
    v2 = await build(m, git_server, "idle", "v2")
    v3 = await build(m, git_server, "idle", "main")
    real = time.time
    m.lifecycle.now = lambda: real() + 3 * DAY
    # v2 is requested "now" (three days on); v3 runs in a container; v1 nobody touched
    assert (
        await m.submit(repo=git_server.url("hello"), ref="v2", owner="idle", name="img")
    ).skipped
    engine = DockerEngine(host=docker_host)
    container = await engine.create_container(
        {"Image": v3.image, "Cmd": ["sleep", "60"], "HostConfig": {"NetworkMode": "none"}}
    )
    try:
        await engine.start_container(container)
        report = await m.lifecycle.run_once(owners=["idle"])
        assert report["unused"] == 1
        assert [v.reference for v in (await m.get_image("idle", "img")).versions] == [
            v3.image,
            v2.image,
        ]
        assert await inspect(docker_host, v1.image) is None
    finally:
        await engine.remove_container(container)
        await engine.close()

    # stateless: a restarted service knows no requests, so build times are the floor
    fresh = await lifecycle_manager(max_unused_days=2)
    fresh.lifecycle.now = lambda: real() + 3 * DAY
    assert await fresh.lifecycle.drop_unused(["idle"]) == 2
    assert await fresh.list_images(["idle"]) == []


@pytest.mark.docker
async def test_pruning_dangling_images_orphaned_containers_and_build_cache(
    lifecycle_manager, git_server, dockerd, local_images
):
    m = await lifecycle_manager()
    await build(m, git_server, "pruner", "v1")
    busybox = local_images["busybox"]
    # an untagged image with our labels, one without (somebody else's), and a build container
    # of a build nobody remembers
    dockerd.docker("create", "--name", "r2d-prune-src", busybox, "true")
    try:
        ours = dockerd.docker(
            "commit", "--change", f"LABEL {LABEL_PREFIX}owner=pruner", "r2d-prune-src"
        ).stdout.strip()
        theirs = dockerd.docker("commit", "r2d-prune-src").stdout.strip()
    finally:
        dockerd.docker("rm", "r2d-prune-src")
    orphan = dockerd.docker(
        "create",
        *("--label", f"{LABEL_PREFIX}build-id=0rphan", "--label", f"{LABEL_PREFIX}owner=pruner"),
        *("--network", "none", busybox, "true"),
    ).stdout.strip()
    df = dockerd.api("GET", "/system/df")
    assert build_cache_size(df) > 1  # the build left cache behind

    try:
        m.lifecycle.build_cache_max_bytes = 1
        report = await m.lifecycle.run_once(owners=["pruner"])
        assert report["dangling_images"] == 1
        assert dockerd.docker("image", "inspect", ours, check=False).returncode != 0
        assert dockerd.docker("image", "inspect", theirs, check=False).returncode == 0
        # the orphan is younger than the grace period: kept
        assert report["build_containers"] == 0
        assert dockerd.docker("inspect", orphan, check=False).returncode == 0
        assert report["build_cache"] >= 1
        assert build_cache_size(dockerd.api("GET", "/system/df")) < build_cache_size(df)
        # and after every build
        await build(m, git_server, "pruner", "v2")
        assert build_cache_size(dockerd.api("GET", "/system/df")) <= 1

        real = time.time
        m.lifecycle.now = lambda: real() + 2 * 3600
        assert await m.lifecycle.prune_build_containers(["pruner"]) == 1
        assert dockerd.docker("inspect", orphan, check=False).returncode != 0
    finally:
        dockerd.docker("rmi", theirs, check=False)
        dockerd.docker("rm", "-f", orphan, check=False)


@pytest.mark.docker
async def test_old_builds_are_forgotten_with_their_containers(
    lifecycle_manager, git_server, dockerd
):
    # build containers earlier tests left on the session's engine would be pruned too
    left = dockerd.docker("ps", "-aq", "--filter", "name=^r2d-build-").stdout.split()
    if left:
        dockerd.docker("rm", "-f", *left)
    m = await lifecycle_manager("docker", max_build_age_days=1)
    assert isinstance(m.builder, DockerBuilder)
    done = await build(m, git_server, "aged", "v1")
    container = f"r2d-build-{done.id}"
    assert dockerd.docker("inspect", container, check=False).returncode == 0
    assert await m.lifecycle.prune_build_containers() == 0  # young: kept
    real = time.time
    m.lifecycle.now = lambda: real() + 2 * DAY
    assert await m.lifecycle.prune_build_containers() == 1
    assert done.id not in {b.id for b in m.list_builds()}
    assert dockerd.docker("inspect", container, check=False).returncode != 0
    # the image itself stays: only the build (and its log) went
    assert (await m.get_image("aged", "img")).versions[0].reference == done.image


@pytest.mark.docker
async def test_two_requests_at_once_cannot_both_take_the_last_place(lifecycle_manager, git_server):
    m = await lifecycle_manager(max_images_per_owner=1)
    repo = git_server.url("hello")
    results = await asyncio.gather(
        m.submit(repo=repo, ref="v1", owner="racer", name="a"),
        m.submit(repo=repo, ref="v2", owner="racer", name="b"),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    queued = [r.build for r in results if not isinstance(r, BaseException)]
    assert len(refused) == 1 and len(queued) == 1, results
    assert "racer has 1 of 1 images, 1 of them being built" in str(refused[0])
    await m.cancel(queued[0].id)


@pytest.mark.docker
async def test_the_periodic_task_runs_every_prune_interval(
    lifecycle_manager, dockerd, local_images
):
    # only a rule that touches nothing but our own garbage: the engine is the session's
    m = await lifecycle_manager(prune_interval=0.3)
    cli = partial(asyncio.to_thread, dockerd.docker, timeout=60)  # not on the manager's loop
    await cli("create", "--name", "r2d-periodic-src", local_images["busybox"], "true")
    try:
        committed = await cli(
            "commit", "--change", f"LABEL {LABEL_PREFIX}owner=periodic", "r2d-periodic-src"
        )
        dangling = committed.stdout.strip()
    finally:
        await cli("rm", "r2d-periodic-src")
    # asked through the engine API, on the loop: a docker CLI call would block the event loop
    # the manager's periodic task runs on (once, in a full run, a `docker image inspect` then
    # waited 5 minutes on an engine that was waiting for the manager to read; killing the CLI
    # made the loop below take "no answer" for "pruned")
    deadline = time.monotonic() + 30
    while (await asyncio.wait_for(m.engine.inspect_image(dangling), 30)) is not None:
        assert time.monotonic() < deadline, "the periodic task never pruned the dangling image"
        await asyncio.sleep(0.2)
    await m.stop()
    assert m.lifecycle._task is None  # stopped with the manager


@pytest.mark.docker
async def test_a_wrong_data_root_path_warns_and_refuses_nothing(
    lifecycle_manager, git_server, caplog, tmp_path
):
    caplog.set_level(logging.WARNING)
    m = await lifecycle_manager(min_free_bytes="1P", data_root_path=str(tmp_path / "missing"))
    for ref in ("v1", "v2"):
        result = await m.submit(repo=git_server.url("hello"), ref=ref, owner="misconf", name="x")
        assert result.build is not None  # not a 500, not a refusal
        await m.cancel(result.build.id)
    warnings = [r.getMessage() for r in caplog.records if "disk guard cannot" in r.getMessage()]
    assert len(warnings) == 1 and "fix c.LifecyclePolicy.data_root_path" in warnings[0]


def test_generated_config_file_lists_the_policy():
    from r2d_tornado.app import R2DService

    text = R2DService().generate_config_file()
    assert "c.LifecyclePolicy.keep_versions" in text and "R2D_MIN_FREE_BYTES" in text
