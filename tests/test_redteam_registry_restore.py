"""Red team: a hostile registry against the service's start (restore of build records and logs).

A service on a fresh engine reads its build history back from the registry before it answers
(r2d_core.archive). Whatever the registry holds, written by whoever may push there or by a
compromised registry, must not crash that start, stall it, balloon its memory, or make a build
appear as someone else's. Each attack is one record artifact (or answer) in
:class:`~tests.harness.hostile_registry.HostileRegistry`, next to one good record that must still
be restored. The engine is unreachable on purpose: the manager's start goes on to the restore
without it, as it does when the engine is down.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import os
import threading
import time
import zlib

import pytest
from traitlets.config import Config

from r2d_core.logs import LogBuffer
from r2d_core.manager import BuildManager
from r2d_core.models import Build, BuildState
from r2d_core.records import LOG_MEDIA_TYPE, RECORD_MEDIA_TYPE, encode_log, encode_record
from r2d_core.registry.artifacts import ARTIFACT_TYPE, ArtifactStore
from r2d_core.registry.artifacts_tags import record_tag, referrers_tag
from tests.harness.hostile_registry import OCI_INDEX, HostileRegistry, deep_json, sha256

SHA = "a" * 40
ANNOTATION = "io.repo2docker-service.build."


@pytest.fixture
def registry():
    with HostileRegistry() as server:
        yield server


def config_for(registry: HostileRegistry, tmp_path) -> Config:
    c = Config()
    c.DockerEngine.host = f"unix://{tmp_path}/no-engine.sock"
    c.BuildManager.image_prefix = f"{registry.host}/r2d-"
    c.BuildManager.reconnect_interval = 60.0
    c.Registry.url = registry.url
    c.Registry.timeout = 1.0
    c.Registry.listing_ttl = 0
    return c


def manager(registry: HostileRegistry, tmp_path) -> BuildManager:
    return BuildManager(config=config_for(registry, tmp_path))


def a_build(m: BuildManager, owner: str, name: str, build_id: str, **fields) -> Build:
    log = LogBuffer(64 * 1024)
    log.append("building", f"built by {owner}")
    log.close()
    build = Build(
        id=build_id,
        owner=owner,
        name=name,
        repo="https://git.example.org/x.git",
        ref="main",
        sha=SHA,
        image=m.catalog.image_for(owner, name, SHA, "main"),
        push=True,
        requested_by=owner,
        state=BuildState.FAILED,
        finished=time.time(),
        log=log,
    )
    for key, value in fields.items():
        setattr(build, key, value)
    return build


def repository_of(m: BuildManager, build: Build) -> str:
    location = m.catalog.registry_location(build.image)
    assert location is not None
    return location[0]


def put_record(
    registry: HostileRegistry,
    m: BuildManager,
    build: Build,
    *,
    record: bytes | None = None,
    log: bytes | None = None,
    repository: str | None = None,
    embed: bool = True,
    created: str | None = None,
) -> str:
    """A record artifact laid out as the service writes it (r2d_core.registry.artifacts)."""
    repository = repository or repository_of(m, build)
    return registry.put_artifact(
        repository,
        record_tag(build.id),
        artifact_type=ARTIFACT_TYPE,
        layers=[
            (RECORD_MEDIA_TYPE, record if record is not None else encode_record(build)),
            (LOG_MEDIA_TYPE, log if log is not None else encode_log(build.log)),
        ],
        annotations={
            f"{ANNOTATION}id": build.id,
            f"{ANNOTATION}owner": build.owner,
            "org.opencontainers.image.created": created or "2026-12-01T10:00:00Z",
        },
        embed=embed,
    )


def put_manifest_tag(
    registry: HostileRegistry, repository: str, build_id: str, body: bytes
) -> None:
    registry.put_manifest(
        repository, record_tag(build_id), body, "application/vnd.oci.image.manifest.v1+json"
    )


async def start(m: BuildManager, seconds: float = 30.0) -> float:
    """Start the manager (restore included); returns how long it took."""
    started = time.monotonic()
    await asyncio.wait_for(m.start(), seconds)
    return time.monotonic() - started


def listed(m: BuildManager) -> list[dict]:
    """What ``GET /api/builds`` serialises (a to_dict that raises would be a 500)."""
    return [b.to_dict() for b in m.list_builds()]


@pytest.fixture
async def good(registry, tmp_path):
    """A manager and one honest record that every attack leaves restorable."""
    m = manager(registry, tmp_path)
    build = a_build(m, "alice", "good", "0000000000aa")
    put_record(registry, m, build)
    yield m, build
    await m.stop()


def ids(m: BuildManager) -> set[str]:
    return {b.id for b in m.list_builds()}


# ---- records that are not what they say --------------------------------------------------------
def _manifest(layers, annotations=None, **extra) -> bytes:
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(b"{}"),
            "size": 2,
        },
        "layers": layers,
        "annotations": annotations
        if annotations is not None
        else {f"{ANNOTATION}id": "0000000000bb"},
    }
    body.update(extra)
    return json.dumps(body).encode()


BROKEN_MANIFESTS = {
    "record layer without digest or data": _manifest(
        [{"mediaType": RECORD_MEDIA_TYPE, "size": 10}]
    ),
    "record layer digest not a string": _manifest([{"mediaType": RECORD_MEDIA_TYPE, "digest": 5}]),
    "annotations a list": _manifest(
        [{"mediaType": RECORD_MEDIA_TYPE, "digest": sha256(b"x")}], annotations=[1]
    ),
    "layer media type a list": _manifest(
        [{"mediaType": [RECORD_MEDIA_TYPE], "digest": sha256(b"x")}]
    ),
    "layers a string": _manifest("layers"),
    "100 000 deep": deep_json(),
    "a JSON list": b"[1, 2]",
    "not JSON": b"\xff\xfe",
    "record digest of an unknown algorithm": _manifest(
        [{"mediaType": RECORD_MEDIA_TYPE, "digest": "md5:" + "0" * 32}]
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
async def test_a_broken_record_manifest_is_skipped(registry, good, case):
    m, build = good
    put_manifest_tag(registry, repository_of(m, build), "0000000000bb", BROKEN_MANIFESTS[case])
    await start(m)
    assert ids(m) == {build.id}
    listed(m)


@pytest.mark.parametrize("where", ["manifest", "tags", "manifest drip", "tags drip"])
async def test_one_repository_answering_500_does_not_cost_the_others_their_history(
    registry, good, where
):
    """One repository's record manifest or tag list answers 500, or a byte every 0.2 s: only
    its records are skipped (before, the whole restore failed, and was retried in vain)."""
    m, build = good
    bad = a_build(m, "mallory", "x", "0000000000bb")
    put_record(registry, m, bad)
    kind = "manifests" if where.startswith("manifest") else "tags"

    @registry.route("GET", rf"^/v2/r2d-mallory-x/{kind}/")
    def broken(h, match):
        if "drip" in where:
            h.drip(b"{" + b" " * 100 + b"}", interval=0.2)
        else:
            h.send(500, b"oops")

    await start(m)
    assert ids(m) == {build.id}
    assert m._restore_task is None  # done, not retried: the rest of the history is there


def _log(rows: list) -> bytes:
    return gzip.compress(("\n".join(json.dumps(r) for r in rows) + "\n").encode())


BROKEN_LOGS = {
    "line number 1e400 (inf)": _log([{"total": 1}, {"n": 1e400, "phase": "x", "message": "m"}]),
    "head a list": _log([[1], {"n": 0, "phase": "x", "message": "m"}]),
    "line a list": _log([{"total": 1}, [0, "x", "m"]]),
    "omitted a number": _log(
        [{"total": 1}, {"n": 0, "phase": "x", "message": "m", "omitted": {"first": "a"}}]
    ),
    "total a string": _log([{"total": "many"}, {"n": 0, "phase": "x", "message": "m"}]),
    "deep": gzip.compress(deep_json()),
    "not gzip": b"plain text",
    "truncated gzip": gzip.compress(b'{"total":0}\n' * 1000)[:50],
}


@pytest.mark.parametrize("case", list(BROKEN_LOGS))
async def test_a_broken_log_is_skipped(registry, good, case):
    m, build = good
    bad = a_build(m, "alice", "bad", "0000000000bb")
    put_record(registry, m, bad, log=BROKEN_LOGS[case])
    await start(m)
    assert build.id in ids(m)
    listed(m)


@pytest.mark.parametrize(
    "fields",
    [
        {"options": 5},
        {"options": "a string"},
        {"options": [["a", "b"]]},
        {"annotations": 7},
        {"annotations": {"a": {"nested": 1}}},
        {"exit_code": 10**400},
        {"created": "not a time", "finished": {"a": 1}},
        {"state": "running"},
    ],
    ids=lambda f: json.dumps(f)[:30] if "exit_code" not in f else "huge exit code",
)
async def test_wrong_typed_record_fields_do_not_make_listings_fail(registry, good, fields):
    m, build = good
    bad = a_build(m, "alice", "bad", "0000000000bb")
    record = json.loads(encode_record(bad))
    record.update(fields)
    put_record(registry, m, bad, record=json.dumps(record).encode())
    await start(m)
    assert build.id in ids(m)
    for item in listed(m):
        json.dumps(item)  # what the API answers
        assert isinstance(item.get("options", {}), dict)
        assert isinstance(item.get("annotations", {}), dict)


# ---- whose record ------------------------------------------------------------------------------
async def test_a_record_claiming_another_owner_is_skipped(registry, good):
    """mallory may push to her own repository: a record there naming alice is not alice's."""
    m, build = good
    forged = a_build(m, "alice", "good", "0000000000bb")
    mallorys = repository_of(m, a_build(m, "mallory", "x", "0"))
    put_record(registry, m, forged, repository=mallorys)
    await start(m)
    assert ids(m) == {build.id}


