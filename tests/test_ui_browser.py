"""The browser UI end to end: Debian's Chromium (driven by Playwright) against a real JupyterHub,
configurable-http-proxy, dockerd and git daemon, through both adapters (the standalone service at
``/services/r2d/`` and the TLJH plugin at ``/hub/repo2docker/``).

Users log in through the Hub's own login form, as people do. One browser serves the module; each
user gets a browser context of their own (cookies) per Hub. Screenshots of the key states are
saved to ``docs/_static/screenshots/`` (standalone adapter only) for the tutorials.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest

from tests.harness import FAIL_EXIT_CODE, FAIL_LINES, HELLO_LINES
from tests.harness.hub import PASSWORD, Hub
from tests.service_support import adapter_hub, running, wait_build

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.hub]

__all__: list[str] = []

CHROMIUM = "/usr/bin/chromium"
# No network beyond loopback and no background traffic: the browser talks to the Hub only.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "_static" / "screenshots"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
#: how long a UI state may take to appear; builds of the fixture repos take a few seconds
BUILD_TIMEOUT_MS = 60_000


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the module (never ``playwright install``: Debian's chromium)."""
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} not found (scripts/install-system.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need Chromium on CI: {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture(scope="module", params=["service", "tljh"])
def hub(request: pytest.FixtureRequest, docker_host: str, local_images: Any, git_server: Any):
    """A Hub per adapter: the standalone service (managed by the Hub) or the TLJH plugin."""
    with running(adapter_hub(docker_host, request.param)) as hub:
        yield hub


class UI:
    """Logged-in browser contexts of one Hub, and what the tests share about it."""

    def __init__(self, hub: Hub, browser: Any) -> None:
        self.hub = hub
        self.browser = browser
        self.mode = "tljh" if hub.config.mode == "tljh" else "service"
        self._contexts: dict[str, Any] = {}
        self._tokens: dict[str, str] = {}
        #: uncaught exceptions and console errors of every page opened: a working UI has none
        self.page_errors: list[str] = []
        #: the build alice started through the form (the reload test reuses it when present)
        self.alice_build: dict[str, str] = {}
        #: state each build a test finished through the UI ended in, by build id
        self.finished: dict[str, str] = {}
        #: builds started with the Hub: {"bob": id of bob/bobimg, "alice": id of alice/notebooks}
        self.seed_builds: dict[str, str] = {}

    def url(self, fragment: str = "") -> str:
        return self.hub.service_url + fragment

    async def context(self, user: str) -> Any:
        """A browser context logged in as ``user`` through the Hub's login form."""
        if user not in self._contexts:
            context = await self.browser.new_context(viewport=VIEWPORT, locale="en-US")
            context.set_default_timeout(15_000)
            page = await context.new_page()
            service_path = urlsplit(self.hub.service_url).path
            await page.goto(f"{self.hub.url}/hub/login?next={quote(service_path)}")
            await page.fill("#username_input", user)
            await page.fill("#password_input", PASSWORD)
            await page.click("#login_submit")
            # the Hub sends the browser on to the service (an OAuth round trip when standalone)
            await page.wait_for_url(re.compile(re.escape(self.hub.service_url) + r"(#.*)?$"))
            await page.close()
            self._contexts[user] = context
        return self._contexts[user]

    async def page(self, user: str, fragment: str = "", init_script: str | None = None) -> Any:
        """A new tab of ``user``'s context showing ``fragment`` once the app has booted
        (``init_script`` runs before the page's own scripts on every load)."""
        page = await (await self.context(user)).new_page()
        if init_script:
            await page.add_init_script(init_script)
        page.on("pageerror", lambda error: self.page_errors.append(f"{user}: {error}"))
        page.on(
            "console",
            lambda m: (
                self.page_errors.append(f"{user}: console: {m.text}") if m.type == "error" else None
            ),
        )
        await page.goto(self.url(fragment))
        await page.locator(".r2d-view").wait_for()
        return page

    async def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = await asyncio.to_thread(self.hub.token_for, user)
        return self._tokens[user]

    async def api(self, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The API as ``user`` with a Hub token: what the server holds, independent of the UI."""
        headers = {"Authorization": f"token {await self.token(user)}"}
        async with httpx.AsyncClient(base_url=self.hub.service_url, timeout=30) as client:
            return await client.request(method, path, headers=headers, **kwargs)

    async def wait_build(self, user: str, build_id: str) -> dict[str, Any]:
        """Follow a build's event stream (as ``user``, with a token) to its end."""
        headers = {"Authorization": f"token {await self.token(user)}"}
        async with httpx.AsyncClient(base_url=self.hub.service_url, timeout=120) as client:
            caller = SimpleNamespace(name=user, client=client, headers=headers)
            return await wait_build(caller, build_id)  # type: ignore[arg-type]

    async def screenshot(self, page: Any, name: str) -> None:
        """Save a screenshot (standalone adapter only: one stable set of files): into the docs
        with ``R2D_UPDATE_SCREENSHOTS=1``, else into ``tests/artifacts/`` (not committed), so a
        test run leaves the checkout clean."""
        if self.mode != "service":
            return
        target = SCREENSHOTS if os.environ.get("R2D_UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
        target.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(target / name), animations="disabled")

    async def close(self) -> None:
        for context in self._contexts.values():
            await context.close()


@pytest.fixture(scope="module")
async def ui(browser: Any, hub: Hub, git_server: Any) -> AsyncIterator[UI]:
    # (browser first: without Chromium the module skips before any Hub starts)
    ui = UI(hub, browser)
    # Images that exist before the tests look: bob's for the read-only callers' pages, a second
    # one of alice's that deleting another must leave alone. They build while the first tests run
    # (forced: the engine outlives each Hub, and an existing image would be skipped).
    for user, name in (("bob", "bobimg"), ("alice", "notebooks")):
        r = await ui.api(
            user,
            "POST",
            "api/builds",
            json={"repo": git_server.url("hello"), "ref": "v1", "name": name, "force": True},
        )
        assert r.status_code == 202, r.text
        ui.seed_builds[user] = r.json()["id"]
    try:
        yield ui
    finally:
        await ui.close()


@pytest.fixture(autouse=True)
def no_page_errors(ui: UI) -> Iterator[None]:
    """A working UI throws no uncaught error in any page a test opened."""
    ui.page_errors.clear()
    yield
    assert not ui.page_errors, ui.page_errors


@pytest.fixture
def expect() -> Iterator[Any]:
    from playwright.async_api import expect

    expect.set_options(timeout=15_000)
    yield expect


#: the version rows of the images whose versions are shown (every image has its rows, hidden)
OPEN_VERSIONS = '[data-testid="image-versions-row"]:not([hidden]) [data-testid="version-row"]'


def unique(prefix: str) -> str:
    # image names are per owner and the engine outlives each Hub: no two runs may collide
    # (letters and digits only, so that the image reference shows the name unescaped)
    return f"{prefix}{secrets.token_hex(2)}"


def new_build_fragment(**query: str) -> str:
    return "#/new?" + urlencode(query)


async def submit_build(ui: UI, page: Any) -> str:
    """Press Build on a filled form; returns the new build's id from the log view's URL."""
    await page.get_by_test_id("build-submit").click()
    await page.wait_for_url(re.compile(r"#/builds/[0-9a-f]+"))
    build_id = re.search(r"#/builds/([0-9a-f]+)", page.url)
    assert build_id, page.url
    await page.get_by_test_id("log-terminal").locator(".xterm-rows").wait_for()
    return build_id.group(1)


async def terminal_text(page: Any) -> str:
    """The rows xterm.js has rendered into the DOM (the visible part of the terminal)."""
    return await page.locator('[data-testid="log-terminal"] .xterm-rows').inner_text()


async def scroll_terminal_to(page: Any, text: str) -> bool:
    """Scroll the terminal up with the mouse wheel, as a reader would, until ``text`` is shown."""
    box = await page.get_by_test_id("log-terminal").bounding_box()
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(40):
        if text in await terminal_text(page):
            return True
        await page.mouse.wheel(0, -60)
        await page.wait_for_timeout(30)
    return text in await terminal_text(page)


# ---- 1. login -----------------------------------------------------------------------------------
async def test_login_through_the_hub_shows_images(ui, expect):
    page = await ui.page("alice")
    # the app routes a bare URL to the images page of a caller who may read
    await expect(page).to_have_url(re.compile(r"#/images$"))
    await expect(page.locator('.r2d-view[data-view="images"]')).to_be_visible()
    await expect(page.get_by_role("heading", name="Images", exact=True)).to_be_visible()
    await expect(page.get_by_test_id("nav-user")).to_have_text("alice")
    for link in ("nav-images", "nav-builds", "nav-new"):
        await expect(page.get_by_test_id(link)).to_be_visible()
    await page.close()


# ---- 2. the build form and the live log ---------------------------------------------------------
async def test_form_checks_input_then_builds_and_shows_the_log(ui, expect, git_server):
    page = await ui.page("alice", "#/new")
    posts: list[str] = []
    page.on(
        "request",
        lambda r: posts.append(r.url) if r.method == "POST" and "/api/builds" in r.url else None,
    )
    await expect(page.get_by_test_id("build-form")).to_be_visible()
    await page.get_by_test_id("field-repo").fill(git_server.url("hello"))
    await page.get_by_test_id("field-ref").fill("-main")
    await page.get_by_test_id("field-name").fill("my image")
    await page.get_by_test_id("build-submit").click()
    await expect(page.get_by_test_id("error-ref")).to_have_text("The ref must not start with '-'.")
    await expect(page.get_by_test_id("error-name")).to_contain_text("letters, digits")
    await expect(page.get_by_test_id("field-ref")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_test_id("error-repo")).to_be_hidden()
    # the first bad field has the focus, and nothing went to the server
    await expect(page.get_by_test_id("field-ref")).to_be_focused()
    await ui.screenshot(page, "build-form-errors.png")
    assert posts == []

    # fixing a field clears its message as one types
    await page.get_by_test_id("field-ref").fill("main")
    await expect(page.get_by_test_id("error-ref")).to_be_hidden()
    name = unique("hello")
    await page.get_by_test_id("field-name").fill(name)
    await expect(page.get_by_test_id("error-name")).to_be_hidden()
    build_id = await submit_build(ui, page)
    assert len(posts) == 1
    ui.alice_build = {"id": build_id, "name": name}

    # the lines arrive in the terminal while the build runs, then the phase bar completes
    await expect(page.get_by_test_id("phase-bar")).to_have_attribute(
        "data-state", "built", timeout=BUILD_TIMEOUT_MS
    )
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "complete")
    for phase in ("queued", "fetching", "building", "done"):
        await expect(page.locator(f'[data-phase="{phase}"]')).to_have_attribute(
            "data-status", "complete"
        )
    await expect(page.locator('[data-phase="done"]')).to_contain_text("Built")
    log_text = await page.get_by_test_id("log-text").text_content()
    expected = [f"r2d-line {i}" for i in range(1, HELLO_LINES + 1)]
    assert re.findall(r"r2d-line \d+", log_text) == expected
    assert await scroll_terminal_to(page, f"r2d-line {HELLO_LINES}"), await terminal_text(page)
    reference = page.get_by_test_id("build-success").get_by_test_id("image-reference")
    await expect(reference).to_have_value(re.compile(rf"{re.escape(name)}:[0-9a-f]+$"))
    # the same reference the API reports for the build
    build = (await ui.api("alice", "GET", f"api/builds/{build_id}")).json()
    assert build["state"] == "built" and await reference.input_value() == build["image"]
    ui.finished[build_id] = "built"
    await ui.screenshot(page, "build-done.png")
    await page.close()


# ---- 3. images table and delete ---------------------------------------------------------------
async def test_image_is_listed_and_deleted_with_the_confirm_modal(ui, expect, git_server):
    if not ui.alice_build:  # run on its own: build the image through the API first
        name = unique("hello")
        r = await ui.api(
            "alice",
            "POST",
            "api/builds",
            json={"repo": git_server.url("hello"), "ref": "main", "name": name},
        )
        assert r.status_code == 202, r.text
        ui.alice_build = {"id": r.json()["id"], "name": name}
        await ui.wait_build("alice", r.json()["id"])
    await ui.wait_build("alice", ui.seed_builds["alice"])
    name = ui.alice_build["name"]
    page = await ui.page("alice", "#/builds")
    await page.get_by_test_id("nav-images").click()
    row = page.locator(f'[data-testid="image-row"][data-owner="alice"][data-name="{name}"]')
    other = page.locator('[data-testid="image-row"][data-owner="alice"][data-name="notebooks"]')
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("hello@main")  # the repository column
    await expect(other).to_contain_text("hello@v1")
    # a click on the row shows its versions (tag, ref, commit, ...)
    await other.locator("td").nth(2).click()
    versions = page.locator(OPEN_VERSIONS)
    await expect(versions).to_have_count(1)
    await expect(versions).to_contain_text("v1")
    await ui.screenshot(page, "images.png")

    await row.get_by_test_id("delete-image").click()
    dialog = page.get_by_test_id("confirm-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(f"alice/{name}")
    # "Keep it" changes nothing
    await dialog.get_by_test_id("cancel-delete").click()
    await expect(dialog).to_have_count(0)
    await expect(row).to_be_visible()
    await row.get_by_test_id("delete-image").click()
    await page.get_by_test_id("confirm-dialog").get_by_test_id("confirm-delete").click()
    await expect(page.get_by_test_id("delete-result")).to_contain_text(name)
    await expect(row).to_have_count(0)
    await expect(other).to_be_visible()
    r = await ui.api("alice", "GET", "api/images")
    names = [image["name"] for image in r.json()["images"]]
    assert name not in names and "notebooks" in names
    assert (await ui.api("alice", "GET", f"api/images/alice/{name}")).status_code == 404
    await page.close()


# ---- 4. cancel ------------------------------------------------------------------------------------
async def test_cancel_a_running_build(ui, expect, git_server):
    name = unique("slow")
    page = await ui.page("alice", new_build_fragment(repo=git_server.url("slow"), name=name))
    await expect(page.get_by_test_id("field-name")).to_have_value(name)
    build_id = await submit_build(ui, page)
    # live lines, while the build runs
    await expect(page.locator('[data-testid="log-terminal"] .xterm-rows')).to_contain_text(
        "r2d-slow 3", timeout=BUILD_TIMEOUT_MS
    )
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "live")
    await expect(page.locator('[data-phase="building"]')).to_have_attribute("data-status", "active")
    await ui.screenshot(page, "build-live.png")
    await page.get_by_test_id("cancel-build").click()
    await expect(page.get_by_test_id("phase-bar")).to_have_attribute("data-state", "cancelled")
    await expect(page.get_by_test_id("build-cancelled")).to_be_visible()
    await expect(page.get_by_test_id("cancel-build")).to_have_count(0)
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "complete")
    assert (await ui.api("alice", "GET", f"api/builds/{build_id}")).json()["state"] == "cancelled"
    ui.finished[build_id] = "cancelled"
    await page.close()


# ---- 5. a failing build -------------------------------------------------------------------------
async def test_failed_build_shows_the_step_and_last_lines(ui, expect, git_server):
    page = await ui.page(
        "alice", new_build_fragment(repo=git_server.url("fails"), name=unique("fails"))
    )
    build_id = await submit_build(ui, page)
    failed = page.get_by_test_id("build-failed")
    await expect(failed).to_be_visible(timeout=BUILD_TIMEOUT_MS)
    await expect(page.get_by_test_id("phase-bar")).to_have_attribute("data-state", "failed")
    await expect(page.locator('[data-phase="building"]')).to_have_attribute("data-status", "failed")
    # the step is the Dockerfile's RUN (FAIL_EXIT_CODE is its exit status), its output below
    await expect(failed.get_by_test_id("failed-step")).to_contain_text(
        re.compile(rf"RUN .*exit {FAIL_EXIT_CODE}")
    )
    last = await failed.get_by_test_id("last-lines").inner_text()
    assert f"r2d-fail {FAIL_LINES}" in last, last
    # a person reads what failed, never a Python traceback
    assert "Traceback" not in await page.locator("#r2d-app").inner_text()
    ui.finished[build_id] = "failed"
    await ui.screenshot(page, "build-failed.png")
    await page.close()


#: 40,000 lines through BuildKit at a pace its step-log speed cap lets through (10,000 a second):
#: far over max_log_bytes (4 MiB), so the log keeps head and tail with the marker between
UI_FLOOD_RUN = (
    "for b in 0 1 2 3; do seq $((b*10000+1)) $((b*10000+10000)) | sed 's/^/r2d-flood /'; "
    "sleep 1; done; echo r2d-flood-end"
)


async def test_long_log_shows_the_truncation_marker(ui, expect, git_server):
    if "flood-ui" not in git_server.repos:
        from tests.harness.gitserver import _dockerfile

        git_server.add_repo("flood-ui", {"Dockerfile": _dockerfile(UI_FLOOD_RUN)})
    r = await ui.api(
        "alice",
        "POST",
        "api/builds",
        json={"repo": git_server.url("flood-ui"), "name": unique("flood"), "force": True},
    )
    assert r.status_code == 202, r.text
    build_id = r.json()["id"]
    done = await ui.wait_build("alice", build_id)
    assert done["state"] == "built", done
    text = (await ui.api("alice", "GET", f"api/builds/{build_id}/logs?format=text&follow=0")).text
    markers = [line for line in text.splitlines() if line.startswith("… ") and "omitted" in line]
    assert len(markers) == 1, f"{len(markers)} truncation markers in {len(text):,} bytes of log"
    marker = markers[0]
    omitted = done["log"]["omitted_lines"]
    assert omitted > 1000 and marker.startswith(f"… {omitted:,} lines ("), done["log"]

    page = await ui.page("alice", f"#/builds/{build_id}")
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "complete")
    # a notice above the log, the count beside it, the marker line in the log's text
    notice = page.get_by_test_id("log-truncated")
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text(f"{omitted:,} lines")
    await expect(page.get_by_test_id("log-count")).to_contain_text(f"({omitted:,} omitted)")
    terminal = page.get_by_test_id("log-terminal")
    await expect(terminal).to_have_attribute("data-omitted", str(omitted))
    log_text = (await page.get_by_test_id("log-text").text_content()).splitlines()
    assert log_text.count(marker) == 1
    # ... and in the terminal itself, as a line of its own that does not look like output: the
    # notice's button scrolls xterm.js to it (it is thousands of lines above the end)
    row = page.locator('[data-testid="log-terminal"] .xterm-rows > div', has_text="omitted (lines")
    await expect(row).to_have_count(0)  # the view starts at the end of the log
    await page.get_by_test_id("log-jump-omitted").click()
    await expect(row).to_have_count(1)
    assert marker.strip("… ").split(" (lines")[0] in await row.inner_text()
    styled = await row.evaluate(
        "el => [...el.querySelectorAll('span')].some(s => /xterm-bold|xterm-fg-|inverse/"
        ".test(s.className) || s.style.color)"
    )
    assert styled, await row.inner_html()
    await ui.screenshot(page, "build-log-truncated.png")
    await page.close()


