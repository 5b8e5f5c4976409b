"""``r2d_core.spawner.ImageChooser`` in a real JupyterHub: the options form, the server-side check.

The Hub runs the service (managed) and a small recording spawner: its ``start()`` writes what it
was given (``image``, ``user_options``, the server's API token) to a file and serves
``python -m http.server`` on 127.0.0.1, so the Hub's wait for the server succeeds. The chooser asks
the service with the token of a service holding unfiltered ``custom:repo2docker:read``, and
filters with each user's own scopes.

The single-user server's token scopes are the ones the z2jh recipe sets
(``deploy/z2jh/values.yaml``): the test checks that token reaches the service and sees exactly
its owner's images, as a JupyterLab extension would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import async_wait_for
from tests.harness.hub import Hub, HubConfig, login
from tests.service_support import running, service_config, wait_build

pytestmark = [pytest.mark.docker, pytest.mark.hub]

SERVICE = "repo2docker"
CHOOSER = "repo2docker-chooser"
ACCESS = f"access:services!service={SERVICE}"
READ, BUILD = (f"custom:repo2docker:{a}" for a in ("read", "build"))
VALUES = Path(__file__).resolve().parent.parent / "deploy" / "z2jh" / "values.yaml"

ROLES: list[dict[str, Any]] = [
    {"name": "r2d-own", "users": ["alice", "bob", "carol"], "scopes": [ACCESS, f"{BUILD}!user"]},
    # the chooser (inside the Hub process) lists every image, then filters per user
    {"name": "r2d-chooser", "services": [CHOOSER], "scopes": [ACCESS, READ]},
]

# The test spawner, defined in the Hub's config file (the Hub imports nothing from tests/).
SPAWNER = '''
import json, os, subprocess, sys
from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from traitlets import Unicode


class RecordingSpawner(Spawner):
    """Records what it is started with; serves a trivial HTTP server where the Hub expects one."""

    image = Unicode("no-image-chosen", config=True, help="set by the pre_spawn_hook")
    record_file = Unicode(config=True)

    def load_state(self, state):
        super().load_state(state)
        self.pid = state.get("pid", 0)

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state["pid"] = self.pid
        return state

    def clear_state(self):
        super().clear_state()
        self.pid = 0

    async def start(self):
        port = random_port()
        env = self.get_env()
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.pid = proc.pid
        self._proc = proc
        with open(self.record_file, "a") as f:
            f.write(json.dumps({
                "user": self.user.name,
                "image": self.image,
                "user_options": self.user_options,
                "api_token": env["JUPYTERHUB_API_TOKEN"],
                "pid": proc.pid,
            }) + "\\n")
        return ("127.0.0.1", port)

    async def poll(self):
        if not self.pid:
            return 0
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is not None:
            return proc.returncode
        return None

    async def stop(self, now=False):
        if self.pid:
            try:
                os.kill(self.pid, 15)
            except ProcessLookupError:
                pass
            proc = getattr(self, "_proc", None)
            if proc is not None:
                proc.wait(10)
'''


def singleuser_scopes() -> dict[str, list[str]]:
    """The ``Spawner`` scope settings of the z2jh recipe (server token, OAuth client)."""
    spawner = yaml.safe_load(VALUES.read_text())["hub"]["config"]["Spawner"]
    return {k: spawner[k] for k in ("server_token_scopes", "oauth_client_allowed_scopes")}


def hub_extra_config(chooser_token: str, service_port: int, record_file: Path) -> str:
    return "\n".join(
        [
            SPAWNER,
            "c.JupyterHub.spawner_class = RecordingSpawner",
            f"c.RecordingSpawner.record_file = {str(record_file)!r}",
            "c.Spawner.start_timeout = 30",
            "c.Spawner.http_timeout = 30",
            f"c.JupyterHub.services.append({{'name': {CHOOSER!r}, 'api_token': {chooser_token!r}}})",
            # the hook exactly as the docs show it
            "from r2d_core.spawner import ImageChooser",
            "chooser = ImageChooser(",
            f"    url='http://127.0.0.1:{service_port}/services/{SERVICE}/',",
            f"    token={chooser_token!r},",
            ")",
            "c.Spawner.options_form = chooser.options_form",
            "c.Spawner.options_from_form = chooser.options_from_form",
            "c.Spawner.pre_spawn_hook = chooser.pre_spawn_hook",
            *(f"c.Spawner.{key} = {value!r}" for key, value in singleuser_scopes().items()),
        ]
    )


@pytest.fixture(scope="module")
def hub(docker_host, local_images, git_server, tmp_path_factory):
    record_file = tmp_path_factory.mktemp("spawner") / "spawns.jsonl"
    record_file.touch()
    config = HubConfig(
        service_name=SERVICE,
        service_env={"DOCKER_HOST": docker_host},
        service_config=service_config(),
        roles=ROLES,
    )
    hub = Hub(config)
    config.extra_config = hub_extra_config(os.urandom(16).hex(), config.service_port, record_file)
    hub.record_file = record_file  # type: ignore[attr-defined]
    with running(hub):
        yield hub
    # the Hub stops the servers it started (cleanup_servers); make sure, by the recorded pids
    for pid in _spawned_pids(record_file):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _spawned_pids(record_file: Path) -> list[int]:
    return [r["pid"] for r in _records(record_file) if "pid" in r]


def _records(record_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record_file.read_text().splitlines() if line.strip()]


async def _build(hub: Hub, user: str, name: str, repo: str) -> dict[str, Any]:
    token = await asyncio.to_thread(hub.token_for, user)
    async with httpx.AsyncClient(
        base_url=hub.service_url, headers={"Authorization": f"token {token}"}, timeout=30
    ) as client:
        r = await client.post("api/builds", json={"repo": repo, "ref": "v1", "name": name})
        assert r.status_code in (200, 202), r.text
        if r.status_code == 202:
            from tests.service_support import Caller

            done = await wait_build(Caller(user, client), r.json()["id"])
            assert done["state"] == "built", done
        r = await client.get(f"api/images/{user}/{name}")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
async def images(hub, git_server):
    repo = git_server.url("hello")
    alice, bob = await asyncio.gather(
        _build(hub, "alice", "chooser-alice", repo), _build(hub, "bob", "chooser-bob", repo)
    )
    return {"alice": alice["image"], "bob": bob["image"]}


def _xsrf(client: httpx.AsyncClient) -> str:
    for cookie in client.cookies.jar:
        if cookie.name == "_xsrf" and cookie.path.rstrip("/") == "/hub":
            return cookie.value
    raise AssertionError("no _xsrf cookie for /hub/")


def _options(page: str) -> list[str]:
    select = re.search(r'<select[^>]*name="image"[^>]*>(.*?)</select>', page, re.S)
    assert select, page[-3000:]
    return [unescape(v) for v in re.findall(r'<option value="([^"]*)"', select.group(1))]


_tokens: dict[str, str] = {}


def _server(hub: Hub, user: str) -> dict[str, Any] | None:
    """The user's default server as the Hub's REST API shows it to that user (None: none)."""
    if user not in _tokens:
        _tokens[user] = hub.token_for(user)
    r = httpx.get(
        f"{hub.url}/hub/api/users/{user}",
        headers={"Authorization": f"token {_tokens[user]}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["servers"].get("")


async def test_form_lists_own_images_only(hub, images):
    client = await login(hub, "alice")
    try:
        r = await client.get(f"{hub.url}/hub/spawn")
        assert r.status_code == 200, r.text
        options = _options(r.text)
        assert images["alice"] in options
        assert images["bob"] not in options
    finally:
        await client.aclose()


async def test_form_without_images(hub, images):
    client = await login(hub, "carol")
    try:
        r = await client.get(f"{hub.url}/hub/spawn")
        assert r.status_code == 200, r.text
        assert "No repo2docker images yet" in r.text
        assert '<select class="form-control" name="image"' not in r.text
    finally:
        await client.aclose()


async def test_someone_elses_image_is_refused(hub, images):
    """A forged form and a direct API request both name bob's image: nothing starts."""
    before = len(_records(hub.record_file))
    client = await login(hub, "alice")
    try:
        r = await client.post(
            f"{hub.url}/hub/spawn", data={"image": images["bob"], "_xsrf": _xsrf(client)}
        )
        # the Hub shows the form again, with the chooser's reason
        assert "is not one of your repo2docker images" in unescape(r.text), r.text[-2000:]
        assert _options(r.text) and images["bob"] not in _options(r.text)
    finally:
        await client.aclose()
    assert _server(hub, "alice") is None

    # the REST API skips options_from_form: the pre_spawn_hook checks again
    token = await asyncio.to_thread(hub.token_for, "alice")
    async with httpx.AsyncClient(timeout=30) as api:
        r = await api.post(
            f"{hub.url}/hub/api/users/alice/server",
            json={"image": images["bob"]},
            headers={"Authorization": f"token {token}"},
        )
    assert r.status_code >= 400, r.text
    assert "is not one of your repo2docker images" in r.text, r.text
    assert _server(hub, "alice") is None
    # the spawner was never started with it
    assert len(_records(hub.record_file)) == before


