"""Build records and logs as OCI artifacts in a real docker-registry 2.8 (all three auth modes):
push with a subject and the referrers fallback index, find, read back byte-for-byte, listings
that ignore the artifacts, deletes that take them along. No Docker engine needed."""

from __future__ import annotations

import json

import pytest

from r2d_core.logs import LogBuffer
from r2d_core.models import Build, BuildState, Credentials
from r2d_core.records import (
    build_from_record,
    decode_log,
    decode_record,
    encode_log,
    encode_record,
)
from r2d_core.registry import RegistryAuth, RegistryClient
from r2d_core.registry.artifacts import ARTIFACT_TYPE, ArtifactStore
from r2d_core.registry.artifacts_tags import is_artifact_tag, record_tag, referrers_tag
from r2d_core.registry.models import OCI_INDEX, OCI_MANIFEST
from tests.harness.registry import RegistryServer
from tests.registry_fixtures import *  # noqa: F403
from tests.registry_fixtures import unique

pytestmark = pytest.mark.registry


@pytest.fixture
def server(registry_each: RegistryServer) -> RegistryServer:
    return registry_each


def service_client(server: RegistryServer) -> RegistryClient:
    """The service's identity: alice (htpasswd), the admin account (token), nobody (anonymous)."""
    user = {"anonymous": None, "htpasswd": "alice", "token": "admin"}[server.mode]
    auth = RegistryAuth(user, server.users[user]) if user else RegistryAuth()
    return RegistryClient(server.url, auth=auth, listing_ttl=0)


def a_build(image: str, state: BuildState = BuildState.BUILT, lines: int = 50) -> Build:
    log = LogBuffer(16 * 1024)  # small: the log is cut, so the marker goes to the registry too
    for i in range(lines):
        log.append("building", f"step {i}: {'x' * 40} é")
    log.append("built" if state == BuildState.BUILT else "failed", "the end")
    log.close()
    return Build(
        id="0123456789ab",
        owner="alice",
        name="demo",
        repo="https://git.example.org/demo.git",
        ref="main",
        sha="a" * 40,
        image=image,
        push=True,
        requested_by="alice",
        state=state,
        started=1.5,
        finished=2.5,
        error=None if state == BuildState.BUILT else "repo2docker exited with status 1",
        failed_step=None if state == BuildState.BUILT else "#7 [3/4] RUN false",
        credentials=Credentials("git", "s3cret-password"),
        log=log,
    )


def raw(log: LogBuffer) -> str:
    return "".join(line.message + "\n" for line in log.lines())


def events(log: LogBuffer) -> list[dict]:
    return [dict(line.to_dict(), time=line.time) for line in log.lines()]


def test_record_and_log_round_trip_without_credentials():
    build = a_build("h/r2d-alice-demo:" + "a" * 40, lines=2000)
    assert build.log.omission is not None
    record = encode_record(build)
    assert b"s3cret-password" not in record and b"credentials" not in record
    log = decode_log(encode_log(build.log), max_bytes=10 * 1024 * 1024)
    again = build_from_record(decode_record(record), log)
    assert (again.id, again.owner, again.sha, again.state, again.error, again.failed_step) == (
        build.id,
        build.owner,
        build.sha,
        build.state,
        build.error,
        build.failed_step,
    )
    assert again.created == pytest.approx(build.created, abs=1e-5)
    assert again.finished == pytest.approx(2.5)
    assert raw(again.log) == raw(build.log)
    assert events(again.log) == events(build.log)
    assert again.log.summary() == build.log.summary()
    assert again.log.closed and again.recovered
    # a resume after the marker gets the tail, as it did from the original
    marker = build.log.marker()
    assert marker is not None
    assert [x.n for x in again.log.read(marker.n + 1)] == [
        x.n for x in build.log.read(marker.n + 1)
    ]


def test_record_keeps_options_and_annotations_when_the_build_has_them():
    build = a_build("h/r2d-alice-demo:" + "a" * 40)
    assert "options" not in decode_record(encode_record(build))  # none: not written
    build.options = {"user_id": 1000}  # what the build-options feature adds to builds
    build.annotations = {"org.example/cpu": "2"}
    record = decode_record(encode_record(build))
    assert record["options"] == {"user_id": 1000}
    assert record["annotations"] == {"org.example/cpu": "2"}


def test_damaged_or_huge_log_is_refused():
    from r2d_core.errors import UpstreamError

    with pytest.raises(UpstreamError):
        decode_log(b"not gzip", max_bytes=1024)
    import gzip

    bomb = gzip.compress(b"{}" + b" " * 10_000_000)
    with pytest.raises(UpstreamError, match="larger"):
        decode_log(bomb, max_bytes=1024 * 1024)


def test_artifact_tags():
    assert is_artifact_tag("r2d-build-0123456789ab")
    assert is_artifact_tag(referrers_tag("sha256:" + "0" * 64))
    assert not is_artifact_tag("a" * 40)
    assert not is_artifact_tag("latest")


