"""jupyterhub-fancy-profiles 0.7 (PyPI) in Chromium, building through this service as ``binder``.

A Hub whose spawner is KubeSpawner with a ``profile_list`` using ``dynamic_image_building`` and
fancy-profiles' ``setup_ui(c)``. On ``/hub/spawn`` the user types a repository, clicks build,
watches the live log in fancy-profiles' terminal; the image name lands in the form, which
fancy-profiles then submits. There is no Kubernetes cluster here: the spawner is KubeSpawner with
only its cluster calls skipped, and its ``start`` records the image KubeSpawner resolved from the
submitted form (what a pod would run) instead of creating a pod.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.hub import PASSWORD
from tests.service_support import make_hub, running, service_config
from tests.test_ui_browser import browser  # noqa: F401  (the module's Chromium)

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.hub]

pytest.importorskip("kubespawner", reason="jupyterhub-kubespawner not installed")
pytest.importorskip("jupyterhub_fancy_profiles", reason="jupyterhub-fancy-profiles not installed")

FANCY_USER = "fiona"
PROFILE_LIST = [
    {
        "display_name": "Build your own image",
        "slug": "byoi",
        "default": True,
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {},
                "dynamic_image_building": {"enabled": True},
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Custom image",
                    "validation_regex": "^.+:.+$",
                    "validation_message": "Must be an image name:tag",
                    "kubespawner_override": {"image": "{value}"},
                },
            }
        },
    }
]

# The Hub side: KubeSpawner without its cluster calls, and fancy-profiles' form.
HUB_CONFIG = """
import json as _json
import kubespawner.spawner as _ks
from kubespawner import KubeSpawner
from jupyterhub_fancy_profiles import setup_ui

# no cluster on this machine: skip only the Kubernetes client set-up in KubeSpawner.__init__
_ks.load_config = lambda **kwargs: None
_ks.shared_client = lambda *args, **kwargs: None


class ClusterlessKubeSpawner(KubeSpawner):
    async def start(self):
        await self.load_user_options()  # profile_list + the submitted form -> self.image
        with open({result!r}, "w") as f:
            _json.dump({{"image": self.image, "user_options": self.user_options}}, f)
        raise RuntimeError("no Kubernetes cluster in this test; resolved image " + self.image)

    async def poll(self):
        return 0

    async def stop(self, now=False):
        return None


