"""Build → launch: DockerSpawner 14 (PyPI) starts a real single-user server from an image this
service built, on the private dockerd, chosen in Chromium through ``ImageChooser``'s options form
and through the UI's "Launch" button; the server answers through the Hub's proxy.

Loopback only: the containers use the host's network (the engine has no bridge), each server
listens on 127.0.0.1 at a free port the ``pre_spawn_hook`` picks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.harness import SINGLEUSER_IMAGE, ensure_images
from tests.harness.hub import PASSWORD, Hub, HubConfig
from tests.service_support import running, service_config, wait_build
from tests.test_ui_browser import browser  # noqa: F401  (the module's Chromium)

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

pytest.importorskip("dockerspawner", reason="dockerspawner not installed")

SERVICE = "r2d"
CHOOSER = "r2d-chooser"
ACCESS = f"access:services!service={SERVICE}"
READ, BUILD = (f"custom:repo2docker:{a}" for a in ("read", "build"))
ROLES: list[dict[str, Any]] = [
    {"name": "r2d-own", "users": ["alice", "bob"], "scopes": [ACCESS, f"{BUILD}!user"]},
    {"name": "r2d-chooser", "services": [CHOOSER], "scopes": [ACCESS, READ]},
]
LAUNCH_URL = "/hub/spawn?opt-image={image}"

# The recipe of docs/howto/launch.md, with the loopback settings this machine needs.
SPAWNER_CONFIG = """
from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port
from r2d_core.spawner import AnnotationLimits, ImageChooser


class LoopbackDockerSpawner(DockerSpawner):
    # host network: the server listens on 127.0.0.1 at the port the pre_spawn_hook chose
    async def get_ip_and_port(self):
        return ("127.0.0.1", self.port)

    # a Launch link (/hub/spawn?opt-image=...) is checked like the form, so a refusal shows on
    # the form with its reason (JupyterHub's default passes no spawner to options_from_form)
    def options_from_query(self, query_data):
        return self.run_options_from_form(query_data)


chooser = ImageChooser(url={service_url!r}, token={token!r})
# the image's tljh.mem_limit / tljh.cpu_limit annotations, at most 1G and 1 CPU
limits = AnnotationLimits(chooser, max_mem_limit="1G", max_cpu_limit=1.0)


async def pre_spawn_hook(spawner):
    await limits.pre_spawn_hook(spawner)  # checks the image again, sets image and limits
    spawner.port = random_port()


