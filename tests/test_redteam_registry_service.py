"""Red team, end to end: the real service (both adapters, through the Hub's proxy) configured with
a hostile registry. Its start restores build records from that registry; records that crash a
naive reader, a repository whose manifest is 100 000 deep, a never-ending tag list and a record
manifest answered a byte at a time are all there. The service must come up, answer no 500, and
show alice's honest build and its log."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from traitlets.config import Config

from r2d_core.manager import BuildManager
from r2d_core.records import LOG_MEDIA_TYPE, RECORD_MEDIA_TYPE, encode_log, encode_record
from r2d_core.registry.artifacts import ARTIFACT_TYPE
from r2d_core.registry.artifacts_tags import record_tag
from tests.harness.hostile_registry import DOCKER_MANIFEST, HostileRegistry, deep_json
from tests.service_support import Callers, adapter_hub, running
from tests.test_redteam_registry_restore import ANNOTATION, a_build

pytestmark = [pytest.mark.docker, pytest.mark.hub]


def registry_config(registry: HostileRegistry) -> str:
    return "\n".join(
        [
            "",
            f"c.Registry.url = {registry.url!r}",
            "c.Registry.timeout = 2.0",
            f"c.BuildManager.image_prefix = {registry.host + '/r2d-'!r}",
        ]
    )


def record(registry: HostileRegistry, build, *, record_bytes=None, log_bytes=None) -> None:
    repository = build.image.split("/", 1)[1].rsplit(":", 1)[0]
    registry.put_artifact(
        repository,
        record_tag(build.id),
        artifact_type=ARTIFACT_TYPE,
        layers=[
            (RECORD_MEDIA_TYPE, record_bytes or encode_record(build)),
            (LOG_MEDIA_TYPE, log_bytes or encode_log(build.log)),
        ],
        annotations={
            f"{ANNOTATION}id": build.id,
            f"{ANNOTATION}owner": build.owner,
            "org.opencontainers.image.created": "2026-12-01T10:00:00Z",
        },
        embed=True,
    )


@pytest.fixture(scope="module")
def hostile():
    with HostileRegistry() as registry:
        c = Config()
        c.BuildManager.image_prefix = f"{registry.host}/r2d-"
        naming = BuildManager(config=c)
        good = a_build(naming, "alice", "good", "00000000a11c")
        record(registry, good)
        # a record whose options make Build.to_dict fail, one whose log has 1e400 as a line
        # number, one whose record layer has no digest (KeyError), all in alice's namespace
        bad = a_build(naming, "alice", "bad", "00000000bad1")
        fields = json.loads(encode_record(bad))
        fields["options"] = 5
        record(registry, bad, record_bytes=json.dumps(fields).encode())
        bad2 = a_build(naming, "alice", "bad2", "00000000bad2")
        record(registry, bad2, log_bytes=gzip.compress(b'{"total":1}\n{"n":1e400}\n'))
        registry.put_manifest(
            "r2d-alice-bad3",
            record_tag("00000000bad3"),
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": ARTIFACT_TYPE,
                "layers": [{"mediaType": RECORD_MEDIA_TYPE, "size": 1}],
            },
            "application/vnd.oci.image.manifest.v1+json",
        )
        # listing attacks: a 100 000 deep manifest, a never-ending tag list, a dripping record
        registry.put_image("r2d-alice-good", "a" * 40, {})
        registry.put_manifest("r2d-mallory-deep", "v1", deep_json(), DOCKER_MANIFEST)

        @registry.route("GET", r"^/v2/r2d-mallory-endless/tags/list$")
        def endless(h, match):
            h.stream(iter(lambda: b'"v1",' * 10000, None))

        @registry.route("GET", r"^/v2/_catalog$")
        def catalog(h, match):
            h.send_json({"repositories": [*registry.repositories(), "r2d-mallory-endless"]})

        @registry.route("GET", r"^/v2/r2d-alice-bad3/manifests/")
        def drip(h, match):
            h.drip(b"{" + b" " * 100 + b"}", interval=0.2)

        yield registry, good


@pytest.fixture(scope="module", params=["service", "tljh"])
def rhub(request, hostile, docker_host, local_images):
    registry, _ = hostile
    hub = adapter_hub(docker_host, request.param)
    hub.config.service_config += registry_config(registry)
    started = time.monotonic()
    with running(hub) as hub:
        hub.took = time.monotonic() - started
        yield hub


@pytest.fixture
async def alice(rhub):
    callers = Callers(rhub)
    yield await callers.token("alice")
    await callers.aclose()


async def test_the_service_starts_and_shows_the_honest_build(rhub, hostile, alice):
    _, good = hostile
    assert rhub.took < 90, rhub.took
    r = await alice.request("GET", "api/builds")
    assert r.status_code == 200, r.text[:500]
    ids = {b["id"] for b in r.json()["builds"]}
    assert good.id in ids
    # options 5 is dropped (the record is otherwise sound); a log numbered 1e400 and a record
    # layer without digest skip their records
    assert "00000000bad1" in ids
    assert not ids & {"00000000bad2", "00000000bad3"}
    assert all(isinstance(b["options"], dict) for b in r.json()["builds"])
    r = await alice.request("GET", f"api/builds/{good.id}")
    assert r.status_code == 200, r.text[:500]
    r = await alice.request("GET", f"api/builds/{good.id}/logs", params={"format": "text"})
    assert r.status_code == 200 and "built by alice" in r.text, r.text[:500]


async def test_image_listing_of_the_hostile_registry_answers(rhub, alice):
    r = await alice.request("GET", "api/images")
    assert r.status_code == 200, r.text[:500]
    r = await alice.request("GET", "api/images", params={"owner": "alice"})
    assert r.status_code != 500, r.text[:500]