async def test_chosen_image_reaches_the_spawner(hub, images):
    client = await login(hub, "alice")
    try:
        r = await client.post(
            f"{hub.url}/hub/spawn", data={"image": images["alice"], "_xsrf": _xsrf(client)}
        )
        # the Hub sends the browser on to the new server: the http.server's 404 for /user/alice/
        assert str(r.url).startswith(f"{hub.url}/user/alice/"), (r.url, r.text[-2000:])
        assert "Nothing matches the given URI" in r.text
    finally:
        await client.aclose()
    await async_wait_for(
        lambda: (_server(hub, "alice") or {}).get("ready"), 30, "alice's server", interval=0.2
    )
    record = _records(hub.record_file)[-1]
    assert record["user"] == "alice"
    assert record["image"] == images["alice"]
    assert record["user_options"] == {"image": images["alice"]}

    # the single-user server's own token (z2jh recipe scopes) sees exactly alice's images
    async with httpx.AsyncClient(timeout=30) as api:
        r = await api.get(
            f"{hub.service_url}api/images",
            headers={"Authorization": f"token {record['api_token']}"},
        )
        assert r.status_code == 200, r.text
        owners = {i["owner"] for i in r.json()["images"]}
        assert owners == {"alice"}, r.json()
        r = await api.get(
            f"{hub.service_url}api/images/bob/chooser-bob",
            headers={"Authorization": f"token {record['api_token']}"},
        )
        assert r.status_code in (403, 404), r.text

    t0 = time.monotonic()
    r = httpx.delete(
        f"{hub.url}/hub/api/users/alice/server",
        headers={"Authorization": f"token {_tokens['alice']}"},
        timeout=30,
    )
    assert r.status_code in (202, 204), r.text
    await async_wait_for(lambda: _server(hub, "alice") is None, 30, "alice's server to stop")
    assert time.monotonic() - t0 < 30


def test_profile_slugs_are_stable_and_distinct():
    """KubeSpawner matches the returned form by slug: it must name the same image every time."""
    from r2d_core.spawner import _profile_slug

    assert _profile_slug("alice", "img") == _profile_slug("alice", "img")
    # the readable parts collide, the digest keeps them apart
    assert _profile_slug("a-b", "c") != _profile_slug("a", "b-c")
    slug = _profile_slug("Ünïcode User", "My.Image_2")
    assert re.fullmatch(r"r2d-[a-z0-9-]+-[0-9a-f]{8}", slug), slug
