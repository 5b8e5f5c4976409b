"""The build-record artifacts are plain OCI 1.1 artifacts: oras-py (the OCI client of the design
card) reads them — the record by its tag, its subject, the referrers fallback index — against a
real docker-registry in all three auth modes (one oras client per repository, in a thread: it
is synchronous)."""

from __future__ import annotations

import asyncio
import json

import pytest

oras_provider = pytest.importorskip("oras.provider")

from r2d_core.registry.artifacts import ARTIFACT_TYPE, ArtifactStore  # noqa: E402
from r2d_core.registry.artifacts_tags import record_tag, referrers_tag  # noqa: E402
from r2d_core.registry.models import OCI_INDEX  # noqa: E402
from tests.harness.registry import RegistryServer  # noqa: E402
from tests.registry_fixtures import *  # noqa: E402, F403
from tests.registry_fixtures import unique  # noqa: E402
from tests.test_archive_registry import service_client  # noqa: E402

pytestmark = pytest.mark.registry


def oras_read(server: RegistryServer, repository: str, build_id: str, subject: str) -> tuple:
    backend = "basic" if server.mode == "htpasswd" else "token"
    registry = oras_provider.Registry(server.host, insecure=True, auth_backend=backend)
    if server.mode != "anonymous":
        user = "alice" if server.mode == "htpasswd" else "admin"
        registry.auth.set_basic_auth(user, server.users[user])
    manifest = registry.get_manifest(f"{server.host}/{repository}:{record_tag(build_id)}")
    record = registry.get_blob(f"{server.host}/{repository}", manifest["layers"][0]["digest"])
    index = registry.get_manifest(
        f"{server.host}/{repository}:{referrers_tag(subject)}", allowed_media_type=[OCI_INDEX]
    )
    return manifest, record.content, index


async def test_oras_reads_our_artifacts(registry_each: RegistryServer):
    server = registry_each
    repository = unique("alice")
    async with server.pusher() as pusher:
        image = await pusher.push_image(repository, "v1")
    async with service_client(server) as client:
        digest = await ArtifactStore(client).push(
            repository,
            build_id="0123456789ab",
            owner="alice",
            created="2026-12-01T08:00:00.000000Z",
            record=b'{"id":"0123456789ab"}',
            log=b"not read here",
            image_tag="v1",
        )
    manifest, record, index = await asyncio.to_thread(
        oras_read, server, repository, "0123456789ab", image.digest
    )
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["subject"]["digest"] == image.digest
    assert json.loads(record) == {"id": "0123456789ab"}
    assert [m["digest"] for m in index["manifests"]] == [digest]
