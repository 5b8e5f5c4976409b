"""The BinderHub-compatible endpoint ``build/<provider>/<spec>``, driven by the real
``@jupyterhub/binderhub-client`` (npm) in Node through the Hub's proxy, on both adapters."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d_core.errors import InvalidRequest
from r2d_core.providers import (
    DEFAULT_URL_TEMPLATES,
    ProviderSpec,
    RepoProviders,
    resolve_spec,
    template_kind,
)
from tests.harness.npm import BINDERHUB_CLIENT, NODE, npm_packages
from tests.service_support import Callers, adapter_hub, running

HERE = Path(__file__).parent
CLIENT_SCRIPT = HERE / "node" / "binder_client.mjs"


# ---- the provider mapping (pure) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("provider", "spec", "repo", "ref"),
    [
        ("gh", "org/repo/main", "https://github.com/org/repo", "main"),
        ("gh", "org/repo.git/feature/x", "https://github.com/org/repo", "feature/x"),
        ("gh", "org/repo/HEAD/", "https://github.com/org/repo", "HEAD"),
        ("gl", "group%2Fsub%2Fproject/v1", "https://gitlab.com/group/sub/project.git", "v1"),
        (
            "git",
            quote("https://example.org/r.git", safe="") + "/main",
            "https://example.org/r.git",
            "main",
        ),
        (
            "git",
            quote("git@example.org:org/r.git", safe="") + "/v2",
            "ssh://git@example.org/org/r.git",
            "v2",
        ),
    ],
)
def test_resolve_spec(provider, spec, repo, ref):
    assert resolve_spec(provider, spec, DEFAULT_URL_TEMPLATES) == ProviderSpec(provider, repo, ref)


@pytest.mark.parametrize(
    ("provider", "spec", "says"),
    [
        ("zenodo", "10.5281/zenodo.1", "No provider found"),
        ("gh", "org/repo", 'Did you mean "org/repo/HEAD"'),
        ("gh", "org", "user/repo/ref"),
        ("gh", "..%2F..%2Fevil/x/main", "owner"),
        ("gh", "org/re%40po/main", "repository"),
        ("gh", "org/%2E%2E/main", "repository"),
        ("gl", "project/main", "group/project"),
        ("gl", "a%2F..%2Fb/main", "namespace part"),
        ("git", "https%3A%2F%2Fexample.org%2Fr", "url-escaped"),
        ("git", "https%3A%2F%2Fexample.org%2Fr/", "url-escaped"),
        ("gh", "org/repo/" + "x" * 5000, "too long"),
    ],
)
def test_resolve_spec_refuses(provider, spec, says):
    with pytest.raises(InvalidRequest) as info:
        resolve_spec(provider, spec, DEFAULT_URL_TEMPLATES)
    assert says in str(info.value)


@settings(max_examples=400, deadline=None)
@given(
    provider=st.sampled_from(["gh", "gl", "git", "x"]),
    spec=st.text(alphabet=st.characters(codec="utf-8"), max_size=120)
    | st.lists(st.sampled_from(["a", "..", ".", "%2F", "%2E", "@", ":", "-", "%00", "/"])).map(
        "".join
    ),
)
def test_resolve_spec_never_escapes_its_template(provider, spec):
    """Any spec is refused with a message or names a URL of its provider's form: a GitHub spec
    cannot leave github.com/<owner>/<repo> (no '..', no extra segment, no other host)."""
    try:
        result = resolve_spec(provider, spec, DEFAULT_URL_TEMPLATES)
    except InvalidRequest as e:
        assert str(e)
        return
    assert result.ref
    if provider == "gh":
        path = result.repo.removeprefix("https://github.com/")
        owner, repo = path.split("/")
        assert owner not in ("", ".", "..") and repo not in ("", ".", "..")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", path), result
    elif provider == "gl":
        path = result.repo.removeprefix("https://gitlab.com/").removesuffix(".git")
        assert all(p not in ("", ".", "..") for p in path.split("/")), result


def test_provider_templates_are_checked():
    from traitlets import TraitError

    assert template_kind("https://ghe.example.org/{owner}/{repo}") == "github"
    assert template_kind("git://127.0.0.1:1/{repo}") == "github"
    for bad in ("https://x/{owner}", "https://x/{url}", "https://x/{nope}", "{url}{namespace}"):
        with pytest.raises(ValueError):
            template_kind(bad)
    with pytest.raises(TraitError, match="url_templates"):
        RepoProviders(url_templates={"gh": "https://x/{owner}"})
    with pytest.raises(TraitError, match="prefix"):
        RepoProviders(url_templates={"G H": "{url}"})
    enterprise = RepoProviders(url_templates={"gh": "https://ghe.example.org/{owner}/{repo}"})
    assert enterprise.resolve("gh", "a/b/c").repo == "https://ghe.example.org/a/b"
    with pytest.raises(InvalidRequest, match="No provider"):
        enterprise.resolve("git", "x/y")


# ---- through a real Hub, with the real client -------------------------------------------------------
def provider_config(git_server) -> str:
    # 'gh' stands for the loopback git server (what GitHub Enterprise would be in production)
    port = git_server.url("hello").rsplit(":", 1)[1].split("/")[0]
    return (
        "\nc.RepoProviders.url_templates = "
        + repr({"gh": f"git://127.0.0.1:{port}/{{repo}}", "git": "{url}"})
        + "\n"
    )


LAUNCH_CONFIG = "c.LaunchButton.url = '/hub/spawn?opt-image={image}'\n"


@pytest.fixture(scope="module", params=["service", "tljh"])
def binder_hub(request, docker_host, local_images, git_server):
    hub = adapter_hub(docker_host, request.param)
    hub.config.service_config += provider_config(git_server) + LAUNCH_CONFIG
    with running(hub) as hub:
        yield hub


@pytest.fixture(scope="module")
def client_dir() -> Path:
    return npm_packages("binderhub-client", BINDERHUB_CLIENT)


async def run_client(hub, client_dir: Path, spec: str, token: str | None, timeout: float = 180):
    """Run the Node client; return (exit code, events, stderr)."""
    env = {**os.environ, "R2D_BINDER_CLIENT_DIR": str(client_dir)}
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(CLIENT_SCRIPT),
        hub.service_url + "build/",
        spec,
        token or "",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"binderhub-client did not finish within {timeout}s (a hang)")
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return proc.returncode, events, err.decode()


@pytest.mark.docker
@pytest.mark.hub
async def test_binderhub_client_builds_streams_and_gets_image(binder_hub, client_dir, git_server):
    hub = binder_hub
    token = await asyncio.to_thread(hub.token_for, "alice")
    code, events, err = await run_client(hub, client_dir, "gh/r2d/hello/main", token)
    assert code == 0, (events, err)
    phases = [e["phase"] for e in events]
    assert phases[-1] == "ready"
    image = events[-1]["imageName"]
    # skipped at once when alice built it in another run against the same engine; else streamed
    if "building" in phases:
        assert phases[0] == "waiting" and "fetching" in phases and "built" in phases
        text = "".join(e["message"] for e in events)
        assert sum("r2d-line" in line for line in text.splitlines()) >= 20
    assert all(e["message"].endswith("\n") for e in events)  # BinderHub's convention
    sha = git_server.repos["hello"].head
    assert sha in image and "alice" in image

    # the same build in our API: alice sees it (with its log), bob does not
    callers = Callers(hub)
    try:
        alice = await callers.token("alice")
        images = (await alice.request("GET", "api/images/alice/hello")).json()
        assert image in [v["image"] for v in images["versions"]]
        builds = (await alice.request("GET", "api/builds?owner=alice")).json()["builds"]
        mine = [b for b in builds if b["image"] == image]
        if "building" in phases:
            assert mine and mine[0]["state"] == "built" and mine[0]["requested_by"] == "alice"
            log = await alice.request("GET", f"api/builds/{mine[0]['id']}/logs?format=text")
            assert sum("r2d-line" in line for line in log.text.splitlines()) == 20
        bob = await callers.token("bob")
        assert (await bob.request("GET", "api/images/alice/hello")).status_code == 404
    finally:
        await callers.aclose()

    # built already: "built" + "ready" at once, with the same image
    code, again, err = await run_client(hub, client_dir, "gh/r2d/hello/main", token)
    assert code == 0 and [e["phase"] for e in again] == ["built", "ready"], again
    assert again[-1]["imageName"] == image

    # the git provider names the same repository: the same image
    spec = "git/" + quote(git_server.url("hello"), safe="") + "/main"
    code, same, err = await run_client(hub, client_dir, spec, token)
    assert code == 0 and same[-1]["imageName"] == image, same


@pytest.mark.docker
@pytest.mark.hub
async def test_binderhub_client_failing_repo_ends_failed(binder_hub, client_dir):
    token = await asyncio.to_thread(binder_hub.token_for, "bob")
    code, events, err = await run_client(binder_hub, client_dir, "gh/r2d/fails/main", token)
    assert code == 1, (events, err)
    assert events[-1]["phase"] == "failed" and "Build failed" in events[-1]["message"], events
    assert "r2d-fail 5" in "".join(e["message"] for e in events)
    assert sum(e["phase"] == "failed" for e in events) == 1  # the client stops at the first


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.parametrize(
    ("user", "spec", "says"),
    [
        # gina may open the service but holds no build scope: the message, not a hang
        ("gina", "gh/r2d/hello/main", "custom:repo2docker:build"),
        (None, "gh/r2d/hello/main", "not logged in"),
        ("alice", "zenodo/10.5281/zenodo.1", "No provider found"),
        ("alice", "git/" + quote("https://example.org/x", safe="") + "/main", "not allowed"),
        ("alice", "gh/r2d/hello/no-such-branch", "no-such-branch"),
    ],
)
async def test_binderhub_client_failure_messages(binder_hub, client_dir, user, spec, says):
    token = await asyncio.to_thread(binder_hub.token_for, user) if user else None
    code, events, err = await run_client(binder_hub, client_dir, spec, token, timeout=60)
    assert code == 1 and events and events[-1]["phase"] == "failed", (events, err)
    assert says in events[-1]["message"], events


@pytest.mark.docker
@pytest.mark.hub
async def test_without_build_only_says_it_never_launches(binder_hub):
    token = await asyncio.to_thread(binder_hub.token_for, "alice")
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(
            binder_hub.service_url + "build/gh/r2d/hello/main",
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    event = json.loads(r.text.strip().removeprefix("data: "))
    assert event["phase"] == "failed" and "build_only=true" in event["message"]
    assert event["status_code"] == 400


@pytest.mark.docker
@pytest.mark.hub
async def test_disconnect_does_not_cancel_and_a_second_client_joins(binder_hub, git_server):
    """A client that goes away leaves the build running; the next request joins it, replays its
    log from the start, and hears of a cancel (from the API or the UI) as a failed event."""
    hub = binder_hub
    token = await asyncio.to_thread(hub.token_for, "frank")
    headers = {"Authorization": f"Bearer {token}"}
    url = hub.service_url + "build/gh/r2d/slow/main?build_only=true&name=slow" + hub.config.mode
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("GET", url, headers=headers) as s:
            async for line in s.aiter_lines():
                if "r2d-slow 1" in line:
                    break
        await asyncio.sleep(1)
        events: list[dict] = []
        cancelled = False
        async with client.stream("GET", url, headers=headers) as s:
            async for line in s.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line[6:]))
                if "r2d-slow 1\n" in events[-1]["message"] and not cancelled:
                    cancelled = True
                    assert "Joining the running build" in events[0]["message"], events[0]
                    build_id = events[0]["message"].split()[4]
                    r = await client.get(
                        hub.service_url + f"api/builds/{build_id}", headers=headers
                    )
                    assert r.json()["state"] in ("fetching", "building"), r.json()
                    r = await client.delete(
                        hub.service_url + f"api/builds/{build_id}", headers=headers
                    )
                    assert r.status_code == 200, r.text
                if events[-1]["phase"] in ("failed", "ready"):
                    break
        assert events[-1]["phase"] == "failed" and "cancel" in events[-1]["message"], events[-3:]


@pytest.fixture(scope="module")
def registry_hub(docker_host, local_images, git_server):
    from tests.harness.registry import RegistryServer
    from tests.registry_fixtures import require_registry_binary

    require_registry_binary()
    registry = RegistryServer("anonymous")
    registry.start()
    hub = adapter_hub(docker_host, "service")
    hub.config.service_config += provider_config(git_server) + "\n".join(
        [
            f"c.Registry.url = {registry.url!r}",
            f"c.BuildManager.image_prefix = {registry.host + '/binder-'!r}",
            "",
        ]
    )
    try:
        with running(hub) as hub:
            hub.registry = registry  # type: ignore[attr-defined]
            yield hub
    finally:
        registry.close()


@pytest.mark.docker
@pytest.mark.hub
async def test_binderhub_client_gets_the_pushed_reference(registry_hub, client_dir, git_server):
    """With a registry, the build is pushed and imageName is the registry's reference (what a
    spawner on another node pulls); a second request finds it built."""
    hub = registry_hub
    token = await asyncio.to_thread(hub.token_for, "bob")
    code, events, err = await run_client(hub, client_dir, "gh/r2d/hello/v1", token)
    assert code == 0, (events, err)
    image = events[-1]["imageName"]
    sha = git_server.repos["hello"].tags["v1"]
    assert image.startswith(hub.registry.host + "/binder-bob-hello") and image.endswith(sha)
    phases = [e["phase"] for e in events]
    assert "pushing" in phases and phases.index("pushing") < phases.index("ready"), phases
    repository, tag = image.split("/", 1)[1].rsplit(":", 1)
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.head(
            f"{hub.registry.url}/v2/{repository}/manifests/{tag}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    assert r.status_code == 200, r.text
    code, again, err = await run_client(hub, client_dir, "gh/r2d/hello/v1", token)
    assert [e["phase"] for e in again] == ["built", "ready"] and again[-1]["imageName"] == image


@pytest.mark.docker
@pytest.mark.hub
async def test_launch_button_setting_reaches_the_page(binder_hub):
    """``c.LaunchButton.url`` is read from the service's config file, or from the Hub's own
    config by the TLJH plugin, and handed to the UI."""
    from tests.harness.hub import login

    client = await login(binder_hub, "alice")
    try:
        page = (await client.get(binder_hub.service_url)).text
    finally:
        await client.aclose()
    assert '"launch_url": "/hub/spawn?opt-image={image}"' in page


@pytest.mark.docker
@pytest.mark.hub
async def test_build_options_and_annotations_from_the_query_string(binder_hub):
    """BinderHub has no build options: ours come as query parameters, under the same policy."""
    token = await asyncio.to_thread(binder_hub.token_for, "alice")
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    base = binder_hub.service_url + "build/gh/r2d/hello/v1?build_only=true&name=binderopts"

    async def events(query: str) -> list[dict]:
        async with httpx.AsyncClient(timeout=180) as client:
            r = await client.get(base + query, headers=headers)
        return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]

    refused = await events("&platform=linux/amd64")
    assert refused[-1]["phase"] == "failed" and refused[-1]["status_code"] == 400
    assert "options.platform" in refused[-1]["message"]
    refused = await events("&annotation=nokey")
    assert refused[-1]["phase"] == "failed" and "annotation=KEY=VALUE" in refused[-1]["message"]
    # (the second adapter's hub finds the image the first one built: skipped, also "ready")
    done = await events("&build_arg=GREETING=hi%3Dthere&user_id=1002&annotation=tljh.mem_limit=1G")
    assert done[-1]["phase"] == "ready", done[-3:]
    image = done[-1]["imageName"]
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(
            binder_hub.service_url + "api/images/alice/binderopts", headers=headers
        )
    version = next(v for v in r.json()["versions"] if v["image"] == image)
    assert version["options"] == {"user_id": 1002, "build_args": {"GREETING": "hi=there"}}
    assert version["annotations"] == {"tljh.mem_limit": "1G"}
    assert image.endswith("-o" + version["options_digest"])


def test_every_log_line_keeps_its_newline_blank_ones_too():
    """A batch of log lines becomes one message in which every line ends in a newline: a batch
    that is one blank line was an empty message (the client's terminal lost the line break)."""
    from r2d_tornado.binder import _lines, binder_event

    for batch in ([""], ["a", "", "b"], ["", ""], ["x"]):
        event = json.loads(binder_event("building", _lines(batch))[len("data: ") :])
        assert event["message"] == "".join(f"{m}\n" for m in batch)
        assert event["message"].split("\n")[:-1] == batch
