"""The API behind a real JupyterHub 6 + proxy, through both adapters: the standalone service
(managed, and external) and the TLJH plugin inside the Hub. One behaviour suite, parametrized."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.service_support import (
    SERVICE,
    Callers,
    make_hub,
    running,
    suite_hub,
    wait_build,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub]


@pytest.fixture(scope="session", params=["service", "tljh", "tljh-recipes"])
def hub(request, docker_host, local_images, git_server):
    with running(suite_hub(docker_host, request.param)) as hub:
        yield hub


@pytest.fixture(scope="session")
async def callers(hub):
    callers = Callers(hub)
    yield callers
    await callers.aclose()


@pytest.fixture(scope="session")
async def seeded(hub, callers, git_server):
    """bob has image 'bobimg', frank has 'frankimg' (built for him by erin through her group)."""
    bob = await callers.token("bob")
    # forced: each adapter's run has a build of bob's to list, even if the image exists already
    r = await bob.request(
        "POST",
        "api/builds",
        json={"repo": git_server.url("hello"), "ref": "v1", "name": "bobimg", "force": True},
    )
    assert r.status_code == 202, r.text
    erin = await callers.token("erin")
    r2 = await erin.request(
        "POST",
        "api/builds",
        json={"repo": git_server.url("hello"), "ref": "v1", "name": "frankimg", "owner": "frank"},
    )
    assert r2.status_code in (200, 202), r2.text
    builds = {}
    for caller, response in ((bob, r), (erin, r2)):
        if response.status_code == 202:
            done = await wait_build(caller, response.json()["id"])
            assert done["state"] == "built", done
            builds[caller.name] = done
    return {"bob_build": builds.get("bob"), "repo": git_server.url("hello")}


@contextlib.asynccontextmanager
async def slow_builds(caller, git_server, prefix: str, count: int) -> AsyncIterator[list[str]]:
    """``count`` forced builds of the slow repository by ``caller`` (``<prefix>0``, ...; each
    accepted with 202); yields their ids and cancels them on the way out, newest first (the
    waiting ones, so that none starts meanwhile). max_builds_per_owner is 2 in these Hubs."""
    ids: list[str] = []
    try:
        for i in range(count):
            r = await caller.request(
                "POST",
                "api/builds",
                json={"repo": git_server.url("slow"), "name": f"{prefix}{i}", "force": True},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        yield ids
    finally:
        for build_id in reversed(ids):
            await caller.request("DELETE", f"api/builds/{build_id}")


# --- the authorization matrix ---------------------------------------------------------------------
# (caller, method, path, body) -> expected status. "anon" = logged out; callers use API tokens here
# and browser cookies in test_cookie_matrix_sample.
BOB_IMAGE = "api/images/bob/bobimg"
MATRIX = [
    # GET api/: anyone with access to the service; it reports their permissions
    ("anon", "GET", "api/", None, 401),
    ("dave", "GET", "api/", None, (403, 200)),
    ("gina", "GET", "api/", None, 200),
    ("alice", "GET", "api/", None, 200),
    # image lists: need some read scope
    ("anon", "GET", "api/images", None, 401),
    ("dave", "GET", "api/images", None, 403),
    ("gina", "GET", "api/images", None, 403),
    ("alice", "GET", "api/images", None, 200),
    ("carol", "GET", "api/images", None, 200),
    # one image of bob's: hidden from those who may not read it
    ("anon", "GET", BOB_IMAGE, None, 401),
    ("dave", "GET", BOB_IMAGE, None, (403, 404)),
    ("gina", "GET", BOB_IMAGE, None, 404),
    ("alice", "GET", BOB_IMAGE, None, 404),
    ("erin", "GET", BOB_IMAGE, None, 404),
    ("bob", "GET", BOB_IMAGE, None, 200),
    ("carol", "GET", BOB_IMAGE, None, 200),
    ("admin1", "GET", BOB_IMAGE, None, 200),
    ("erin", "GET", "api/images/frank/frankimg", None, 200),
    # deleting a version that does not exist: 404 only for those allowed to delete at all
    ("anon", "DELETE", BOB_IMAGE + "?tag=" + "0" * 40, None, 401),
    ("alice", "DELETE", BOB_IMAGE + "?tag=" + "0" * 40, None, 404),
    ("carol", "DELETE", BOB_IMAGE + "?tag=" + "0" * 40, None, 403),
    ("erin", "DELETE", "api/images/frank/frankimg?tag=" + "0" * 40, None, 403),
    ("bob", "DELETE", BOB_IMAGE + "?tag=" + "0" * 40, None, 404),
    ("admin1", "DELETE", BOB_IMAGE + "?tag=" + "0" * 40, None, 404),
    # builds for bob (already built at v1: allowed callers get 200 "skipped")
    ("anon", "POST", "api/builds", {"owner": "bob"}, 401),
    ("dave", "POST", "api/builds", {"owner": "bob"}, 403),
    ("gina", "POST", "api/builds", {"owner": "bob"}, 403),
    ("carol", "POST", "api/builds", {"owner": "bob"}, 403),
    ("alice", "POST", "api/builds", {"owner": "bob"}, 403),
    ("erin", "POST", "api/builds", {"owner": "bob"}, 403),
    ("bob", "POST", "api/builds", {"owner": "bob"}, 200),
    ("bob", "POST", "api/builds", {}, 200),  # owner defaults to the caller
    ("admin1", "POST", "api/builds", {"owner": "bob"}, 200),
    ("erin", "POST", "api/builds", {"owner": "frank", "name": "frankimg"}, 200),
    # build lists
    ("anon", "GET", "api/builds", None, 401),
    ("gina", "GET", "api/builds", None, 403),
    ("alice", "GET", "api/builds", None, 200),
    # health needs nobody; metrics need read:metrics; the OpenAPI document a Hub identity
    ("anon", "GET", "health", None, 200),
    ("anon", "GET", "metrics", None, 401),
    ("carol", "GET", "metrics", None, 403),
    ("alice", "GET", "metrics", None, 403),
    ("admin1", "GET", "metrics", None, 200),
    ("anon", "GET", "api/openapi.json", None, 401),
    ("gina", "GET", "api/openapi.json", None, 200),
]


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status"), MATRIX, ids=lambda v: str(v)[:40]
)
async def test_authorization_matrix(hub, callers, seeded, who, method, path, body, status):
    if isinstance(status, tuple):
        # (standalone service, TLJH plugin): inside the Hub there is no access:services scope,
        # so a user without it is simply a user without repo2docker scopes
        status = status[hub.config.mode == "tljh"]
    caller = callers.anonymous() if who == "anon" else await callers.token(who)
    kwargs = {}
    if body is not None:
        kwargs["json"] = {"repo": seeded["repo"], "ref": "v1", "name": "bobimg", **body}
    r = await caller.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    if status in (401, 403):
        assert r.json()["message"]
    if status == 403 and who != "dave":
        # names the scope the caller lacks
        assert "custom:repo2docker:" in r.json()["message"] or "read:metrics" in r.json()["message"]


async def test_lists_only_show_readable_namespaces(callers, seeded):
    alice = await callers.token("alice")
    assert all(
        i["owner"] == "alice" for i in (await alice.request("GET", "api/images")).json()["images"]
    )
    carol = await callers.token("carol")
    owners = {i["owner"] for i in (await carol.request("GET", "api/images")).json()["images"]}
    assert {"bob", "frank"} <= owners
    erin = await callers.token("erin")
    images = (await erin.request("GET", "api/images")).json()["images"]
    assert {i["owner"] for i in images} == {"frank"}
    assert all(i["can_build"] and not i["can_delete"] for i in images)
    bob_builds = (await carol.request("GET", "api/builds?owner=bob")).json()["builds"]
    assert bob_builds and all(b["owner"] == "bob" for b in bob_builds)
    assert all(not b["can_cancel"] for b in bob_builds)


async def test_info_reports_permissions(callers):
    erin = await callers.token("erin")
    info = (await erin.request("GET", "api/")).json()
    assert info["permissions"]["build"] == {"all": False, "owners": [], "groups": ["team"]}
    assert info["permissions"]["read"]["groups"] == ["team"]
    assert info["scopes"]["delete"] == "custom:repo2docker:delete"
    assert info["rules"]["name_pattern"].startswith("^")
    gina = await callers.token("gina")
    info = (await gina.request("GET", "api/")).json()
    assert not any(
        info["permissions"][a]["all"] or info["permissions"][a]["owners"] for a in ("read", "build")
    )


async def test_cookie_matrix_sample(callers, seeded, hub):
    """Browsers: OAuth cookie + XSRF on writes; a write without the XSRF header is refused."""
    bob = await callers.cookie("bob")
    assert (await bob.request("GET", BOB_IMAGE)).status_code == 200
    alice = await callers.cookie("alice")
    assert (await alice.request("GET", BOB_IMAGE)).status_code == 404
    body = {"repo": seeded["repo"], "ref": "v1", "name": "bobimg"}
    assert (await bob.request("POST", "api/builds", json=body)).status_code == 200
    no_xsrf = await bob.client.post("api/builds", json=body)
    assert no_xsrf.status_code == 403 and "xsrf" in no_xsrf.text.lower()
    carol = await callers.cookie("carol")
    assert (
        await carol.request("POST", "api/builds", json={**body, "owner": "bob"})
    ).status_code == 403
    if hub.config.mode != "tljh":
        # a user without access:services cannot complete the OAuth flow to the service
        from tests.harness.hub import login

        with pytest.raises(RuntimeError):
            await login(hub, "dave")


async def test_build_validation_messages(callers, git_server):
    alice = await callers.token("alice")
    cases = [
        ({"repo": "file:///etc/passwd"}, "repo"),
        ({"repo": git_server.url("hello"), "ref": "-x"}, "ref"),
        ({"repo": git_server.url("hello"), "ref": "nope"}, "ref"),
        ({"repo": git_server.url("hello"), "name": "no spaces"}, "name"),
        ({"repo": git_server.url("hello"), "push": "yes"}, "push"),
    ]
    for body, field in cases:
        r = await alice.request("POST", "api/builds", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["field"] == field, r.json()
    r = await alice.request("POST", "api/builds", content=b"not json")
    assert r.status_code == 400


async def test_build_follow_sse_resume_and_text(callers, git_server):
    alice = await callers.token("alice")
    r = await alice.request(
        "POST",
        "api/builds",
        json={"repo": git_server.url("hello"), "ref": "main", "name": f"sse{int(time.time())}"},
    )
    assert r.status_code == 202, r.text
    build = r.json()
    assert build["state"] in ("queued", "fetching") and build["logs_url"].endswith("/logs")

    # read a few events, drop the connection, resume with Last-Event-ID
    seen: list[int] = []
    async with alice.client.stream(
        "GET", f"api/builds/{build['id']}/logs", headers=alice.headers
    ) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        async for line in s.aiter_lines():
            if line.startswith("id: "):
                seen.append(int(line[4:]))
                if len(seen) == 3:
                    break
    assert seen == [0, 1, 2]
    messages: list[str] = []
    ids: list[int] = []
    done = None
    headers = {**alice.headers, "Last-Event-ID": str(seen[-1])}
    async with alice.client.stream("GET", f"api/builds/{build['id']}/logs", headers=headers) as s:
        event = None
        async for line in s.aiter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "log":
                messages.append(json.loads(line[6:])["message"])
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
    assert ids[0] == 3 and ids == list(range(3, 3 + len(ids)))  # nothing lost, nothing repeated
    assert done is not None and done["state"] == "built"
    text = (await alice.request("GET", f"api/builds/{build['id']}/logs?format=text")).text
    full = text.splitlines()
    assert full[3:] == messages
    assert sum("r2d-line" in line for line in full) == 20
    # a finished build replays the same log
    assert (
        await alice.request("GET", f"api/builds/{build['id']}/logs?format=text&follow=0")
    ).text == text


async def test_cancel_through_api(callers, git_server):
    bob = await callers.token("bob")
    r = await bob.request(
        "POST", "api/builds", json={"repo": git_server.url("slow"), "name": "slowbob"}
    )
    assert r.status_code == 202
    build_id = r.json()["id"]
    alice = await callers.token("alice")
    assert (await alice.request("DELETE", f"api/builds/{build_id}")).status_code == 404
    carol = await callers.token("carol")
    assert (await carol.request("DELETE", f"api/builds/{build_id}")).status_code == 403
    r = await bob.request("DELETE", f"api/builds/{build_id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert (await bob.request("DELETE", f"api/builds/{build_id}")).status_code == 409
    assert (await bob.request("GET", "api/builds/ffffffffffff")).status_code == 404


async def test_build_list_pages(callers, git_server):
    """GET api/builds in pages: newest first, at most `limit` each, `next` -> `before` walks the
    whole list once; bad parameters answer 400 naming them."""
    admin = await callers.token("admin1")
    async with slow_builds(admin, git_server, "page", 4) as ids:  # 2 run, 2 wait; all cancelled
        pass
    everything = (await admin.request("GET", "api/builds?owner=admin1&limit=500")).json()
    assert everything["next"] is None
    walked: list[str] = []
    before = ""
    for _ in range(len(everything["builds"])):
        r = await admin.request("GET", f"api/builds?owner=admin1&limit=3{before}")
        assert r.status_code == 200, r.text
        page = r.json()
        assert 1 <= len(page["builds"]) <= 3
        walked += [b["id"] for b in page["builds"]]
        if page["next"] is None:
            break
        before = f"&before={page['next']}"
    assert walked == [b["id"] for b in everything["builds"]]
    assert [i for i in walked if i in ids] == ids[::-1]  # newest first
    default = (await admin.request("GET", "api/builds")).json()
    assert len(default["builds"]) <= 100 and "next" in default
    for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("before=x", "before")):
        r = await admin.request("GET", f"api/builds?{query}")
        assert r.status_code == 400 and r.json()["field"] == field, (query, r.text)


async def test_delete_image_through_api(callers, git_server):
    frank = await callers.token("frank")
    r = await frank.request(
        "POST", "api/builds", json={"repo": git_server.url("hello"), "ref": "v2", "name": "gone"}
    )
    assert r.status_code in (200, 202)
    if r.status_code == 202:
        assert (await wait_build(frank, r.json()["id"]))["state"] == "built"
    r = await frank.request("DELETE", "api/images/frank/gone")
    assert r.status_code == 200 and r.json()["deleted"] and not r.json()["errors"]
    assert (await frank.request("GET", "api/images/frank/gone")).status_code == 404


async def test_metrics_and_openapi(callers):
    admin = await callers.token("admin1")
    metrics = (await admin.request("GET", "metrics")).text
    assert "r2d_builds_total" in metrics and "r2d_build_queue_length" in metrics
    # only this service's registry: never the Hub's (TLJH) or the process's default collectors
    assert "jupyterhub_" not in metrics and "process_cpu" not in metrics
    carol = await callers.token("carol")
    doc = (await carol.request("GET", "api/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/api/builds/{build_id}/logs" in doc["paths"]


async def test_page_requires_login_and_redirects(hub):
    async with httpx.AsyncClient(follow_redirects=False) as client:
        r = await client.get(hub.service_url)
        assert r.status_code == 302
        if hub.config.mode == "tljh":
            assert r.headers["location"].startswith("/hub/login?next=")
        else:
            assert "/hub/api/oauth2/authorize" in r.headers["location"]


def test_generate_hub_config_is_valid_python():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "r2d_tornado.app",
            "generate-hub-config",
            "--mode",
            "external",
            "--singleuser",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    class Section(dict):
        def __getattr__(self, key):
            return self.setdefault(key, Section())

        def __setattr__(self, key, value):
            self[key] = value

    c = Section()
    exec(compile(out, "hub_config", "exec"), {"c": c})
    assert set(c.JupyterHub.custom_scopes) == {
        "custom:repo2docker:read",
        "custom:repo2docker:build",
        "custom:repo2docker:delete",
        "custom:repo2docker:appendix",
    }
    assert c.JupyterHub.services[0]["oauth_client_allowed_scopes"]
    # a server never acts beyond its owner's namespace: only filtered scopes (proved against a
    # real Hub in tests/test_http_security.py)
    repo2docker = [s for s in c.Spawner.oauth_client_allowed_scopes if s.startswith("custom:")]
    assert repo2docker and all(s.endswith("!server") for s in repo2docker)
    tokens = [s for s in c.Spawner.server_token_scopes if s.startswith("custom:")]
    assert tokens and all(s.endswith("!user") for s in tokens)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert (
        "custom:repo2docker:build!user" in roles["user"]["scopes"]
        and "self" in roles["user"]["scopes"]
    )


async def test_external_service_mode(docker_host, git_server, local_images, tmp_path):
    """The Hub and an external service process share nothing but HTTP."""
    from tests.harness.hub import login, xsrf_headers
    from tests.service_support import service_config

    hub = make_hub(docker_host, mode="external")
    env = {
        **os.environ,
        "JUPYTERHUB_API_TOKEN": hub.service_token,
        "JUPYTERHUB_SERVICE_NAME": SERVICE,
        "JUPYTERHUB_SERVICE_PREFIX": f"/services/{SERVICE}/",
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub.hub_port}/hub/api",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{hub.config.service_port}",
        "JUPYTERHUB_CLIENT_ID": f"service-{SERVICE}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"/services/{SERVICE}/oauth_callback",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps([f"access:services!service={SERVICE}"]),
        "DOCKER_HOST": docker_host,
        "R2D_CONFIG_FILE": str(tmp_path / "cfg.py"),
    }
    (tmp_path / "cfg.py").write_text(service_config())
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "r2d_tornado.app"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # the service first: a Hub that starts first waits for its external services
        hub.start()
        hub.wait_for_service()
        client = await login(hub, "alice")
        r = await client.post(
            hub.service_url + "api/builds",
            json={"repo": git_server.url("hello"), "ref": "v2", "name": "external"},
            headers=xsrf_headers(client, hub),
        )
        assert r.status_code in (200, 202), r.text
        await client.aclose()
        # SIGTERM (as a Hub or systemd stops services) ends it promptly
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        hub.cleanup()
    assert "Stopping" in (tmp_path / "service.log").read_text()


async def test_python_client(hub, git_server, seeded):
    from r2d_core.client import R2DClient
    from r2d_core.errors import Forbidden, NotFound

    token = await asyncio.to_thread(hub.token_for, "frank")
    async with R2DClient(hub.service_url, token) as r2d:
        info = await r2d.info()
        assert info["user"]["name"] == "frank"
        result = await r2d.build(git_server.url("hello"), "dev", name="clientimg", force=True)
        assert result.build is not None and not result.skipped
        lines = [event async for event in r2d.follow(result.build["id"])]
        assert [e.n for e in lines] == list(range(len(lines)))
        assert sum("r2d-line" in e.message for e in lines) in (
            0,
            20,
        )  # 0 when BuildKit had it cached
        # resume from the middle: the rest, exactly
        rest = [event async for event in r2d.follow(result.build["id"], since=5)]
        assert [e.n for e in rest] == [e.n for e in lines[5:]]
        assert (await r2d.wait(result.build["id"]))["state"] == "built"
        again = await r2d.build(git_server.url("hello"), "dev", name="clientimg")
        assert again.skipped and again.image["name"] == "clientimg"
        assert [i["name"] for i in await r2d.images(owner="frank")].count("clientimg") == 1
        with pytest.raises(Forbidden, match="custom:repo2docker:build"):
            await r2d.build(git_server.url("hello"), owner="bob")
        with pytest.raises(NotFound):
            await r2d.image("bob", "bobimg")
        # pages: one build per request, walked to the end, is the whole list (newest first)
        assert [b["id"] for b in await r2d.all_builds(limit=1)] == [
            b["id"] for b in await r2d.builds(limit=500)
        ]


async def test_group_membership_changes_reach_the_service(hub, callers, seeded, git_server):
    """Group grants follow the Hub: a member removed from the group loses the grant within the
    permissions TTL (2 s here), and gets it back when re-added."""
    erin = await callers.token("erin")
    body = {"repo": git_server.url("hello"), "ref": "v1", "name": "frankimg", "owner": "frank"}

    async def status_within(expected: int, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while True:
            status = (await erin.request("POST", "api/builds", json=body)).status_code
            if status == expected or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.25)

    assert await status_within(200, 0) == 200
    await asyncio.to_thread(hub.set_groups, "team", [])
    try:
        assert await status_within(403, 10) == 403
    finally:
        await asyncio.to_thread(hub.set_groups, "team", ["frank"])
    assert await status_within(200, 10) == 200


async def test_queued_build_stream_sends_state_and_keepalives(callers, git_server):
    """A build waiting for a slot: the stream says so (state event) and keeps the connection
    alive with comments (every second in this configuration) until it starts."""
    admin = await callers.token("admin1")
    async with slow_builds(admin, git_server, "queue", 3) as ids:  # the third waits
        queued = (await admin.request("GET", f"api/builds/{ids[2]}")).json()
        assert queued["state"] == "queued" and queued["queue_position"] == 0
        lines: list[str] = []

        async def read() -> None:
            async with admin.client.stream(
                "GET", f"api/builds/{ids[2]}/logs", headers=admin.headers
            ) as s:
                async for line in s.aiter_lines():
                    lines.append(line)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(read(), 2.8)
        assert "event: state" in lines and '"state": "queued"' in "".join(lines)
        assert lines.count(": keepalive") >= 2


async def test_delete_one_version(callers, git_server):
    frank = await callers.token("frank")
    repo = git_server.repos["hello"]
    for ref in ("v1", "v2"):
        r = await frank.request(
            "POST",
            "api/builds",
            json={"repo": git_server.url("hello"), "ref": ref, "name": "twover"},
        )
        assert r.status_code in (200, 202), r.text
        if r.status_code == 202:
            assert (await wait_build(frank, r.json()["id"]))["state"] == "built"
    image = (await frank.request("GET", "api/images/frank/twover")).json()
    assert {v["sha"] for v in image["versions"]} == {repo.tags["v1"], repo.tags["v2"]}
    r = await frank.request("DELETE", f"api/images/frank/twover?tag={repo.tags['v1']}")
    assert r.status_code == 200 and len(r.json()["deleted"]) == 1, r.text
    left = (await frank.request("GET", "api/images/frank/twover")).json()["versions"]
    assert [v["sha"] for v in left] == [repo.tags["v2"]]
    assert (await frank.request("DELETE", "api/images/frank/twover")).status_code == 200


async def test_per_owner_queue_cap_answers_429_and_spares_others(callers, git_server):
    """One owner with the most builds waiting (default 10, 2 running here) gets 429 with
    Retry-After naming the limit; another owner's build is still accepted."""
    admin = await callers.token("admin1")
    bob = await callers.token("bob")
    async with slow_builds(admin, git_server, "cap", 12):  # 2 running + 10 waiting
        r = await admin.request(
            "POST", "api/builds", json={"repo": git_server.url("slow"), "name": "cap12"}
        )
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) > 0
        body = r.json()
        assert body["limit"] == "max_queued_builds_per_owner"
        assert "max_queued_builds_per_owner = 10" in body["message"]
        async with slow_builds(bob, git_server, "notcapped", 1):
            pass