# ---- 6. permissions ------------------------------------------------------------------------------
async def test_no_permission_page_names_the_scope(ui, expect):
    page = await ui.page("gina")
    denied = page.get_by_test_id("no-permission")
    await expect(denied).to_be_visible()
    await expect(denied).to_have_attribute("data-scope", "custom:repo2docker:read")
    await expect(denied).to_contain_text("custom:repo2docker:read")
    for link in ("nav-images", "nav-builds", "nav-new"):
        await expect(page.get_by_test_id(link)).to_be_hidden()
    await ui.screenshot(page, "no-permission.png")
    await page.close()


async def test_read_only_user_sees_images_but_cannot_change_them(ui, expect):
    # bob's image (started with the Hub) must exist for carol to see it
    await ui.wait_build("bob", ui.seed_builds["bob"])
    page = await ui.page("carol", "#/images")
    row = page.locator('[data-testid="image-row"][data-owner="bob"][data-name="bobimg"]')
    await expect(row).to_be_visible()
    await expect(page.get_by_test_id("delete-image")).to_have_count(0)
    await expect(page.get_by_test_id("rebuild-image")).to_have_count(0)
    await expect(page.get_by_test_id("new-build")).to_have_count(0)
    await expect(page.get_by_test_id("nav-new")).to_be_hidden()
    await expect(page.get_by_test_id("nav-builds")).to_be_visible()
    # the versions show, without delete buttons
    await row.get_by_test_id("toggle-versions").click()
    await expect(page.locator(OPEN_VERSIONS).first).to_be_visible()
    await expect(page.get_by_test_id("delete-version")).to_have_count(0)
    # typing the form's address leads to the page that names the build scope, not a form
    await page.goto(ui.url("#/new"))
    denied = page.get_by_test_id("no-permission")
    await expect(denied).to_have_attribute("data-scope", "custom:repo2docker:build")
    await expect(page.get_by_test_id("build-submit")).to_have_count(0)
    await page.close()


