"""The TLJH tutorial's recipes on a real Hub whose config is loaded the way TLJH loads it.

Each Hub here: TLJH-style ``jupyterhub_config.py`` (``users.admin``, the plugin hook), then the
``jupyterhub_config.d`` files — the test's engine settings first, then the recipe exactly as the
tutorial prints it (read from ``docs/tutorials/tljh.md``). The path, default-roles-off, read-only
group and admin group recipes also run through the whole behaviour suite (``test_service.py``,
adapter ``tljh-recipes``); these tests cover what that suite cannot: the defaults themselves, the
defaults turned off on a Hub that had them, and registry push."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.hub import Hub
from tests.registry_fixtures import *  # noqa: F403 (registry servers)
from tests.service_support import (
    Caller,
    make_hub,
    tljh_recipes,
    tljh_service_config,
    wait_build,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub]

TLJH_ADMIN = "root"  # in TLJH's users.admin (sudo tljh-config add-item users.admin root)


def tljh_hub(docker_host: str, config_d: dict[str, str] | None = None) -> Hub:
    """A TLJH-style Hub with the plugin's default roles (nothing of the suite's)."""
    hub = make_hub(
        docker_host,
        mode="tljh",
        service_name="repo2docker",
        tljh_default_roles=True,
        tljh_admins=[TLJH_ADMIN],
        roles=[],
        groups={},
        config_d=config_d or {},
    )
    hub.config.service_config = tljh_service_config(docker_host)
    return hub


@contextlib.contextmanager
def started(hub: Hub) -> Iterator[Hub]:
    try:
        hub.start()
        hub.wait_for_service()
        yield hub
    finally:
        hub.cleanup()


def caller(hub: Hub, user: str, token: str | None = None) -> Caller:
    """An API-token caller for ``user`` (created first, as a first login would)."""
    if token is None:
        r = hub.api("POST", f"users/{user}")
        assert r.status_code in (201, 409), r.text
        token = hub.token_for(user)
    client = httpx.AsyncClient(base_url=hub.service_url, timeout=30)
    return Caller(user, client, {"Authorization": f"token {token}"})


async def test_default_permissions_and_settings_from_jupyterhub_config_d(
    docker_host, local_images, git_server
):
    """Defaults on: a user builds in their own namespace only, a TLJH admin everywhere; and the
    tutorial's first file (BuildManager settings) applies — its allow-list refuses our repo."""
    recipe = tljh_recipes()["repo2docker.py"]
    with started(tljh_hub(docker_host, {"repo2docker.py": recipe})) as hub:
        alice, root = caller(hub, "alice"), caller(hub, TLJH_ADMIN)
        body = {"repo": git_server.url("hello"), "ref": "v1", "name": "img"}
        try:
            r = await alice.request("POST", "api/builds", json=body)
            assert r.status_code == 400 and "github" in r.json()["message"], r.text
            r = await alice.request("POST", "api/builds", json={**body, "owner": "bob"})
            assert r.status_code == 403, r.text
            r = await root.request("POST", "api/builds", json={**body, "owner": "bob"})
            assert r.status_code == 400, r.text  # allowed to build for bob; the repo is not
            info = (await alice.request("GET", "api/")).json()["permissions"]
            assert info["build"] == {"all": False, "owners": ["alice"], "groups": []}
            assert info["delete"]["owners"] == ["alice"]
            info = (await root.request("GET", "api/")).json()["permissions"]
            assert info["build"]["all"] and info["delete"]["all"]
        finally:
            await alice.client.aclose()
            await root.client.aclose()


async def test_default_roles_off_takes_away_build_on_an_existing_hub(
    docker_host, local_images, git_server
):
    """Security: the recipe really turns the defaults off, also for a Hub that had them (roles
    kept in its database) and for tokens issued before: an ordinary user gets 403 on build."""
    hub = tljh_hub(docker_host)
    try:
        hub.start()
        hub.wait_for_service()
        alice = caller(hub, "alice")
        token = alice.headers["Authorization"].split()[1]
        name = f"own{int(time.time())}"
        r = await alice.request(
            "POST", "api/builds", json={"repo": git_server.url("hello"), "ref": "v1", "name": name}
        )
        assert r.status_code == 202, r.text
        assert (await wait_build(alice, r.json()["id"]))["state"] == "built"
        await alice.client.aclose()

        hub.stop()
        hub.config.config_d = {"repo2docker-roles.py": tljh_recipes()["repo2docker-roles.py"]}
        hub.start()
        hub.wait_for_service()
        alice = caller(hub, "alice", token)  # the same token, issued while defaults were on
        root = caller(hub, TLJH_ADMIN)
        try:
            for who in (alice, root):
                r = await who.request(
                    "POST",
                    "api/builds",
                    json={"repo": git_server.url("hello"), "ref": "v2", "name": name},
                )
                assert r.status_code == 403, (who.name, r.text)
                assert "custom:repo2docker:build" in r.json()["message"]
                assert (await who.request("GET", "api/images")).status_code == 403
                r = await who.request("DELETE", f"api/images/alice/{name}")
                assert r.status_code in (403, 404), r.text
            info = (await alice.request("GET", "api/")).json()["permissions"]
            assert not info["build"]["owners"] and not info["read"]["owners"]
        finally:
            await alice.client.aclose()
            await root.client.aclose()
    finally:
        hub.cleanup()


