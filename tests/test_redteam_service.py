"""Red-team cases against the real service through the Hub's proxy, on both adapters.

Callers: alice (``custom:repo2docker:build!user`` + delete!user), carol (read-only), gina (access
to the service, no repo2docker scope), dave (no access at all); see tests/service_support.py.
What held is listed in docs/explanation/security-http.md ("What was tried").
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import quote

import httpx
import pytest

from tests.harness.hub import login, xsrf_headers
from tests.service_support import Callers, adapter_hub, running
from tests.test_binder import provider_config

pytestmark = [pytest.mark.docker, pytest.mark.hub]

OTHER_ORIGIN = "http://127.0.0.2:9"


@pytest.fixture(scope="module", params=["service", "tljh"])
def rhub(request, docker_host, local_images, git_server):
    hub = adapter_hub(docker_host, request.param)
    hub.config.service_config += provider_config(git_server)
    with running(hub) as hub:
        yield hub


@pytest.fixture
async def callers(rhub):
    callers = Callers(rhub)
    yield callers
    await callers.aclose()


def _binder_events(text: str) -> list[dict]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


# ---- clickjacking, CORS ---------------------------------------------------------------------------
async def test_ui_page_may_not_be_framed_by_another_origin(rhub):
    """JupyterHub answers its pages with ``Content-Security-Policy: frame-ancestors 'none'``; the
    service's page holds Build and Delete buttons, so a page of another origin (same site: another
    port of the same host sends the cookies) must not frame it either."""
    client = await login(rhub, "alice")
    try:
        r = await client.get(rhub.service_url)
        assert r.status_code == 200, r.text[:300]
        csp = r.headers.get("Content-Security-Policy", "")
        assert re.search(r"frame-ancestors '(none|self)'", csp), dict(r.headers)
        # the API's answers too (a framed JSON error page is no use, but costs nothing to refuse)
        r = await client.get(rhub.service_url + "api/")
        assert "frame-ancestors" in r.headers.get("Content-Security-Policy", "")
        assert r.headers.get("X-Content-Type-Options") == "nosniff"
    finally:
        await client.aclose()


async def test_no_cors_answers_for_other_origins(rhub):
    client = await login(rhub, "alice")
    try:
        for method, path in (("GET", "api/"), ("GET", "api/builds"), ("OPTIONS", "api/builds")):
            r = await client.request(
                method,
                rhub.service_url + path,
                headers={
                    "Origin": OTHER_ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Sec-Fetch-Mode": "cors",
                    "Sec-Fetch-Site": "same-site",
                },
            )
            assert "Access-Control-Allow-Origin" not in r.headers, (path, dict(r.headers))
            assert "Access-Control-Allow-Credentials" not in r.headers
        # a cookie write from a script of another origin, without the XSRF token: refused
        r = await client.post(
            rhub.service_url + "api/builds",
            json={"repo": "git://127.0.0.1:1/x"},
            headers={"Origin": OTHER_ORIGIN, "Sec-Fetch-Mode": "cors"},
        )
        assert r.status_code in (401, 403), r.text
    finally:
        await client.aclose()


# ---- hostile values in paths and queries ---------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "api/images/alice/..%2F..%2Fbob",
        "api/images/..%2Fbob/x",
        "api/images/alice%00/x",
        "api/images/bob/hello%0A",
        "api/images/b%C3%B6b/hello",
        "api/images/bob\u202e/hello",
        "api/builds/00000000000000000000000000000000%0A",
        "api/builds/ABC",
        "api/builds/" + "a" * 5000,
        "api/builds/abc/logs?since=-1",
        "api/builds/abc/logs?since=1e9",
        "api/builds?state=built&state=nope",
        "api/builds?owner=bob&owner=alice",
    ],
)
async def test_hostile_paths_answer_4xx(rhub, callers, path):
    alice = await callers.token("alice")
    r = await alice.request("GET", path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    r = await alice.request("DELETE", path.split("?")[0])
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])


async def test_binder_ref_with_encoded_newline_is_refused(rhub, git_server):
    """``build/gh/<owner>/<repo>/<ref>``: the ref is unescaped from the path and reaches the core
    checks without the JSON schema: ``<sha>%0A`` passed as a full sha (no lookup), and named
    an image ``...:<sha>\\n``."""
    token = await asyncio.to_thread(rhub.token_for, "alice")
    sha = git_server.repos["hello"].head
    async with httpx.AsyncClient(timeout=60) as client:
        for spec in (f"r2d/hello/{sha}%0A", "r2d/hello/main%0A"):
            r = await client.get(
                rhub.service_url + f"build/gh/{spec}",
                params={"build_only": "true"},
                headers={"Authorization": f"Bearer {token}"},
            )
            events = _binder_events(r.text)
            assert events and events[-1]["phase"] == "failed", (spec, r.text[:500])
            assert events[-1].get("status_code") == 400, (spec, events)
        r = await client.get(
            rhub.service_url + f"build/gh/r2d/hello/{sha}",
            params={"build_only": "true", "name": "../bob"},
            headers={"Authorization": f"Bearer {token}"},
        )
        events = _binder_events(r.text)
        assert events[-1]["phase"] == "failed" and events[-1].get("status_code") == 400, events


@pytest.mark.parametrize(
    "spec",
    [
        "gh/..%2F../hello/main",
        "gh/r2d/..%2F..%2Fhello/main",
        "git/" + quote(quote("git://127.0.0.1:1/x", safe=""), safe="") + "/main",
        "git/" + quote("https://user:pw@127.0.0.1:1/x", safe="") + "/main",
        "git/" + quote("https://169.254.169.254/x", safe="") + "/main",
        "git/" + quote("ssh://-oProxyCommand=touch%20/tmp/pwn/x", safe="") + "/main",
        "git/" + quote("ext::sh -c id", safe="") + "/main",
        "git/" + quote("file:///etc", safe="") + "/main",
        "nope/x/y",
    ],
)
async def test_binder_hostile_specs_fail_with_4xx(rhub, spec):
    token = await asyncio.to_thread(rhub.token_for, "alice")
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.get(
            rhub.service_url + f"build/{spec}",
            params={"build_only": "true"},
            headers={"Authorization": f"Bearer {token}"},
        )
    events = _binder_events(r.text)
    assert events and events[-1]["phase"] == "failed", (spec, r.status_code, r.text[:500])
    status = events[-1].get("status_code")
    assert status is not None and 400 <= status < 500, (spec, events)
    assert "pw" not in r.text.replace("pwn", "")  # a URL's password is never echoed


# ---- namespaces -----------------------------------------------------------------------------------
async def test_no_route_builds_or_deletes_in_another_namespace(rhub, callers, git_server):
    alice = await callers.token("alice")
    carol = await callers.token("carol")
    gina = await callers.token("gina")
    repo = git_server.url("hello")
    for caller in (alice, carol, gina):
        r = await caller.request("POST", "api/builds", json={"repo": repo, "owner": "bob"})
        assert r.status_code == 403, (caller.name, r.text)
        r = await caller.request("DELETE", "api/images/bob/hello", params={"tag": "x"})
        assert r.status_code in (403, 404), (caller.name, r.text)
    # an owner that differs from bob only by a look-alike or an invisible character is not bob's
    for owner in ("bob\u200b", "b\u043eb", "BOB", "bob\n", " bob"):
        r = await alice.request("POST", "api/builds", json={"repo": repo, "owner": owner})
        assert r.status_code in (400, 403), (owner, r.text)
    token = await asyncio.to_thread(rhub.token_for, "alice")
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.get(
            rhub.service_url + "build/gh/r2d/hello/main",
            params={"build_only": "true", "owner": "bob"},
            headers={"Authorization": f"Bearer {token}"},
        )
    events = _binder_events(r.text)
    assert events[-1]["phase"] == "failed" and events[-1]["status_code"] == 403, events


async def test_cookie_event_stream_needs_the_xsrf_token(rhub, callers):
    """An EventSource cannot send headers: the UI passes ``_xsrf`` in the query. Without it, a
    scripted (cors-mode) cookie read is refused."""
    client = await login(rhub, "alice")
    try:
        headers = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-site", "Origin": OTHER_ORIGIN}
        r = await client.get(rhub.service_url + "api/builds", headers=headers)
        assert r.status_code in (401, 403), r.text
        xsrf = xsrf_headers(client, rhub)["X-XSRFToken"]
        r = await client.get(
            rhub.service_url + "api/builds", params={"_xsrf": xsrf}, headers=headers
        )
        assert r.status_code == 200, r.text
    finally:
        await client.aclose()


# ---- resource exhaustion --------------------------------------------------------------------------
async def test_event_streams_per_user_are_capped(rhub, callers, git_server):
    """One user's open event streams are capped (default 20): each holds a connection (in TLJH a
    file descriptor of the Hub) while the build runs; more answer 429, other users are not
    affected, and a closed stream frees its slot."""
    import contextlib

    alice = await callers.token("alice")
    bob = await callers.token("bob")
    r = await alice.request(
        "POST", "api/builds", json={"repo": git_server.url("slow"), "force": True}
    )
    assert r.status_code == 202, r.text
    build = r.json()
    path = f"api/builds/{build['id']}/logs"
    try:
        async with contextlib.AsyncExitStack() as stack:
            streams = []
            for _ in range(20):
                s = await stack.enter_async_context(
                    alice.client.stream("GET", path, headers=alice.headers)
                )
                assert s.status_code == 200
                streams.append(s)
            r = await alice.request("GET", path)
            assert r.status_code == 429, r.text
            assert r.json()["error"] == "rate_limited" and r.headers.get("Retry-After")
            # the BinderHub endpoint counts too, and says so as an event
            token = await asyncio.to_thread(rhub.token_for, "alice")
            r = await alice.client.get(
                rhub.service_url + "build/gh/r2d/slow/main",
                params={"build_only": "true"},
                headers={"Authorization": f"Bearer {token}"},
            )
            events = _binder_events(r.text)
            assert events[-1]["phase"] == "failed" and events[-1]["status_code"] == 429, events
            # bob is not alice: his own streams are his (he may not read hers: 404)
            r = await bob.request("GET", path)
            assert r.status_code == 404, r.text
            await streams[0].aclose()
            for _ in range(50):  # the service notices the closed connection
                r = await alice.request("GET", path, params={"format": "text", "follow": "0"})
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text
    finally:
        await alice.request("DELETE", f"api/builds/{build['id']}")


@pytest.fixture(scope="module")
def quick_timeout_hub(docker_host, local_images):
    hub = adapter_hub(docker_host, "service")
    hub.config.service_config += "\nc.R2DService.request_timeout = 2\n"
    with running(hub) as hub:
        yield hub


async def test_slowloris_client_is_cut_off(quick_timeout_hub, git_server):
    """A client that sends its headers one line at a time, never finishing, is disconnected
    after ``R2DService.request_timeout`` (tornado's own default: an hour per connection). The
    service port is reachable without the proxy by anyone on the host."""
    import time

    port = quick_timeout_hub.config.service_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /services/r2d/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 15:
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), 0.5)
                if data == b"":
                    closed = True
                    break
            except asyncio.TimeoutError:
                continue
            except (ConnectionError, OSError):
                closed = True
                break
        assert closed, "a dripping client kept its connection for 15 s"
        assert time.monotonic() - started < 10
    finally:
        writer.close()
    # a normal request still works, and an event stream outlives the timeout (answers are not cut)
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"http://127.0.0.1:{port}/services/r2d/health")
        assert r.status_code == 200
    callers = Callers(quick_timeout_hub)
    try:
        alice = await callers.token("alice")
        r = await alice.request(
            "POST", "api/builds", json={"repo": git_server.url("slow"), "force": True}
        )
        assert r.status_code == 202, r.text
        build = r.json()
        try:
            started = time.monotonic()
            last = 0.0
            async with alice.client.stream(
                "GET", f"api/builds/{build['id']}/logs", headers=alice.headers
            ) as stream:
                async for _chunk in stream.aiter_bytes():
                    last = time.monotonic() - started
                    if last > 5:
                        break
            assert last > 5, "the event stream was cut"
        finally:
            await alice.request("DELETE", f"api/builds/{build['id']}")
    finally:
        await callers.aclose()


# ---- XSRF on the one GET that changes state ------------------------------------------------------
@pytest.mark.parametrize("mode", ["navigate", None])
async def test_binder_build_by_cookie_needs_the_xsrf_token_even_when_navigating(rhub, mode):
    """``GET build/...`` starts a build. JupyterHub spares cookie-authenticated *navigations* (and
    requests without ``Sec-Fetch-Mode``) the XSRF check, and any site can make a browser
    navigate there: ``build/gh/attacker/repo/main?build_only=true&owner=bob&name=bobs-image``
    visited by an admin would put the attacker's code in as the newest version of bob's image."""
    client = await login(rhub, "alice")
    try:
        headers = {"Sec-Fetch-Site": "cross-site"}
        if mode:
            headers["Sec-Fetch-Mode"] = mode
        url = rhub.service_url + "build/gh/r2d/hello/no-such-ref"
        r = await client.get(url, params={"build_only": "true"}, headers=headers)
        events = _binder_events(r.text)
        assert events and events[-1]["phase"] == "failed", r.text[:300]
        assert events[-1].get("status_code") == 403, events
        assert "XSRF" in events[-1]["message"]
        # with the token (what binderhub-client sends from the _xsrf cookie): it goes ahead
        r = await client.get(
            url, params={"build_only": "true"}, headers={**headers, **xsrf_headers(client, rhub)}
        )
        events = _binder_events(r.text)
        assert events[-1].get("status_code") == 400 and "no-such-ref" in events[-1]["message"]
    finally:
        await client.aclose()


# ---- bodies: parser differentials and type confusion (these held) --------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"repo": "git://127.0.0.1:1/x", "owner": "alice", "owner": "bob"}',  # last key wins
        b'{"repo": "git://127.0.0.1:1/x", "push": "true"}',
        b'{"repo": "git://127.0.0.1:1/x", "force": 1}',
        b'{"repo": ["git://127.0.0.1:1/x"]}',
        b'{"repo": "git://127.0.0.1:1/x", "ref": 123}',
        b'{"repo": "git://127.0.0.1:1/x", "owner": null}',
        b'{"repo": "git://127.0.0.1:1/x", "credentials": {"password": 5}}',
        b'{"repo": "git://127.0.0.1:1/x", "name": "x\\u0000"}',
        b'{"repo": "git://127.0.0.1:1/x\\u0000"}',
        b'{"repo": "git://127.0.0.1:1/x", "ref": "main\\n"}',
        b'{"repo": "git://127.0.0.1:1/x", "ref": "\\u202emain"}',
        b'{"repo": "git://127.0.0.1:1/x", "name": "\\uff41"}',
        b'{"repo": "git://127.0.0.1:1/x", "__proto__": {}}',
        b'{"repo": "git://127.0.0.1:1/x"} {"owner": "bob"}',
        b'{"repo": "' + b"a" * 70_000 + b'"}',
        b"[" * 20 + b"]" * 20,
        b'{"repo": NaN}',
    ],
)
async def test_hostile_bodies_answer_4xx_and_never_reach_bob(rhub, callers, body):
    alice = await callers.token("alice")
    r = await alice.request(
        "POST", "api/builds", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:300])
    builds = (await alice.request("GET", "api/builds", params={"owner": "bob"})).json()
    assert builds["builds"] == []


async def test_static_files_do_not_escape_their_directory(rhub):
    async with httpx.AsyncClient(timeout=30) as client:
        for path in ("static/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "static/%2e%2e/app.py"):
            r = await client.get(rhub.service_url + path)
            assert r.status_code in (403, 404), (path, r.status_code)
            assert "root:" not in r.text


async def test_submissions_waiting_on_a_slow_git_server_are_capped(rhub, callers, git_server):
    """Each ``POST api/builds`` waits for the ref lookup (up to ``ref_timeout``, 30 s): a user
    firing hundreds at a server that drips its answer would hold as many connections of the
    service (of the Hub, in TLJH). They share the caller's 20 slots with event streams."""
    from tests.harness.hostile import HostileGitServer

    frank = await callers.token("frank")
    bob = await callers.token("bob")
    with HostileGitServer("drip", interval=0.5) as slow:
        tasks = [
            asyncio.create_task(
                frank.request("POST", "api/builds", json={"repo": slow.url(f"r{i}")})
            )
            for i in range(20)
        ]
        for _ in range(100):  # until the service holds all 20
            if slow.requests >= 20:
                break
            await asyncio.sleep(0.1)
        assert slow.requests >= 20
        r = await frank.request("POST", "api/builds", json={"repo": git_server.url("hello")})
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited"
        # another user is not affected
        r = await bob.request("POST", "api/builds", json={"repo": "git://127.0.0.1:1/x"})
        assert r.status_code == 503, r.text
    # the server went away: the lookups fail, the slots are free again
    answers = await asyncio.gather(*tasks)
    assert all(a.status_code >= 400 and a.status_code != 500 for a in answers), [
        (a.status_code, a.text[:100]) for a in answers
    ]
    r = await frank.request("POST", "api/builds", json={"repo": "git://127.0.0.1:1/x"})
    assert r.status_code == 503, r.text


# ---- a repository whose checkout points at a file of the host ------------------------------------
async def test_symlink_to_a_host_file_fails_the_build_and_leaks_nothing(
    rhub, callers, git_server, tmp_path
):
    """``apt.txt -> /some/host/file``: repo2docker (on the service's host with the default
    LocalProcessBuilder) would read the file and print it (the generated Dockerfile's apt-get
    line, or its "invalid package name" error) into the build log."""
    import os
    import uuid

    from tests.test_fetch import git

    # upper case: repo2docker refuses it as a package name and echoes it in its error, before any
    # build step (the harness builds offline, where the apt step would fail first)
    marker = f"HOSTSECRET{uuid.uuid4().hex}"
    secret = tmp_path / "host-secret.txt"
    secret.write_text(f"{marker}\n")
    name = f"rt-link-{uuid.uuid4().hex[:8]}"
    repo = git_server.add_repo(name, {"README.md": "# links\n"})
    os.symlink(str(secret), repo.path / "apt.txt")
    git(repo.path, "add", "apt.txt")
    git(repo.path, "commit", "-q", "-m", "apt.txt")
    alice = await callers.token("alice")
    r = await alice.request("POST", "api/builds", json={"repo": git_server.url(name)})
    assert r.status_code == 202, r.text
    from tests.service_support import wait_build

    build = await wait_build(alice, r.json()["id"])
    log = await alice.request("GET", f"api/builds/{build['id']}/logs", params={"format": "text"})
    assert marker not in log.text and marker not in json.dumps(build)
    assert build["state"] == "failed", build
    assert "apt.txt is a symbolic link that points outside the repository" in log.text