async def test_group_builder_types_a_member_as_owner(ui, expect):
    """erin may build for the members of group team: the owner is a user name, never 'team'."""
    page = await ui.page("erin", "#/new")
    owner = page.get_by_test_id("field-owner")
    await expect(owner).to_have_value("")
    assert await owner.evaluate("e => e.tagName") == "INPUT"
    options = await page.locator("datalist option").evaluate_all("os => os.map(o => o.value)")
    assert "team" not in options and "erin" not in options
    await expect(
        page.locator(".form-text", has=page.locator("code", has_text="team"))
    ).to_contain_text("covers its members")
    await page.get_by_test_id("build-submit").click()
    await expect(page.get_by_test_id("error-owner")).to_contain_text("Hub user")
    await page.close()


# ---- 7. reloading a finished build --------------------------------------------------------------
_TRACK_EVENT_SOURCES = """
(() => {
  const Original = window.EventSource;
  window.__eventSources = [];
  window.EventSource = class extends Original {
    constructor(...args) { super(...args); window.__eventSources.push(this); }
  };
})();
"""


async def test_reload_of_a_finished_build_replays_the_log_once(ui, expect, git_server):
    if not ui.alice_build:  # run on its own: a finished build through the API
        r = await ui.api(
            "alice",
            "POST",
            "api/builds",
            json={"repo": git_server.url("hello"), "ref": "v2", "name": unique("hello")},
        )
        assert r.status_code == 202, r.text
        ui.alice_build = {"id": r.json()["id"], "name": ""}
    build_id = ui.alice_build["id"]
    await ui.wait_build("alice", build_id)
    full = (await ui.api("alice", "GET", f"api/builds/{build_id}/logs?format=text")).text
    page = await ui.page("alice", f"#/builds/{build_id}", init_script=_TRACK_EVENT_SOURCES)
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "complete")
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/logs" in urlsplit(r.url).path else None)
    await page.reload()  # as a person presses F5 on the log page
    await page.locator(".r2d-view").wait_for()
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "complete")
    await expect(page.get_by_test_id("log-terminal")).to_have_attribute(
        "data-lines", str(len(full.splitlines()))
    )
    assert (await page.get_by_test_id("log-text").text_content()).splitlines() == [
        line.rstrip("\r") for line in full.splitlines()
    ]
    await expect(page.get_by_test_id("phase-bar")).to_have_attribute("data-state", "built")
    # the terminal ends with the build's last line and holds the build's own output
    last = full.rstrip("\n").splitlines()[-1].strip()
    await expect(page.locator('[data-testid="log-terminal"] .xterm-rows')).to_contain_text(
        last[:40]
    )
    assert await scroll_terminal_to(page, f"r2d-line {HELLO_LINES}")
    # after `done` the stream is closed by the page (a closed EventSource never reconnects)
    states = await page.evaluate("window.__eventSources.map(s => s.readyState)")
    assert states == [2], states
    t0 = time.monotonic()
    await page.wait_for_timeout(1500)
    assert len(streams) == 1, streams
    assert time.monotonic() - t0 >= 1.5

    # the builds list shows every build the tests finished, in the state the log view showed
    await page.get_by_test_id("nav-builds").click()
    for finished_id, state in {**ui.finished, build_id: "built"}.items():
        await expect(
            page.locator(f'[data-testid="build-row"][data-build-id="{finished_id}"]')
        ).to_have_attribute("data-state", state)
    await ui.screenshot(page, "builds.png")
    await page.close()