async def test_registry_push_recipe(
    docker_host, local_images, git_server, registry_htpasswd, tmp_path
):
    """The push recipe as written, with its placeholders (registry host, account, password file)
    replaced by the test registry's: every build is pushed."""
    registry = registry_htpasswd
    password_file = tmp_path / "registry-password"
    password_file.write_text(registry.users["alice"] + "\n")
    recipe = (
        tljh_recipes()["repo2docker-registry.py"]
        .replace("https://registry.example.org", registry.url)
        .replace("registry.example.org/", f"{registry.host}/")
        .replace("repo2docker-bot", "alice")
        .replace("/opt/tljh/config/registry-password", str(password_file))
    )
    assert "example.org" not in recipe and str(password_file) in recipe
    with started(tljh_hub(docker_host, {"repo2docker-registry.py": recipe})) as hub:
        alice = caller(hub, "alice")
        name = f"pushed{int(time.time())}"
        try:
            r = await alice.request(
                "POST",
                "api/builds",
                json={"repo": git_server.url("hello"), "ref": "v1", "name": name},
            )
            assert r.status_code == 202, r.text
            assert r.json()["push"] is True
            done = await wait_build(alice, r.json()["id"])
            assert done["state"] == "built", done
            image = (await alice.request("GET", f"api/images/alice/{name}")).json()
            assert image["versions"][0]["pushed"], image
        finally:
            await alice.client.aclose()
        repository = done["image"].split("/", 1)[1].rsplit(":", 1)[0]
        tags = httpx.get(
            f"{registry.url}/v2/{repository}/tags/list",
            auth=("alice", registry.users["alice"]),
            timeout=10,
        )
        assert tags.status_code == 200 and done["image"].rsplit(":", 1)[1] in tags.json()["tags"]


async def test_viewers_read_everything_and_build_nothing_admin_group_does_all(
    docker_host, local_images, git_server
):
    """The viewer and admin-group recipes combined with default roles off, as the tutorial
    suggests, and members added the admin-panel way (the Hub's REST API) after the Hub started."""
    recipes = tljh_recipes()
    config_d = {
        name: recipes[name]
        for name in ("repo2docker-roles.py", "repo2docker-viewers.py", "repo2docker-admins.py")
    }
    with started(tljh_hub(docker_host, config_d)) as hub:
        ops, carol, bob = (caller(hub, user) for user in ("ops", "carol", "bob"))
        hub.set_groups("repo2docker-admins", ["ops"])
        hub.set_groups("repo2docker-viewers", ["carol"])
        name = f"bobs{int(time.time())}"
        body = {"repo": git_server.url("hello"), "ref": "v1", "name": name}
        try:
            # nobody builds by default any more, not even in their own namespace
            assert (await bob.request("POST", "api/builds", json=body)).status_code == 403
            assert (await bob.request("GET", "api/images")).status_code == 403
            # the admin group builds for anyone
            r = await ops.request("POST", "api/builds", json={**body, "owner": "bob"})
            assert r.status_code == 202, r.text
            build_id = r.json()["id"]
            assert (await wait_build(ops, build_id))["state"] == "built"
            # the viewer reads it all, log included, and changes nothing
            images = (await carol.request("GET", "api/images")).json()["images"]
            assert [i for i in images if i["owner"] == "bob" and i["name"] == name]
            assert all(not i["can_build"] and not i["can_delete"] for i in images)
            assert (await carol.request("GET", f"api/images/bob/{name}")).status_code == 200
            log = await carol.request("GET", f"api/builds/{build_id}/logs?format=text")
            assert log.status_code == 200, log.text
            for request in (
                ("POST", "api/builds", {"json": body}),
                ("POST", "api/builds", {"json": {**body, "owner": "bob", "force": True}}),
                ("DELETE", f"api/images/bob/{name}", {}),
            ):
                method, path, kwargs = request
                r = await carol.request(method, path, **kwargs)
                assert r.status_code == 403, (request, r.text)
            # and the admin group deletes anyone's
            r = await ops.request("DELETE", f"api/images/bob/{name}")
            assert r.status_code == 200 and r.json()["deleted"], r.text
        finally:
            for who in (ops, carol, bob):
                await who.client.aclose()
