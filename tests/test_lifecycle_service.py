"""The lifecycle policy through the real API behind a real JupyterHub, on both adapters (standalone
service and TLJH plugin): per-owner limits, retention and the disk guard."""

from __future__ import annotations

import asyncio

import pytest

from tests.service_support import Callers, adapter_hub, running, wait_build

pytestmark = [pytest.mark.docker, pytest.mark.hub]


@pytest.fixture(scope="module", params=["service", "tljh"])
async def quota_callers(request, docker_host, local_images, git_server):
    hub = adapter_hub(docker_host, request.param)
    hub.config.service_config += (
        "\nc.LifecyclePolicy.max_images_per_owner = 1\nc.LifecyclePolicy.keep_versions = 1\n"
        "c.LifecyclePolicy.keep_failed_records = 7\n"
        "c.LifecyclePolicy.max_failed_record_days = 2.5\n"
        "c.LifecyclePolicy.max_unused_days = 30\n"
        "c.LifecyclePolicy.max_build_age_days = 45.5\n"
    )
    with running(hub):
        callers = Callers(hub)
        try:
            yield callers
        finally:
            await callers.aclose()


async def delete_all(caller, owner: str) -> None:
    """Start from an empty namespace: the engine is shared by the whole test session."""
    r = await caller.request("GET", "api/images", params={"owner": owner})
    assert r.status_code == 200, r.text
    for image in r.json()["images"]:
        if image["owner"] == owner:
            d = await caller.request("DELETE", f"api/images/{owner}/{image['name']}")
            assert d.status_code == 200, d.text


async def test_api_info_shows_the_failed_record_retention(quota_callers):
    """How long a failed build's record stays in the registry is a limit ``GET api/`` shows next
    to the others (as the admin set it, a fraction of a day included), as the document says."""
    import jsonschema

    alice = await quota_callers.token("alice")
    r = await alice.request("GET", "api/")
    assert r.status_code == 200, r.text
    limits = r.json()["limits"]
    assert limits["keep_failed_records"] == 7
    assert limits["max_failed_record_days"] == 2.5
    # how long an unused image and a finished build's log last: what users plan with
    assert limits["max_unused_days"] == 30 and limits["max_build_age_days"] == 45.5
    assert limits["keep_versions"] == 1 and limits["max_images_per_owner"] == 1
    document = (await alice.request("GET", "api/openapi.json")).json()
    schema = document["components"]["schemas"]["Info"]["properties"]["limits"]
    assert {
        "keep_failed_records",
        "max_failed_record_days",
        "max_unused_days",
        "max_build_age_days",
    } <= set(schema["properties"])
    jsonschema.validate(limits, schema)


async def test_per_owner_limit_and_retention_through_the_api(quota_callers, git_server):
    alice, bob = await quota_callers.token("alice"), await quota_callers.token("bob")
    await delete_all(alice, "alice")
    await delete_all(bob, "bob")
    repo = git_server.url("hello")
    limits = (await alice.request("GET", "api/")).json()["limits"]
    assert limits["max_images_per_owner"] == 1 and limits["keep_versions"] == 1
    assert limits["max_bytes_per_owner"] == 0

    r = await alice.request("POST", "api/builds", json={"repo": repo, "ref": "v1", "name": "lc"})
    assert r.status_code == 202, r.text
    first = await wait_build(alice, r.json()["id"])
    assert first["state"] == "built", first

    # a second image would exceed the limit: refused before anything is queued, naming it
    r = await alice.request("POST", "api/builds", json={"repo": repo, "ref": "v1", "name": "lc2"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "quota_exceeded" and body["limit"] == "max_images_per_owner"
    assert "alice has 1 of 1 images" in body["message"]
    assert "c.LifecyclePolicy.max_images_per_owner" in body["message"]
    builds = (await alice.request("GET", "api/builds", params={"owner": "alice"})).json()["builds"]
    assert not [b for b in builds if b["name"] == "lc2"]

    # another owner is not affected
    r = await bob.request("POST", "api/builds", json={"repo": repo, "ref": "v1", "name": "lc"})
    assert r.status_code == 202, r.text

    # a new version of the same image replaces the old one (keep_versions = 1)
    r = await alice.request("POST", "api/builds", json={"repo": repo, "ref": "v2", "name": "lc"})
    assert r.status_code == 202, r.text
    second = await wait_build(alice, r.json()["id"])
    assert second["state"] == "built", second
    for _ in range(50):  # retention runs right after the build is reported done
        image = (await alice.request("GET", "api/images/alice/lc")).json()
        if [v["tag"] for v in image["versions"]] == [second["sha"]]:
            break
        await asyncio.sleep(0.2)
    assert [v["tag"] for v in image["versions"]] == [second["sha"]]
    await wait_build(bob, (await bob.request("GET", "api/builds")).json()["builds"][0]["id"])


@pytest.fixture(scope="module", params=["service", "tljh"])
async def guarded_callers(request, docker_host, local_images, git_server):
    hub = adapter_hub(docker_host, request.param)
    hub.config.service_config += "\nc.LifecyclePolicy.min_free_bytes = '1P'\n"
    with running(hub):
        callers = Callers(hub)
        try:
            yield callers
        finally:
            await callers.aclose()


async def test_disk_guard_answers_503_with_the_free_space(guarded_callers, git_server):
    frank = await guarded_callers.token("frank")
    r = await frank.request(
        "POST",
        "api/builds",
        json={"repo": git_server.url("hello"), "ref": "dev", "name": "guarded", "force": True},
    )
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "insufficient_storage" and body["limit"] == "min_free_bytes"
    assert 0 < body["free_bytes"] < body["min_free_bytes"]
    assert "free, less than the 1024.0 TiB c.LifecyclePolicy.min_free_bytes" in body["message"]
