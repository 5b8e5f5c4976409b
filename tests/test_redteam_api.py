"""Red-team cases against the REST API, its event streams and the BinderHub endpoint, through the
Hub's proxy on both adapters (the standalone service and the TLJH plugin).

Callers (tests/service_support.py): alice (``custom:repo2docker:build!user`` + delete!user),
admin1 (build and delete everywhere), carol (read everything). What tests/test_redteam_service.py
covers already is not repeated here.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.service_support import LOOPBACK_GIT, Callers, adapter_hub, running
from tests.test_binder import provider_config

pytestmark = [pytest.mark.docker, pytest.mark.hub]

#: smart-HTTP repositories on loopback are allowed too (credentials are only sent over HTTP)
HTTP_GIT = r"^http://127\.0\.0\.1:\d+/"


@pytest.fixture(scope="module", params=["service", "tljh"])
def rhub(request, docker_host, local_images, git_server):
    hub = adapter_hub(docker_host, request.param, git_patterns=[*LOOPBACK_GIT, HTTP_GIT])
    hub.config.service_config += provider_config(git_server)
    with running(hub) as hub:
        yield hub


@pytest.fixture
async def callers(rhub):
    callers = Callers(rhub)
    yield callers
    await callers.aclose()


# ---- JSON strings that are no Unicode --------------------------------------------------------------
# JSON may spell a UTF-16 surrogate alone ("\ud800"); Python's parser turns it into a str that
# cannot be encoded as UTF-8, so it broke wherever a value was encoded: the owner's image name
# (escape_component), a smart-HTTP Basic auth header (httpx).
@pytest.mark.parametrize(
    ("who", "body"),
    [
        # a caller who may build for anyone names an owner with a lone surrogate: 500
        ("admin1", {"repo": "{hello}", "owner": "x\ud800", "name": "x"}),
        # any builder: credentials for an HTTP repository (the Authorization header): 500
        ("alice", {"repo": "http://127.0.0.1:1/x", "credentials": {"password": "\udfff"}}),
        (
            "alice",
            {
                "repo": "http://127.0.0.1:1/x",
                "credentials": {"username": "\ud83d", "password": "p"},
            },
        ),
        # and a git:// build was queued (202), keeping such credentials for its fetch stage
        ("alice", {"repo": "{hello}", "credentials": {"password": "a\ud800b"}}),
    ],
)
async def test_lone_surrogates_in_the_body_answer_400(callers, git_server, who, body):
    caller = await callers.token(who)
    if body["repo"] == "{hello}":
        body = {**body, "repo": git_server.url("hello")}
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as a \\u escape
    assert b"\\ud" in raw
    r = await caller.request(
        "POST", "api/builds", content=raw, headers={"Content-Type": "application/json"}
    )
    try:
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert r.json()["error"] == "invalid"
        assert r.json()["field"] in ("owner", "credentials"), r.json()
    finally:
        if r.status_code == 202:
            await caller.request("DELETE", f"api/builds/{r.json()['id']}")


# ---- event-stream slots ---------------------------------------------------------------------------
async def _queue_behind_two(caller, git_server, prefix: str) -> list[dict]:
    """Three slow builds of ``caller``'s: max_builds_per_owner = 2, so the third one waits."""
    builds = []
    for i in range(3):
        r = await caller.request(
            "POST",
            "api/builds",
            json={"repo": git_server.url("slow"), "name": f"{prefix}-{i}", "force": True},
        )
        assert r.status_code == 202, r.text
        builds.append(r.json())
    assert builds[2]["state"] == "queued", builds[2]
    return builds


async def test_a_closed_text_log_stream_frees_its_slot_while_the_build_waits(callers, git_server):
    """``?format=text`` follows a log without keepalives (they would be log text): a client that
    went away was noticed only at the log's next line. A waiting build writes none, so 20 closed
    tabs kept the caller's 20 stream slots, and every request needing one answered 429, until
    the builds ahead of it had finished."""
    alice = await callers.token("alice")
    builds = await _queue_behind_two(alice, git_server, "rt-text")
    path = f"api/builds/{builds[2]['id']}/logs"
    try:
        streams = [
            asyncio.create_task(alice.request("GET", path, params={"format": "text"}))
            for _ in range(20)
        ]
        for _ in range(100):  # until the service holds all 20
            r = await alice.request("GET", path, params={"format": "text", "follow": "0"})
            if r.status_code == 429:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 429, r.text
        for stream in streams:  # the tabs close
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        for _ in range(100):
            r = await alice.request("GET", path, params={"format": "text", "follow": "0"})
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text
        state = (await alice.request("GET", f"api/builds/{builds[2]['id']}")).json()["state"]
        assert state == "queued"  # freed by the closed connections, not by the build starting
    finally:
        for build in builds:
            await alice.request("DELETE", f"api/builds/{build['id']}")