async def test_build_page_shows_a_missing_record_until_it_is_stored(ui, expect, git_server):
    """``record_error`` (the registry was down when the build's record was to be stored) shows
    on the build page and goes once the API no longer reports it (the page looks again every
    10 s). The suite's hubs have no registry, so the field is set in the API's answers (the
    build itself, its log and the page are real)."""
    r = await ui.api(
        "alice",
        "POST",
        "api/builds",
        json={"repo": git_server.url("hello"), "ref": "v2", "name": unique("rec")},
    )
    assert r.status_code == 202, r.text
    build_id = r.json()["id"]
    await ui.wait_build("alice", build_id)
    error = (
        "the build's record and log are not in the registry yet (cannot reach the registry at "
        "http://127.0.0.1:1); the service retries until it succeeds"
    )
    answer = {"record_error": error}

    async def with_record_error(route: Any) -> None:
        response = await route.fetch()
        body = await response.text()
        if answer["record_error"]:
            value = json.dumps(answer["record_error"])
            body = re.sub(r'"record_error":\s*null', f'"record_error": {value}', body)
        await route.fulfill(response=response, body=body)

    page = await ui.page("alice", f"#/builds/{build_id}")
    await page.route(re.compile(rf"/api/builds/{build_id}(/logs)?([?].*)?$"), with_record_error)
    await page.reload()
    await page.locator(".r2d-view").wait_for()
    await expect(page.get_by_test_id("log-status")).to_have_attribute("data-status", "complete")
    notice = page.get_by_test_id("record-error")
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("not in the registry yet")
    await expect(page.get_by_test_id("record-error-text")).to_have_text(error)
    await expect(page.get_by_test_id("build-success")).to_be_visible()  # the build is built
    answer["record_error"] = None  # the retry stored it
    await expect(notice).to_have_count(0, timeout=25_000)
    await page.close()