c.JupyterHub.spawner_class = LoopbackDockerSpawner
c.Spawner.options_form = chooser.options_form
c.Spawner.options_from_form = chooser.options_from_form
c.Spawner.pre_spawn_hook = pre_spawn_hook
# the chooser checks the image (form and hook): DockerSpawner need not keep its own list
c.DockerSpawner.allowed_images = "*"
c.DockerSpawner.client_kwargs = {{"base_url": {docker_host!r}}}
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.ip = "127.0.0.1"
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.remove = True
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.JupyterHub.services.append({{"name": {chooser!r}, "api_token": {token!r}}})
"""

DOCKERFILE = (
    f"FROM {SINGLEUSER_IMAGE}\nRUN echo built-by-repo2docker-service > /home/jovyan/MARKER.txt\n"
)


@pytest.fixture(scope="module")
def launch_hub(docker_host, local_images, git_server):
    ensure_images(docker_host, ["singleuser"], progress=print)
    if "launchable" not in git_server.repos:
        git_server.add_repo("launchable", {"Dockerfile": DOCKERFILE})
    token = os.urandom(16).hex()
    config = HubConfig(
        service_name=SERVICE,
        service_env={"DOCKER_HOST": docker_host},
        service_config=service_config() + f"\nc.LaunchButton.url = {LAUNCH_URL!r}\n",
        roles=ROLES,
    )
    hub = Hub(config)
    config.extra_config = SPAWNER_CONFIG.format(
        service_url=f"http://127.0.0.1:{config.service_port}/services/{SERVICE}/",
        token=token,
        docker_host=docker_host,
        chooser=CHOOSER,
    )
    with running(hub):
        yield hub


async def _build(
    hub: Hub, user: str, repo: str, name: str = "app", annotations: dict[str, str] | None = None
) -> str:
    token = await asyncio.to_thread(hub.token_for, user)
    async with httpx.AsyncClient(
        base_url=hub.service_url, headers={"Authorization": f"token {token}"}, timeout=30
    ) as client:
        body: dict[str, Any] = {"repo": repo, "ref": "main", "name": name}
        if annotations:
            body["annotations"] = annotations
        r = await client.post("api/builds", json=body)
        assert r.status_code in (200, 202), r.text
        if r.status_code == 202:
            from tests.service_support import Caller

            done = await wait_build(Caller(user, client), r.json()["id"], timeout=180)
            assert done["state"] == "built", done
        r = await client.get(f"api/images/{user}/{name}")
        assert r.status_code == 200, r.text
        return r.json()["image"]


async def _login(browser: Any, hub: Hub, user: str) -> Any:  # noqa: F811
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    context.set_default_timeout(30_000)
    page = await context.new_page()
    await page.goto(f"{hub.url}/hub/login?next=/hub/home")
    await page.fill("#username_input", user)
    await page.fill("#password_input", PASSWORD)
    await page.click("#login_submit")
    await page.wait_for_url(re.compile(r".*/hub/home$"))
    return context


async def _server_status(page: Any, hub: Hub, user: str) -> dict[str, Any]:
    """``/user/<name>/api/status`` through the proxy, with the browser's own login.

    API URLs answer a logged-out browser 403 instead of sending it to the Hub, and the image has
    no JupyterLab page: the browser opens the file the image's Dockerfile wrote (a page, so it
    goes through the Hub's OAuth, no password asked), which also shows that the built image runs.
    """
    response = None
    for _ in range(20):
        await page.goto(f"{hub.url}/user/{user}/files/MARKER.txt")
        body = await page.locator("body").inner_text()
        response = await page.goto(f"{hub.url}/user/{user}/api/status")
        if response is not None and response.status == 200:
            assert "built-by-repo2docker-service" in body, body[:500]
            return json.loads(await page.locator("body").inner_text())
        await page.wait_for_timeout(500)
    raise AssertionError(f"{response and response.status}: {await page.content()}")


async def _as_user(hub: Hub, user: str, method: str, path: str) -> httpx.Response:
    """The Hub's REST API with ``user``'s own token (the admin service cannot see servers)."""
    token = await asyncio.to_thread(hub.token_for, user)
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(
            method, f"{hub.url}/hub/api/{path}", headers={"Authorization": f"token {token}"}
        )


async def _stop(hub: Hub, user: str) -> None:
    r = await _as_user(hub, user, "DELETE", f"users/{user}/server")
    assert r.status_code in (202, 204), r.text
    for _ in range(120):
        if not (await _as_user(hub, user, "GET", f"users/{user}")).json()["servers"]:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{user}'s server did not stop")


async def test_built_image_launches_with_dockerspawner(launch_hub, browser, git_server):  # noqa: F811
    hub = launch_hub
    image = await _build(hub, "alice", git_server.url("launchable"))
    context = await _login(browser, hub, "alice")
    try:
        page = await context.new_page()

        # 1. ImageChooser's options form on /hub/spawn: pick the image, start
        await page.goto(f"{hub.url}/hub/spawn")
        await page.select_option("select[name=image]", image)
        await page.locator("form#spawn_form [type=submit]").first.click()
        await page.wait_for_url(re.compile(r".*/user/alice/.*"), timeout=90_000)
        status = await _server_status(page, hub, "alice")
        assert "started" in status and "last_activity" in status, status
        model = (await _as_user(hub, "alice", "GET", "users/alice")).json()
        assert model["servers"][""]["user_options"]["image"] == image
        await _stop(hub, "alice")

        # 2. the UI's Launch button on the same image: the Hub spawns it from the query
        await page.goto(hub.service_url + "#/images")
        launch = page.locator("[data-testid=image-row][data-name=app] [data-testid=launch-image]")
        await launch.wait_for()
        href = await launch.get_attribute("href")
        assert href == "/hub/spawn?opt-image=" + quote(image, safe=""), href
        await launch.click()
        await page.wait_for_url(re.compile(r".*/user/alice/.*"), timeout=90_000)
        status = await _server_status(page, hub, "alice")
        assert "started" in status, status
        await _stop(hub, "alice")
    finally:
        await context.close()


async def test_launch_of_someone_elses_image_is_refused(launch_hub, browser, git_server):  # noqa: F811
    """bob follows a Launch link to alice's image: the chooser refuses, nothing starts."""
    hub = launch_hub
    image = await _build(hub, "alice", git_server.url("launchable"))
    context = await _login(browser, hub, "bob")
    try:
        page = await context.new_page()
        await page.goto(f"{hub.url}{LAUNCH_URL.replace('{image}', image)}")
        await page.wait_for_timeout(2000)
        text = await page.locator("body").inner_text()
        assert "not one of your repo2docker images" in text, text[:2000]
        model = (await _as_user(hub, "bob", "GET", "users/bob")).json()
        assert not model["servers"], model
    finally:
        await context.close()


async def test_annotated_limits_reach_the_containers_cgroup(launch_hub, git_server, docker_host):
    """The limits are a spawner concern: the service only stores the annotations; the example
    hook (r2d_core.spawner.AnnotationLimits) reads them and DockerSpawner applies them, held to
    the admin's maximum (cpu 4 asked, 1 given)."""
    hub = launch_hub
    annotations = {"tljh.mem_limit": "300M", "tljh.cpu_limit": "4", "display.description": "x"}
    image = await _build(
        hub, "bob", git_server.url("launchable"), name="limited", annotations=annotations
    )
    token = await asyncio.to_thread(hub.token_for, "bob")
    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(
            f"{hub.url}/hub/api/users/bob/server",
            headers={"Authorization": f"token {token}"},
            json={"image": image},
        )
    assert r.status_code in (201, 202), r.text
    try:
        for _ in range(180):
            model = (await _as_user(hub, "bob", "GET", "users/bob")).json()
            server = model["servers"].get("")
            if server and server.get("ready"):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"bob's server did not start: {model}")
        env = {**os.environ, "DOCKER_HOST": docker_host}
        out = await asyncio.to_thread(
            subprocess.run,
            ["docker", "inspect", "jupyter-bob"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)[0]
        assert info["Config"]["Image"] == image
        host = info["HostConfig"]
        assert host["Memory"] == 300 * 1024**2
        assert host["CpuQuota"] == host["CpuPeriod"] == 100_000  # clamped to 1 CPU
        # the kernel's own view of the limit, inside the running container
        cgroup = await asyncio.to_thread(
            subprocess.run,
            [
                "docker",
                "exec",
                "jupyter-bob",
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.max 2>/dev/null"
                " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cgroup.stdout.strip() == str(300 * 1024**2), (cgroup.stdout, cgroup.stderr)
    finally:
        await _stop(hub, "bob")