async def test_a_text_log_of_a_waiting_build_answers_its_headers_at_once(rhub, callers, git_server):
    """A followed ``?format=text`` log sent its headers with its first line: for a queued build
    that is minutes away, and a proxy in front that waits for the headers gives up first
    (nginx: proxy_read_timeout). Asked of the service's own server (the standalone service's
    port, the Hub's for the plugin): configurable-http-proxy itself holds an answer's headers
    until its first body byte (node's http server)."""
    import httpx

    alice = await callers.token("alice")
    builds = await _queue_behind_two(alice, git_server, "rt-head")
    port = rhub.config.service_port if rhub.config.mode != "tljh" else rhub.hub_port
    direct = f"http://127.0.0.1:{port}{httpx.URL(rhub.service_url).path}"
    try:
        async with httpx.AsyncClient(base_url=direct, headers=alice.headers) as client:
            request = client.build_request(
                "GET", f"api/builds/{builds[2]['id']}/logs", params={"format": "text"}
            )
            response = await asyncio.wait_for(client.send(request, stream=True), 15)
            try:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                assert response.headers.get("x-accel-buffering") == "no"
            finally:
                await response.aclose()
    finally:
        for build in builds:
            await alice.request("DELETE", f"api/builds/{build['id']}")


async def test_query_numbers_are_ascii_digits_as_the_handler_reads_them(callers, git_server):
    """The query validator took what int() takes (" 1", Arabic-Indic digits) while the text log
    handler compared the raw argument with "0": ``follow=00`` passed as 0 and followed anyway
    (until the build ended), ``follow=\u0661`` passed as 1."""
    alice = await callers.token("alice")
    r = await alice.request(
        "POST", "api/builds", json={"repo": git_server.url("slow"), "name": "rt-q", "force": True}
    )
    assert r.status_code == 202, r.text
    build = r.json()
    path = f"api/builds/{build['id']}/logs"
    try:
        r = await asyncio.wait_for(
            alice.request("GET", path, params={"format": "text", "follow": "00"}), 30
        )
        assert r.status_code == 200, r.text  # 0: the log so far, then the answer ends
        for odd in ("\u0661", " 1", "1_0", "+1"):
            r = await asyncio.wait_for(
                alice.request("GET", path, params={"format": "text", "follow": odd}), 30
            )
            assert r.status_code == 400, (odd, r.status_code)
            assert r.json()["field"] == "follow"
    finally:
        await alice.request("DELETE", f"api/builds/{build['id']}")


async def test_binder_stream_replays_a_long_log_in_bounded_events(rhub, callers, git_server):
    """Joining a running build on the BinderHub endpoint replayed its whole kept log (up to
    max_log_bytes, 4 MiB) as one event, written at once: a client that does not read (20 of
    them per caller) left each such event in the service's memory (the Hub's, in TLJH). The
    event stream of ``api/builds/<id>/logs`` replays in chunks of REPLAY_CHUNK and waits for
    each to be sent before reading the next; so must this one."""
    import uuid

    import httpx

    from r2d_tornado.streams import REPLAY_CHUNK
    from tests.harness.gitserver import _dockerfile

    name = f"rt-long-{uuid.uuid4().hex[:8]}"
    filler = "." * 60
    # bursts under BuildKit's own output limit (200 KiB/s, beyond which it clips the step's log)
    burst = f"seq 1 2000 | sed 's/^/r2d-long /; s/$/ {filler}/'; sleep 1"
    run = f"for k in 1 2 3 4 5; do {burst}; done; printf 'r2d-long-%s\\n' end; sleep 60"
    git_server.add_repo(name, {"Dockerfile": _dockerfile(run)})
    alice = await callers.token("alice")
    r = await alice.request("POST", "api/builds", json={"repo": git_server.url(name)})
    assert r.status_code == 202, r.text
    build = r.json()
    try:
        text = ""
        for _ in range(300):  # the flood is in the log, the build sleeps
            logs = await alice.request(
                "GET", f"api/builds/{build['id']}/logs", params={"format": "text", "follow": "0"}
            )
            text = logs.text
            if "r2d-long-end" in text:
                break
            await asyncio.sleep(0.2)
        assert "r2d-long-end" in text and len(text) > 6 * REPLAY_CHUNK, len(text)
        # (the marker is printed with printf: the RUN line in the log does not contain it)
        token = await asyncio.to_thread(rhub.token_for, "alice")
        sizes, first = [], ""
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream(
                "GET",
                rhub.service_url + f"build/gh/r2d/{name}/main",
                params={"build_only": "true"},
                headers={"Authorization": f"Bearer {token}"},
            ) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        first = first or line
                        sizes.append(len(line))
                        if "r2d-long-end" in line:
                            break
        assert "Joining the running build" in first, first
        assert len(sizes) > 3 and max(sizes) <= 2 * REPLAY_CHUNK, sizes[:10]
    finally:
        await alice.request("DELETE", f"api/builds/{build['id']}")