async def alice_builds_for_pages(ui: UI, git_server: Any, at_least: int) -> list[str]:
    """Ids of alice's builds, newest first, as the API's pages give them (at least
    ``at_least``: quick builds of the fixture repository are added when there are fewer)."""

    async def listed() -> list[str]:
        r = await ui.api("alice", "GET", "api/builds", params={"owner": "alice", "limit": 500})
        assert r.status_code == 200 and r.json()["next"] is None, r.text
        return [b["id"] for b in r.json()["builds"]]

    while len(await listed()) < at_least:
        await alice_quick_build(ui, git_server, "page")
    return await listed()


async def alice_quick_build(ui: UI, git_server: Any, prefix: str) -> str:
    """The id of a new build of the fixture ``quick`` repository for alice, once it is done."""
    r = await ui.api(
        "alice",
        "POST",
        "api/builds",
        json={"repo": git_server.url("quick"), "name": unique(prefix), "force": True},
    )
    assert r.status_code == 202, r.text
    await ui.wait_build("alice", r.json()["id"])
    return r.json()["id"]


async def test_older_builds_appends_the_next_page_until_there_is_none(ui, expect, git_server):
    """``#/builds?limit=2``: pages of two; "Older builds" sends the ``next`` cursor of the last
    answer as ``before``, appends that page (keyboard focus on its first build), and is gone
    once the API says there is no next page."""
    expected = await alice_builds_for_pages(ui, git_server, 5)
    pages: list[dict[str, Any]] = []

    async def record(response: Any) -> None:
        url = urlsplit(response.url)
        if url.path.endswith("/api/builds") and response.request.method == "GET":
            before = parse_qs(url.query).get("before", [None])[0]
            pages.append({"before": before, "next": (await response.json())["next"]})

    page = await (await ui.context("alice")).new_page()
    page.on("pageerror", lambda error: ui.page_errors.append(f"alice: {error}"))
    page.on("response", record)
    await page.goto(ui.url("#/builds?owner=alice&limit=2"))
    await page.locator(".r2d-view").wait_for()
    rows = page.get_by_test_id("build-row")
    older = page.get_by_test_id("older-builds")
    await expect(rows).to_have_count(2)
    shown = 2
    while shown < len(expected):
        await expect(older).to_be_visible()
        await expect(older).to_have_text("Older builds")
        await older.click()
        first_new = expected[shown]
        shown = min(shown + 2, len(expected))
        await expect(rows).to_have_count(shown)
        await expect(page.locator(f'[data-key="open-{first_new}"]')).to_be_focused()
    await expect(older).to_have_count(0)
    ids = await rows.evaluate_all("rs => rs.map(r => r.dataset.buildId)")
    assert ids == expected
    # each older page was asked for with a cursor an earlier answer gave, the last one has none
    given: set[str] = set()
    for answer in pages:
        assert answer["before"] is None or answer["before"] in given, pages
        given.add(answer["next"])
    assert len([a for a in pages if a["before"]]) >= len(expected) // 2 - 1, pages
    assert pages[-1]["next"] is None, pages
    await page.close()