c.JupyterHub.spawner_class = ClusterlessKubeSpawner
c.KubeSpawner.events_enabled = False
c.KubeSpawner.profile_list = {profile_list!r}
setup_ui(c)
"""


def generated_roles(name: str) -> list[dict[str, Any]]:
    """The roles of ``r2d-service generate-hub-config --name NAME``: every user gets the
    built-in 'user' role as the snippet redefines it (fancy-profiles needs nothing else)."""
    from traitlets.config import Config

    from r2d_tornado.hubconfig import hub_config_snippet

    c = Config()
    exec(hub_config_snippet(name=name), {"c": c})  # the admin's jupyterhub_config.py does so
    return [r for r in c.JupyterHub.load_roles if r["name"] == "user"]


@pytest.fixture(scope="module")
def fancy_hub(docker_host, local_images, git_server, tmp_path_factory):
    result = tmp_path_factory.mktemp("fancy") / "spawned.json"
    port = git_server.url("hello").rsplit(":", 1)[1].split("/")[0]
    config = service_config() + (
        "\nc.RepoProviders.url_templates = "
        + repr({"gh": f"git://127.0.0.1:{port}/{{repo}}"})
        + "\n"
    )
    hub = make_hub(
        docker_host,
        service_name="binder",
        service_config=config,
        roles=generated_roles("binder"),
        extra_config=HUB_CONFIG.format(result=str(result), profile_list=PROFILE_LIST),
    )
    with running(hub) as hub:
        hub.spawn_result = result  # type: ignore[attr-defined]
        yield hub


async def test_fancy_profiles_builds_through_the_service(fancy_hub, browser, git_server):  # noqa: F811
    hub = fancy_hub
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(20_000)
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        terminal: list[str] = []
        await page.expose_function("r2dTerminal", lambda text: terminal.append(text))
        await page.add_init_script(TERMINAL_WATCH)
        await page.goto(f"{hub.url}/hub/login?next=/hub/spawn")
        # a user of its own: nobody else in the session built this repository for them, so the
        # build really runs (a built image would answer at once, without a log to watch)
        await page.fill("#username_input", FANCY_USER)
        await page.fill("#password_input", PASSWORD)
        await page.click("#login_submit")
        await page.wait_for_url(re.compile(r".*/hub/spawn.*"))
        await page.reload()  # with the terminal watcher
        await _build_in_form(page, "r2d/hello", "main")
        # the log streams into fancy-profiles' terminal (xterm) while the build runs. The watcher
        # sees the rows xterm renders, its viewport only: the build's lines come 20 ms apart, so
        # some of them are seen, but the last one can scroll away with the burst of lines that
        # ends a build before a loaded machine renders a frame (it did, once, in a full run)
        deadline = time.monotonic() + 120
        streamed = re.compile(r"\br2d-line \d+$")
        while not any(streamed.search(line) for line in terminal) and time.monotonic() < deadline:
            assert not any("Build failed" in line or "may not" in line for line in terminal), (
                terminal
            )
            await page.wait_for_timeout(200)
        assert any(streamed.search(line) for line in terminal), terminal
        sha = git_server.repos["hello"].head
        # fancy-profiles submits the form once the image is built: the spawner resolves it
        deadline = time.monotonic() + 60
        while not hub.spawn_result.exists() and time.monotonic() < deadline:
            await page.wait_for_timeout(250)
        assert hub.spawn_result.exists(), await page.content()
        spawned: dict[str, Any] = json.loads(Path(hub.spawn_result).read_text())
        assert spawned["image"] == f"r2d-{FANCY_USER}-hello:{sha}", spawned
        assert spawned["user_options"]["profile"] == "byoi"
        # the image name landed in fancy-profiles' form field, which the Hub submitted
        assert spawned["image"] in spawned["user_options"].values(), spawned
        assert any("Done! Image built" in line for line in terminal), terminal
        assert not errors, errors
    finally:
        await context.close()


async def _build_in_form(page: Any, repo: str, ref: str) -> None:
    """Choose 'Build your own image', type the repository and ref, press build."""
    await page.locator(".select__control").first.click()
    await page.locator(".select__option", has_text="Build your own image").click()
    await page.fill("#profile-option-byoi--image--unlisted-choice--repo", repo)
    await page.fill("#profile-option-byoi--image--unlisted-choice--ref", ref)
    await page.locator("#submit-slot button").click()


# Every line fancy-profiles' xterm shows, reported as it appears (the page navigates away once
# the form is submitted, so the test collects them while they stream)
TERMINAL_WATCH = """
window.addEventListener("DOMContentLoaded", () => {
  const seen = new Set();
  new MutationObserver(() => {
    for (const row of document.querySelectorAll(".xterm-rows > div")) {
      const text = row.textContent.trim();
      if (text && !seen.has(text)) { seen.add(text); window.r2dTerminal(text); }
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
});
"""


KUBESPAWNER_LAUNCH_URL = (
    "/hub/spawn?opt-profile=byoi&opt-profile-option-byoi--image--unlisted-choice={image}"
)


async def test_launch_url_recipe_for_kubespawner(fancy_hub):
    """The docs' ``LaunchButton.url`` for KubeSpawner: the Hub spawns from the query, and
    KubeSpawner resolves the image from the profile's unlisted choice."""
    from urllib.parse import quote

    from tests.harness.hub import login

    hub = fancy_hub
    image = "r2d-alice-hello:" + "a" * 40
    result = Path(hub.spawn_result)
    result.unlink(missing_ok=True)
    client = await login(hub, "bob")
    try:
        await client.get(hub.url + KUBESPAWNER_LAUNCH_URL.replace("{image}", quote(image, safe="")))
        deadline = time.monotonic() + 30
        while not result.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        assert result.exists(), "the spawner was not started from the launch URL"
        assert json.loads(result.read_text())["image"] == image
    finally:
        await client.aclose()