# ---- the BinderHub endpoint's query options --------------------------------------------------------
@pytest.mark.parametrize("user_id", ["\u00b2", "\u2460", "\u0661\u0660\u0660\u0660"])
async def test_binder_user_id_that_only_looks_like_digits_is_refused(rhub, user_id):
    """``?user_id=`` was parsed with ``int(v) if v.isdigit()``: ``'²'.isdigit()`` is True and
    ``int('²')`` a ValueError, answered as a "failed" event with status 500 (and a traceback in
    the log); Arabic-Indic digits became a uid."""
    import httpx

    token = await asyncio.to_thread(rhub.token_for, "alice")
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.get(
            rhub.service_url + "build/gh/r2d/hello/main",
            params={"build_only": "true", "user_id": user_id},
            headers={"Authorization": f"Bearer {token}"},
        )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1]["phase"] == "failed", r.text[:500]
    assert events[-1].get("status_code") == 400, events[-1]
    assert "user_id" in events[-1]["message"], events[-1]


# ---- what a 404 tells about builds of others -------------------------------------------------------
async def test_another_owners_build_is_not_told_apart_from_no_build(callers, git_server):
    """Build ids travel (a shared log link, a notebook, a screenshot). Asked for one of bob's,
    alice got "bob has nothing here that you may see", and for an id that does not exist "no
    build '...'": the answer said that the build exists and whose it is."""
    alice = await callers.token("alice")
    bob = await callers.token("bob")
    r = await bob.request("POST", "api/builds", json={"repo": git_server.url("hello")})
    assert r.status_code in (200, 202), r.text
    if r.status_code == 200:  # built already (skipped): force one
        r = await bob.request(
            "POST", "api/builds", json={"repo": git_server.url("hello"), "force": True}
        )
    build_id = r.json()["id"]
    missing = "0123456789ab" if build_id != "0123456789ab" else "ba9876543210"
    try:
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/logs")):
            theirs = await alice.request(method, f"api/builds/{build_id}{suffix}")
            nothing = await alice.request(method, f"api/builds/{missing}{suffix}")
            assert theirs.status_code == nothing.status_code == 404, (theirs.text, nothing.text)
            assert "bob" not in theirs.text, theirs.text
            assert theirs.json() == json.loads(nothing.text.replace(missing, build_id))
    finally:
        await bob.request("DELETE", f"api/builds/{build_id}")


# ---- labels a repository writes itself ------------------------------------------------------------
@pytest.fixture(scope="module", params=["service", "tljh"])
def quota_hub(request, docker_host, local_images):
    hub = adapter_hub(docker_host, request.param)
    hub.config.service_config += "\nc.LifecyclePolicy.max_images_per_owner = 1\n"
    with running(hub) as hub:
        yield hub


async def test_a_repositorys_own_labels_neither_hide_its_image_nor_annotate_it(
    quota_hub, git_server
):
    """Image labels under ``repo2docker-service.`` are the service's record of an image; the
    repository's Dockerfile may carry LABEL lines of its own. A ``--label`` of the service's
    overrides a LABEL line with its key, but ``options`` was set only for builds with options
    and annotations only for the keys a request sent. So a Dockerfile saying
    ``LABEL repo2docker-service.options=...`` made its image's name disagree with its labels: the
    image vanished from the index, hence from the owner's image quota (and pruning, and the
    API's deletes): a user could fill the engine's disk past max_images_per_owner. And
    ``LABEL repo2docker-service.annotation.tljh.mem_limit=64G`` became an annotation nobody
    sent, which spawner hooks read."""
    import uuid

    from tests.harness.images import BUSYBOX_IMAGE
    from tests.service_support import wait_build

    name = f"rt-labels-{uuid.uuid4().hex[:8]}"
    labels = (
        'repo2docker-service.options="{\\"subdir\\": \\"x\\"}" '
        "repo2docker-service.annotation.tljh.mem_limit=64G"
    )
    git_server.add_repo(
        name, {"Dockerfile": f"FROM {BUSYBOX_IMAGE}\nLABEL {labels}\nRUN echo r2d-labels\n"}
    )
    callers = Callers(quota_hub)
    bob = await callers.token("bob")
    # from an empty namespace: the engine is the session's, and other tests built bob's images
    admin = await callers.token("admin1")
    listed = await admin.request("GET", "api/images", params={"owner": "bob"})
    for image in listed.json()["images"]:
        d = await admin.request("DELETE", f"api/images/bob/{image['name']}")
        assert d.status_code == 200, d.text
    try:
        r = await bob.request("POST", "api/builds", json={"repo": git_server.url(name)})
        assert r.status_code == 202, r.text
        build = await wait_build(bob, r.json()["id"])
        assert build["state"] == "built", build
        r = await bob.request("GET", f"api/images/bob/{name}")
        assert r.status_code == 200, r.text
        assert r.json()["annotations"] == {} and r.json()["options"] == {}, r.json()
        # bob's one image counts: a second one is over his quota
        r = await bob.request("POST", "api/builds", json={"repo": git_server.url("hello")})
        assert r.status_code == 409 and r.json()["error"] == "quota_exceeded", r.text
    finally:
        # the engine is the session's: the other adapter's hub would count this image too
        await bob.request("DELETE", f"api/images/bob/{name}")
        await callers.aclose()