async def test_a_refresh_while_an_older_page_loads_keeps_that_page(ui, expect, git_server):
    """ "Older builds" pressed, then Refresh before that page arrived: the refresh's answer
    replaced the list and the older page was gone (press again). The refresh now fetches the
    pages asked for, the one in flight included."""
    expected = await alice_builds_for_pages(ui, git_server, 4)
    release = asyncio.Event()

    async def slow_older(route: Any) -> None:
        await release.wait()  # the older page arrives only after the refresh has started
        await route.continue_()

    page = await (await ui.context("alice")).new_page()
    page.on("pageerror", lambda error: ui.page_errors.append(f"alice: {error}"))
    await page.goto(ui.url("#/builds?owner=alice&limit=2"))
    await page.locator(".r2d-view").wait_for()
    rows = page.get_by_test_id("build-row")
    await expect(rows).to_have_count(2)
    await page.route(lambda url: "before=" in url and "/api/builds" in url, slow_older)
    await page.get_by_test_id("older-builds").click()
    await expect(page.get_by_test_id("older-builds")).to_have_text("Loading older builds…")
    # (the refresh's own request for the second page waits for the release too)
    await page.get_by_test_id("refresh-builds").click()
    release.set()
    await expect(rows).to_have_count(4)
    ids = await rows.evaluate_all("rs => rs.map(r => r.dataset.buildId)")
    assert ids == expected[:4]
    await page.close()