async def test_a_record_with_the_id_of_a_live_build_is_skipped(registry, good):
    m, _ = good
    m._builds["0000000000cc"] = a_build(m, "bob", "live", "0000000000cc", state=BuildState.BUILDING)
    put_record(registry, m, a_build(m, "alice", "other", "0000000000cc"))
    await start(m)
    assert m.get_build("0000000000cc").owner == "bob"


async def test_two_records_with_one_id_are_both_skipped(registry, good):
    """mallory copies alice's build id into a record of her own (an older one, so it would be
    restored first): neither may take the id, and a warning says why."""
    m, build = good
    copy = a_build(m, "mallory", "x", build.id)
    copy.created = build.created - 3600
    put_record(registry, m, copy, created="2026-12-01T09:00:00Z")
    await start(m)
    assert build.id not in ids(m) or m.get_build(build.id).owner == "alice"
    assert all(b.owner != "mallory" for b in m.list_builds())


async def test_records_from_the_future_do_not_push_the_real_history_out(registry, good, caplog):
    """A flood of records dated 2999 in one repository must not take the whole history."""
    m, build = good
    m.build_history = 5
    for i in range(20):
        put_record(
            registry,
            m,
            a_build(m, "mallory", "x", f"00000000f{i:03x}"),
            created="2999-01-01T00:00:00Z",
        )
    await start(m)
    assert build.id in ids(m)


