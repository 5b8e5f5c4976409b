"""Red team: a hostile listing snapshot (r2d_core.registry.snapshot) and listings of a hostile
registry. The snapshot is a small OCI artifact a new process starts its listing from: whatever it
holds must not crash the listing, balloon memory or freeze the event loop, and rows for images
that do not exist must not appear."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib

import pytest

from r2d_core.errors import R2DError
from r2d_core.registry import RegistryAuth, RegistryClient
from r2d_core.registry.snapshot import (
    SNAPSHOT_MEDIA_TYPE,
    SNAPSHOT_TAG,
    SNAPSHOT_TYPE,
    read_snapshot,
)
from tests.harness.hostile_registry import DOCKER_MANIFEST, HostileRegistry, deep_json

LABELS = {
    "repo2docker-service.owner": "alice",
    "repo2docker-service.name": "demo",
}


@pytest.fixture
def registry():
    with HostileRegistry() as server:
        yield server


def client(server: HostileRegistry) -> RegistryClient:
    return RegistryClient(server.url, auth=RegistryAuth(), timeout=2.0, listing_ttl=0)


def put_snapshot(server: HostileRegistry, blob: bytes) -> None:
    server.put_artifact(
        "r2d", SNAPSHOT_TAG, artifact_type=SNAPSHOT_TYPE, layers=[(SNAPSHOT_MEDIA_TYPE, blob)]
    )


def rows_blob(rows) -> bytes:
    return gzip.compress(json.dumps(rows).encode())


class LoopLag:
    """The longest the event loop went without running a 5 ms ticker, while the block runs."""

    async def __aenter__(self) -> LoopLag:
        self.worst = 0.0
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.005)
            last = now

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


@pytest.mark.parametrize(
    "blob",
    [
        gzip.compress(deep_json()),
        gzip.compress(b"[" + b"[1]," * 1000 + b"[1]]"),
        gzip.compress(
            json.dumps([["r2d-a", "v1", "sha256:" + "0" * 64, 5, ["x"], 1e400, 7, "big"]]).encode()
        ),
        gzip.compress(b"not json"),
        b"not gzip",
        gzip.compress(json.dumps({"rows": 1}).encode()),
    ],
    ids=["deep", "short rows", "wrong types", "not json", "not gzip", "an object"],
)
async def test_a_damaged_snapshot_is_ignored(registry, blob):
    registry.put_image("r2d-a", "v1", LABELS)
    put_snapshot(registry, blob)
    async with client(registry) as c:
        try:
            taken = await read_snapshot(c, "r2d")
        except R2DError:
            taken = 0
        assert taken == 0
        [image] = await c.list_images("r2d-")
    assert image.labels == LABELS


async def test_a_snapshot_bomb_is_bounded_in_memory_and_loop_time(registry):
    """A gzip snapshot inflating to 1 GiB of spaces: refused at the snapshot limit, and the
    event loop is not held for long meanwhile."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    spaces = b" " * (1024 * 1024)
    bomb = b"".join(deflate.compress(spaces) for _ in range(1024)) + deflate.flush()
    put_snapshot(registry, bomb)
    async with client(registry) as c, LoopLag() as lag:
        with pytest.raises(R2DError):
            await read_snapshot(c, "r2d")
    assert lag.worst < 0.5, lag.worst


async def test_snapshot_rows_for_images_that_do_not_exist_are_not_listed(registry):
    registry.put_image("r2d-a", "v1", LABELS)
    forged = [
        ["r2d-a", "v2", "sha256:" + "1" * 64, DOCKER_MANIFEST, LABELS, None, "amd64", 1],
        ["r2d-ghost", "v1", "sha256:" + "2" * 64, DOCKER_MANIFEST, LABELS, None, "amd64", 1],
    ]
    put_snapshot(registry, rows_blob(forged))
    async with client(registry) as c:
        assert await read_snapshot(c, "r2d") == 2
        images = await c.list_images("r2d-")
    assert [(i.repository, i.tag) for i in images] == [("r2d-a", "v1")]