async def test_build_list_marks_a_build_whose_record_is_missing(ui, expect, git_server):
    """The list shows a build's ``record_error`` as text in its row (the API reports it for one
    build here: the suite's hubs have no registry), and no marker on the other rows."""
    builds = (await ui.api("alice", "GET", "api/builds", params={"owner": "alice"})).json()
    done = [b["id"] for b in builds["builds"] if b["done"]]
    if len(done) < 2:
        for _ in range(2 - len(done)):
            done.append(await alice_quick_build(ui, git_server, "rec"))
    marked, other = done[0], done[1]
    error = "cannot reach the registry at http://127.0.0.1:1 <b>(retrying)</b>"

    async def with_record_error(route: Any) -> None:
        response = await route.fetch()
        data = await response.json()
        for build in data.get("builds", []):
            if build["id"] == marked:
                build["record_error"] = error
        await route.fulfill(response=response, json=data)

    page = await (await ui.context("alice")).new_page()
    page.on("pageerror", lambda e: ui.page_errors.append(f"alice: {e}"))
    await page.route(re.compile(r"/api/builds([?].*)?$"), with_record_error)
    await page.goto(ui.url("#/builds?owner=alice"))
    await page.locator(".r2d-view").wait_for()
    row = page.locator(f'[data-testid="build-row"][data-build-id="{marked}"]')
    marker = row.get_by_test_id("build-record-error")
    await expect(marker).to_be_visible()
    await expect(marker).to_contain_text("Record not in the registry")
    # the message as text (markup in it stays text)
    await expect(marker.get_by_test_id("build-record-error-text")).to_have_text(error)
    await expect(row.locator("b")).to_have_count(0)
    others = page.locator(f'[data-testid="build-row"][data-build-id="{other}"]')
    await expect(others).to_be_visible()
    await expect(page.get_by_test_id("build-record-error")).to_have_count(1)
    await page.close()