async def test_build_options_and_annotations_through_the_api(hub, callers, git_server):
    """The policy of ``c.BuildOptions`` (subdir, build_args, user_id, appendix allowed) through
    both adapters: GET api/ says what each caller may set, refusals are 400 naming the field,
    options and annotations come back with the build and the image."""
    alice = await callers.token("alice")
    admin = await callers.token("admin1")
    info = (await alice.request("GET", "api/")).json()["options"]
    assert info["allowed"] == ["subdir", "build_args", "user_id"]  # no appendix scope
    assert "appendix" in (await admin.request("GET", "api/")).json()["options"]["allowed"]
    repo = git_server.url("hello")
    refused = [
        ({"options": {"user_id": 5}}, "options.user_id"),
        ({"options": {"platform": "linux/amd64"}}, "options.platform"),
        ({"options": {"appendix": "RUN id"}}, "options.appendix"),
        ({"options": {"subdir": "../../etc"}}, "options.subdir"),
        ({"options": {"build_args": {"NB_UID": "0"}}}, "options.build_args"),
        ({"options": {"nope": 1}}, "options.nope"),
        ({"annotations": {"nodot": "x"}}, "annotations.nodot"),
        ({"annotations": {"tljh.mem_limit": "2G\x1b[31m"}}, "annotations.tljh.mem_limit"),
    ]
    for extra, field in refused:
        r = await alice.request("POST", "api/builds", json={"repo": repo, "ref": "v1", **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["field"] == field, r.json()
    annotations = {"tljh.mem_limit": "2G", "display.description": "options test"}
    body = {
        "repo": repo,
        "ref": "v1",
        "name": "withopts",
        "force": True,  # the adapters' hubs share one engine
        "options": {"build_args": {"GREETING": "hi"}, "user_id": 1001},
        "annotations": annotations,
    }
    r = await alice.request("POST", "api/builds", json=body)
    assert r.status_code == 202, r.text
    build = r.json()
    assert build["options"] == body["options"] and build["annotations"] == annotations
    assert build["image"].endswith("-o" + build["options_digest"])
    done = await wait_build(alice, build["id"])
    assert done["state"] == "built", done
    image = (await alice.request("GET", "api/images/alice/withopts")).json()
    assert image["annotations"] == annotations
    version = next(v for v in image["versions"] if v["image"] == build["image"])
    assert version["options"] == body["options"] and version["annotations"] == annotations
    # the appendix scope lets the admin send one (a Dockerfile repository ignores it)
    r = await admin.request(
        "POST",
        "api/builds",
        json={
            "repo": repo,
            "ref": "v1",
            "name": "appx",
            "force": True,
            "options": {"appendix": "RUN true"},
        },
    )
    assert r.status_code == 202, r.text
    assert (await wait_build(admin, r.json()["id"]))["state"] == "built"
    # the typed client sends and returns them too
    from r2d_core.client import R2DClient

    token = await asyncio.to_thread(hub.token_for, "alice")
    async with R2DClient(hub.service_url, token) as r2d:
        result = await r2d.build(
            repo,
            "v1",
            name="withopts",
            options={"user_id": 1002},
            annotations={"display.description": "client"},
            force=True,
        )
        assert result.build is not None
        assert result.build["annotations"] == {"display.description": "client"}
        assert (await r2d.wait(result.build["id"]))["state"] == "built"
        [image] = [i for i in await r2d.images(owner="alice") if i["name"] == "withopts"]
        by_image = {v["image"]: v for v in image["versions"]}
        assert by_image[result.build["image"]]["options"] == {"user_id": 1002}
        assert by_image[build["image"]]["annotations"] == annotations