async def test_push_find_read_delete(server: RegistryServer):
    repository = unique("alice")
    async with server.pusher() as pusher:
        image = await pusher.push_image(repository, "a" * 40, labels={"x": "1"})
    build = a_build(f"{server.host}/{repository}:{'a' * 40}")
    async with service_client(server) as client:
        store = ArtifactStore(client)
        digest = await store.push(
            repository,
            build_id=build.id,
            owner=build.owner,
            created="2026-12-01T08:00:00.000000Z",
            record=encode_record(build),
            log=encode_log(build.log),
            image_tag="a" * 40,
        )
        # an OCI 1.1 artifact whose subject is the image, listed in the fallback index
        manifest = json.loads(await client.raw_manifest(repository, digest, accept=OCI_MANIFEST))
        assert manifest["artifactType"] == ARTIFACT_TYPE
        assert manifest["subject"]["digest"] == image.digest
        assert manifest["subject"]["mediaType"] == image.media_type
        index = json.loads(
            await client.raw_manifest(repository, referrers_tag(image.digest), accept=OCI_INDEX)
        )
        assert [e["digest"] for e in index["manifests"]] == [digest]
        # pushed again (a retry): still one entry for the build
        await store.push(
            repository,
            build_id=build.id,
            owner=build.owner,
            created="2026-12-01T08:00:00.000000Z",
            record=encode_record(build),
            log=encode_log(build.log),
            image_tag="a" * 40,
        )
        index = json.loads(
            await client.raw_manifest(repository, referrers_tag(image.digest), accept=OCI_INDEX)
        )
        assert len(index["manifests"]) == 1

        # listings: only the image
        assert set(await client.tags(repository)) == {
            "a" * 40,
            record_tag(build.id),
            referrers_tag(image.digest),
        }
        listed = [i for i in await client.list_images() if i.repository == repository]
        assert [i.tag for i in listed] == ["a" * 40]

        # found and read back
        [stored] = await store.find([repository])
        assert (stored.build_id, stored.owner) == (build.id, "alice")
        record, log = await store.read(stored, max_log_bytes=4 * 1024 * 1024)
        assert log is not None
        assert raw(decode_log(log, max_bytes=1 << 22)) == raw(build.log)
        assert decode_record(record)["id"] == build.id

        # deleting the image's artifacts: record, index and blobs go
        assert await store.delete_for_image(repository, image.digest) == 1
        assert set(await client.tags(repository)) == {"a" * 40}
        assert await store.find([repository]) == []


async def test_failed_build_has_a_record_without_subject(server: RegistryServer):
    repository = unique("alice")
    build = a_build(f"{server.host}/{repository}:{'b' * 40}", state=BuildState.FAILED)
    async with service_client(server) as client:
        store = ArtifactStore(client)
        digest = await store.push(
            repository,
            build_id=build.id,
            owner=build.owner,
            created="2026-12-01T08:00:00.000000Z",
            record=encode_record(build),
            log=encode_log(build.log),
            image_tag=None,
        )
        manifest = json.loads(await client.raw_manifest(repository, digest, accept=OCI_MANIFEST))
        assert "subject" not in manifest
        assert await client.tags(repository) == [record_tag(build.id)]
        assert [i for i in await client.list_images() if i.repository == repository] == []
        [stored] = await store.find([repository])
        record, _ = await store.read(stored, max_log_bytes=1 << 22)
        assert decode_record(record)["state"] == "failed"


async def test_listing_snapshot_makes_a_new_client_cold_listing_cheap(server: RegistryServer):
    from r2d_core.registry.snapshot import SNAPSHOT_TAG, read_snapshot, write_snapshot
    from tests.test_registry_client import Recorder

    prefix = unique("alice")
    repos = [f"{prefix}-{i}" for i in range(3)]
    async with server.pusher() as pusher:
        for repo in repos:
            for tag in ("v1", "v2"):
                await pusher.push_image(repo, tag, labels={"who": f"{repo}:{tag}"})
    snapshot_repo = f"{prefix}-snap"
    async with service_client(server) as client:
        images = await client.list_images(prefix)
        assert len(images) == 6 and client.listing_changed
        assert await write_snapshot(client, snapshot_repo) >= 6
        assert not client.listing_changed
    async with server.pusher() as pusher:  # moved by someone else after the snapshot
        moved = await pusher.push_image(repos[2], "v2", labels={"who": "moved"}, seed="again")
    recorder = Recorder()
    user = {"anonymous": None, "htpasswd": "alice", "token": "admin"}[server.mode]
    auth = RegistryAuth(user, server.users[user]) if user else RegistryAuth()
    async with RegistryClient(
        server.url,
        auth=auth,
        listing_ttl=60,
        revalidate_batch=2,
        event_hooks={"request": [recorder]},
    ) as client:
        assert await read_snapshot(client, snapshot_repo) >= 6
        listed = await client.list_images(prefix)
        kinds = recorder.kinds()
        # no config blob read for any tag: labels come from the snapshot; 2 digests re-checked
        assert kinds["GET blob"] == 1  # the snapshot itself
        # the snapshot's manifest + 2 re-checks (+ the first request's 401 with credentials)
        assert kinds["GET manifest"] == 1 + 2 + (server.mode != "anonymous")
        assert SNAPSHOT_TAG not in {i.tag for i in listed}
        assert [(i.repository, i.tag) for i in listed] == [(i.repository, i.tag) for i in images]
        before = next(i for i in listed if (i.repository, i.tag) == (repos[2], "v2"))
        assert before.labels == {"who": f"{repos[2]}:v2"}  # as the snapshot says, for now
        # the moved tag is seen once the rotation reaches it (3 listings of 2 re-checks here)
        client.listing_ttl = 0
        for _ in range(2):
            listed = await client.list_images(prefix)
        now = next(i for i in listed if (i.repository, i.tag) == (repos[2], "v2"))
        assert (now.digest, now.labels) == (moved.digest, {"who": "moved"})