# ---- build options: the "Advanced" section -------------------------------------------------------
async def test_advanced_section_shows_what_the_admin_allows_and_builds_with_it(
    ui, expect, git_server
):
    """The suite's hubs allow subdir, build_args, user_id and appendix; appendix needs the
    appendix scope (admin1 has it, alice not). A refused value lands on its field."""
    admin = await ui.page("admin1", "#/new")
    await admin.get_by_test_id("toggle-advanced").click()
    await expect(admin.get_by_test_id("field-options.appendix")).to_be_visible()
    await admin.close()

    page = await ui.page("alice", new_build_fragment(repo=git_server.url("hello"), ref="v1"))
    await expect(page.get_by_test_id("field-options.appendix")).to_have_count(0)
    await expect(page.get_by_test_id("field-options.platform")).to_have_count(0)
    await expect(page.get_by_test_id("field-options.subdir")).to_be_hidden()  # folded
    await page.get_by_test_id("toggle-advanced").click()
    name = unique("adv")
    await page.get_by_test_id("field-name").fill(name)
    # out of the admin's range: the server's 400 lands on the field
    await page.get_by_test_id("field-options.user_id").fill("5")
    await page.get_by_test_id("build-submit").click()
    await expect(page.get_by_test_id("error-options.user_id")).to_contain_text("between")
    # the browser logs the expected 400 as a console error: that one is not a UI fault
    expected = "status of 400 (Bad Request)"
    ui.page_errors[:] = [e for e in ui.page_errors if expected not in e]
    await page.get_by_test_id("field-options.user_id").fill("1001")
    await page.get_by_test_id("field-options.build_args").fill("GREETING=hi there\nMODE=x=y")
    build_id = await submit_build(ui, page)
    await expect(page.get_by_test_id("build-options")).to_contain_text('"user_id":1001')
    build = (await ui.api("alice", "GET", f"api/builds/{build_id}")).json()
    assert build["options"] == {
        "user_id": 1001,
        "build_args": {"GREETING": "hi there", "MODE": "x=y"},
    }
    assert (await ui.wait_build("alice", build_id))["state"] == "built"
    await page.goto(ui.url("#/images"))
    row = page.locator(f'[data-testid="image-row"][data-owner="alice"][data-name="{name}"]')
    await row.get_by_test_id("toggle-versions").click()
    await expect(page.locator(OPEN_VERSIONS).get_by_test_id("version-options")).to_be_visible()
    await ui.screenshot(page, "build-options.png")
    await page.close()