async def test_snapshot_row_with_a_wrong_digest_is_rechecked_on_the_first_listing(registry):
    """A row naming another digest (and other labels) for a real tag: the first listing re-checks
    snapshot rows (they count as checked longest ago) and shows the real labels."""
    digest, _ = registry.put_image("r2d-a", "v1", LABELS)
    forged = [
        [
            "r2d-a",
            "v1",
            "sha256:" + "3" * 64,
            DOCKER_MANIFEST,
            {"repo2docker-service.owner": "bob"},
            None,
            "amd64",
            1,
        ]
    ]
    put_snapshot(registry, rows_blob(forged))
    async with client(registry) as c:
        c.revalidate_batch = 64
        await read_snapshot(c, "r2d")
        [image] = await c.list_images("r2d-")
    assert image.digest == digest and image.labels == LABELS


async def test_snapshot_row_with_the_real_digest_and_forged_labels(registry):
    """A snapshot row with the tag's real digest and forged labels: a conditional request cannot
    tell (the digest is right), so the listing believes it until the snapshot's summaries are
    verified (the catalog runs verify_imported in the background after its first listing)."""
    digest, _ = registry.put_image("r2d-a", "v1", LABELS)
    forged = [
        [
            "r2d-a",
            "v1",
            digest,
            DOCKER_MANIFEST,
            {"repo2docker-service.owner": "bob"},
            None,
            "amd64",
            1,
        ]
    ]
    put_snapshot(registry, rows_blob(forged))
    async with client(registry) as c:
        await read_snapshot(c, "r2d")
        [image] = await c.list_images("r2d-")
        assert image.labels != LABELS  # the window the docs name
        assert await c.verify_imported() == (1, 1)
        [image] = await c.list_images("r2d-")
    assert image.labels == LABELS


async def test_a_snapshot_row_that_cannot_be_verified_is_not_believed(registry, caplog):
    """The row's manifest answers 100 000 deep when verified: the forged summary is dropped (with
    a warning), and the next listing reads the tag afresh instead of keeping the snapshot's
    word (before, one such answer ended the verification of every other row too)."""
    digest, _ = registry.put_image("r2d-a", "v1", LABELS)
    put_snapshot(
        registry,
        rows_blob([["r2d-a", "v1", digest, DOCKER_MANIFEST, {"x": "forged"}, None, "amd64", 1]]),
    )
    async with client(registry) as c:
        await read_snapshot(c, "r2d")
        await c.list_images("r2d-")

        @registry.route("GET", r"^/v2/r2d-a/manifests/sha256:")
        def deep(h, match):
            h.send(200, deep_json(), {}, DOCKER_MANIFEST)

        assert await c.verify_imported() == (1, 0)
        registry.routes.clear()  # the tag answers again: read afresh, not from the snapshot
        [image] = await asyncio.wait_for(c.list_images("r2d-"), 30)
    assert image.labels == LABELS
    assert "Could not verify" in caplog.text


@pytest.mark.parametrize("attack", ["deep manifest", "endless tag list", "digest mismatch"])
async def test_one_hostile_repository_does_not_hide_everyone_elses_images(registry, attack, caplog):
    """mallory's repository holds a 100 000 deep manifest, an endless tag list or a manifest not
    matching its digest header: her tag (or repository) is left out with a warning, alice's
    image is listed (before, the whole registry listing failed: local images only, for all)."""
    registry.put_image("r2d-a", "v1", LABELS)
    _, body = registry.put_image("r2d-mallory", "v1")
    if attack == "deep manifest":
        registry.put_manifest("r2d-mallory", "v1", deep_json(), DOCKER_MANIFEST)
    elif attack == "endless tag list":

        @registry.route("GET", r"^/v2/r2d-mallory/tags/list$")
        def endless(h, match):
            h.stream(iter(lambda: b'"v1",' * 10000, None))

    else:

        @registry.route("GET", r"^/v2/r2d-mallory/manifests/v1$")
        def lying(h, match):
            h.send(200, body, {"Docker-Content-Digest": "sha256:" + "4" * 64}, DOCKER_MANIFEST)

    async with client(registry) as c:
        images = await asyncio.wait_for(c.list_images("r2d-"), 30)
    assert [(i.repository, i.tag) for i in images] == [("r2d-a", "v1")]
    assert "r2d-mallory" in caplog.text