# ---- size and time -----------------------------------------------------------------------------
def rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRSS:
    """Samples this process's RSS every 10 ms while the block runs."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


@functools.lru_cache(maxsize=1)
def gzip_bomb(gib: int = 2) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1024 * 1024)
    return b"".join(deflate.compress(zeros) for _ in range(gib * 1024)) + deflate.flush()


async def test_a_gzip_bomb_log_keeps_memory_bounded(registry, good):
    """2 MiB of gzip that inflates to 2 GiB: read, refused at the log limit, RSS bounded."""
    m, build = good
    bomb = gzip_bomb()
    bad = a_build(m, "alice", "bad", "0000000000bb")
    put_record(registry, m, bad, log=bomb, embed=False)
    with PeakRSS() as memory:
        await start(m)
    assert build.id in ids(m) and "0000000000bb" not in ids(m)
    assert memory.growth < 150 * 1024 * 1024, memory.growth
    print(f"gzip bomb ({len(bomb) >> 10} KiB -> 2 GiB): RSS growth {memory.growth >> 20} MiB")


async def test_a_huge_log_blob_is_not_read_past_its_limit(registry, good):
    """A 300 MiB log blob: the client stops reading at the limit instead of holding it all."""
    m, build = good
    bad = a_build(m, "alice", "bad", "0000000000bb")
    put_record(registry, m, bad, embed=False)
    chunk = os.urandom(1024 * 1024)

    @registry.route("GET", rf"^/v2/.*/blobs/{sha256(encode_log(bad.log))}$")
    def huge_log(h, match):
        h.stream([chunk] * 300)

    with PeakRSS() as memory:
        await start(m)
    assert build.id in ids(m) and "0000000000bb" not in ids(m)
    assert registry.sent < 200 * 1024 * 1024
    assert memory.growth < 150 * 1024 * 1024, memory.growth
    print(f"300 MiB log blob: RSS growth {memory.growth >> 20} MiB")


async def test_logs_are_decoded_off_the_event_loop(registry, good, monkeypatch):
    """A record's log may inflate to 16 MiB of JSON lines (~0.35 s of CPU here): decoded in a
    worker thread, so the loop (in TLJH the Hub's, and the plugin starts on the first request)
    keeps answering. Measured: worst loop lag 0.34 s on the loop, 0.17 s in a thread."""
    import r2d_core.archive as archive

    threads = []
    real = archive.decode_log

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(archive, "decode_log", spy)
    m, build = good
    await start(m)
    assert build.id in ids(m)
    assert threads and threading.main_thread() not in threads
    assert m.get_build(build.id).log.summary()["bytes"] >= 0


async def test_a_dripping_registry_cannot_stall_the_start(registry, tmp_path):
    """The catalog drips a byte every 0.3 s: no read phase times out, the start must still end
    soon, with the restore retried later in the background."""
    m = manager(registry, tmp_path)

    @registry.route("GET", r"^/v2/_catalog$")
    def drip(h, match):
        h.drip(b'{"repositories": [' + b" " * 2000 + b"]}", interval=0.3)

    try:
        took = await start(m, 120)
        assert took < 15, took
        assert m._restore_task is not None  # retried later
    finally:
        await m.stop()


async def test_many_record_tags_are_bounded_in_time(registry, good):
    """5 000 record tags in one repository, each answered slowly: the restore ends by its
    deadline, and the start goes on."""
    m, build = good
    repository = repository_of(m, build)
    tags = [record_tag(f"{i:012x}") for i in range(5000)] + [record_tag(build.id)]

    @registry.route("GET", rf"^/v2/{repository}/tags/list$")
    def many(h, match):
        h.send_json({"name": repository, "tags": tags})

    @registry.route("GET", rf"^/v2/{repository}/manifests/r2d-build-0")
    def slow(h, match):
        time.sleep(0.05)
        h.send_json({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, 404)

    took = await start(m, 120)
    assert took < 15, took


# ---- referrers ---------------------------------------------------------------------------------
async def test_a_forged_referrer_does_not_delete_another_image(registry, tmp_path):
    """The fallback index of image A lists image B's manifest (no artifactType): deleting A's
    artifacts must not delete B."""
    m = manager(registry, tmp_path)
    try:
        repository = "r2d-alice-demo"
        a_digest, _ = registry.put_image(repository, "a" * 40)
        b_digest, b_body = registry.put_image(repository, "b" * 40)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "digest": b_digest,
                    "size": len(b_body),
                }
            ],
        }
        registry.put_manifest(repository, referrers_tag(a_digest), index, OCI_INDEX)
        store = ArtifactStore(m.registry.client())
        await store.delete_for_image(repository, a_digest)
        assert (repository, b_digest) in registry.manifests
        assert not registry.seen("DELETE", b_digest)
    finally:
        await m.stop()


async def test_very_many_referrers_are_bounded(registry, tmp_path):
    m = manager(registry, tmp_path)
    try:
        repository = "r2d-alice-demo"
        a_digest, _ = registry.put_image(repository, "a" * 40)
        entries = [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": ARTIFACT_TYPE,
                "digest": "sha256:" + f"{i:064x}",
                "size": 100,
            }
            for i in range(12_000)
        ]
        registry.put_manifest(
            repository,
            referrers_tag(a_digest),
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
            OCI_INDEX,
        )
        store = ArtifactStore(m.registry.client())
        started = time.monotonic()
        await asyncio.wait_for(store.delete_for_image(repository, a_digest), 60)
        assert time.monotonic() - started < 20
        assert len(registry.requests) < 3000
    finally:
        await m.stop()


def test_embedded_data_is_bounded_before_decoding():
    from r2d_core.registry.artifacts import EMBED_MAX, _content

    data = base64.b64encode(b"x" * (EMBED_MAX * 4)).decode()
    assert _content({"data": data, "digest": "sha256:0", "size": 1}) is None
