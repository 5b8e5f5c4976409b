"""The HTTP layer's defences, through a real JupyterHub 6 + proxy, for both adapters.

* request validation from the OpenAPI document's schemas: limits, unknown fields, no 500;
* schemathesis against the running service: no 5xx, every answer as the document says;
* XSRF on cookie-authenticated scripted reads;
* request logs without secrets;
* single-user servers' tokens never act beyond their owner's namespace (a real spawn, a real
  OAuth flow through the server's client).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from r2d_tornado.hubconfig import hub_config_snippet
from tests.harness.hub import Hub, login, xsrf_headers
from tests.service_support import (
    ACCESS,
    BUILD,
    DELETE,
    READ,
    ROLES,
    Caller,
    adapter_hub,
    running,
    wait_build,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub]

# "fuzz" drives schemathesis: reads everything, builds and deletes only in its own namespace
# (where nothing exists), and the allow-list refuses every repository it can invent
FUZZ_ROLE = {
    "name": "r2d-fuzz",
    "users": ["fuzz"],
    "scopes": [ACCESS, READ, f"{BUILD}!user", f"{DELETE}!user", "read:metrics"],
}
# admin1 (build everywhere) may also open other users' servers: the case of defect 4
VISITOR_ROLE = {"name": "r2d-server-visitor", "users": ["admin1"], "scopes": ["access:servers"]}

# A spawner that runs nothing: it records the token and OAuth client the Hub made for the server
# and points the proxy at the Hub itself (any HTTP answer counts as "up").
_SPAWNER = """
import json as _json
from jupyterhub.spawner import Spawner as _Spawner


class RecordingSpawner(_Spawner):
    _running = False

    async def start(self):
        with open({record!r} + f"/server-{{self.user.name}}.json", "w") as f:
            _json.dump({{"api_token": self.api_token, "client_id": self.oauth_client_id}}, f)
        self._running = True
        return ("127.0.0.1", {hub_port})

    async def poll(self):
        return None if self._running else 0

    async def stop(self):
        self._running = False


c.JupyterHub.spawner_class = RecordingSpawner
{spawner_scopes}
"""


class _Section(dict):
    def __getattr__(self, key: str) -> Any:
        return self.setdefault(key, _Section())

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def _singleuser_scopes(service_name: str) -> str:
    """The Spawner lines of ``generate-hub-config --singleuser``, exactly as printed."""
    c = _Section()
    exec(hub_config_snippet(name=service_name, singleuser=True), {"c": c})
    return "\n".join(f"c.Spawner.{key} = {value!r}" for key, value in c.Spawner.items())


@pytest.fixture(scope="module", params=["service", "tljh"])
def shub(request, docker_host, local_images, git_server):
    hub = adapter_hub(docker_host, request.param)
    hub.config.roles = [*ROLES, FUZZ_ROLE, VISITOR_ROLE]
    hub.config.extra_config = _SPAWNER.format(
        record=str(hub.dir),
        hub_port=hub.hub_port,
        spawner_scopes=_singleuser_scopes(hub.config.service_name),
    )
    with running(hub) as hub:
        yield hub


async def _token_client(hub: Hub, user: str) -> httpx.AsyncClient:
    token = await asyncio.to_thread(hub.token_for, user)
    return httpx.AsyncClient(
        base_url=hub.service_url, headers={"Authorization": f"token {token}"}, timeout=60
    )


# --- request validation ------------------------------------------------------------------------
async def test_bodies_and_queries_answer_4xx_never_500(shub, git_server):
    """Each of these answered 500 or was accepted before the schema (defect 10)."""
    async with await _token_client(shub, "alice") as alice:
        repo = git_server.url("hello")
        cases = [
            # (content, expected status, field)
            (json.dumps({"repo": repo, "owner": []}), 400, "owner"),  # was: the caller
            (json.dumps({"repo": repo, "surprise": True}), 400, "surprise"),  # was: ignored
            (b"[" * 30_000 + b"]" * 30_000, 400, None),  # depth: was RecursionError, 500
            (b"[" * 100_000 + b"]" * 100_000, 413, None),
            (json.dumps({"repo": repo, "pad": "x" * 5_000_000}), 413, None),  # was: accepted
            (b"\xff\xfe", 400, None),
            (b"", 400, None),
        ]
        for content, status, field in cases:
            r = await alice.post(
                "api/builds", content=content, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == status, (content[:40], r.status_code, r.text[:300])
            body = r.json()
            assert body["error"] and body["message"]
            if field:
                assert body["field"] == field, body
        for path, field in [
            ("api/builds?state=bogus", "state"),
            ("api/builds?owner=", "owner"),
            ("api/images?owner=a&owner=b", "owner"),
            ("api/builds/0123456789ab/logs?since=-1", "since"),
        ]:
            r = await alice.get(path)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["field"] == field


# HTTP servers accept headers they do not know (proxies add them): an unknown header next to the
# documented Last-Event-ID is no invalid request. Unknown body fields and query values stay
# negative cases everywhere.
# The BinderHub-compatible endpoint is not part of the JSON API: it speaks BinderHub's wire
# format, which answers every error (401 included) as a `failed` event in a 200 (an EventSource
# cannot read an error body), so ignored_auth and the event checks do not apply. It is tested
# with hostile input in tests/test_binder.py and tests/test_redteam_service.py.
_SCHEMATHESIS_CONFIG = """
[[operations]]
include-path-regex = "/logs$"
generation = { allow-extra-parameters = false }

[[operations]]
include-path-regex = "^/build/"
enabled = false
"""


def _schemathesis(
    hub: Hub, token: str, tmp_path: Path, config: str = ""
) -> subprocess.CompletedProcess[str]:
    doc = httpx.get(
        hub.service_url + "api/openapi.json", headers={"Authorization": f"token {token}"}
    )
    doc.raise_for_status()
    schema = tmp_path / "openapi.json"
    schema.write_text(doc.text)
    (tmp_path / "schemathesis.toml").write_text(_SCHEMATHESIS_CONFIG + config)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        str(schema),
        "--url",
        hub.service_url.rstrip("/"),
        "--header",
        f"Authorization: token {token}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,negative_data_rejection,ignored_auth,unsupported_method",
        # bounded: at most this many examples per operation (--max-time would repeat fuzzing
        # until the time is spent); the subprocess timeout bounds the whole run
        "--max-examples",
        "40",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "20",
        # one worker: the Hub and the service share 2 cores with the rest of the suite
        "--workers",
        "1",
        "--seed",
        "1",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)


async def test_schemathesis_finds_nothing(shub, tmp_path, git_server):
    """schemathesis against the real service through the Hub proxy: no 5xx answer, and every
    answer (status, content type, body) as the OpenAPI document describes it.

    Two runs: one with generated values everywhere (unknown ids, owners, names), one where the
    path parameters name a real image and build of the fuzz user's, so that the operations'
    own logic (image versions, finished build, its log stream, cancel, delete) is reached."""
    token = await asyncio.to_thread(shub.token_for, "fuzz")
    fuzz = Caller("fuzz", httpx.AsyncClient(base_url=shub.service_url, timeout=60))
    fuzz.headers["Authorization"] = f"token {token}"
    r = await fuzz.request(
        "POST",
        "api/builds",
        json={"repo": git_server.url("hello"), "ref": "v1", "name": "fuzzimg", "force": True},
    )
    assert r.status_code == 202, r.text
    build = await wait_build(fuzz, r.json()["id"])
    await fuzz.client.aclose()
    assert build["state"] == "built", build
    real_data = f"""
[[operations]]
include-path-regex = "^/api/images/"
parameters = {{ owner = "fuzz", name = "fuzzimg" }}

[[operations]]
include-path-regex = "^/api/builds/"
parameters = {{ build_id = "{build["id"]}" }}
"""
    for config in ("", real_data):
        result = await asyncio.to_thread(_schemathesis, shub, token, tmp_path, config)
        assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
        summary = result.stdout[result.stdout.rfind("SUMMARY") :]
        assert "Tested: 11" in summary and " passed" in summary, result.stdout[-3000:]


# --- XSRF on reads -------------------------------------------------------------------------------
CROSS_SITE = {
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "cross-site",
    "Origin": "https://evil.test",
}


async def test_cookie_reads_from_scripts_need_the_xsrf_token(shub):
    """A page on another site cannot read the API with the user's cookie (defect 7: the TLJH
    plugin answered 200); with the token (the UI's fetch, or ?_xsrf= for EventSource) it can."""
    client = await login(shub, "alice")
    try:
        client.base_url = httpx.URL(shub.service_url)
        token = xsrf_headers(client, shub)["X-XSRFToken"]
        r = await client.get("api/builds", headers=CROSS_SITE)
        assert r.status_code == 403, r.text
        assert "xsrf" in r.text.lower() and r.headers["content-type"].startswith("application/json")
        r = await client.get("api/builds", headers={**CROSS_SITE, "X-XSRFToken": token})
        assert r.status_code == 200, r.text
        r = await client.get("api/builds", params={"_xsrf": token}, headers=CROSS_SITE)
        assert r.status_code == 200, r.text
        # same-origin scripts need it too; navigations (the page itself) do not
        same_origin = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
        assert (await client.get("api/", headers=same_origin)).status_code == 403
        page = await client.get("", headers={"Sec-Fetch-Mode": "navigate"})
        assert page.status_code == 200 and "<html" in page.text.lower()
        # an API token is no ambient credential: no XSRF token needed with one
        api_token = await asyncio.to_thread(shub.token_for, "alice")
        r = await client.get(
            "api/builds", headers={**CROSS_SITE, "Authorization": f"token {api_token}"}
        )
        assert r.status_code == 200, r.text
    finally:
        await client.aclose()


# --- request logs ---------------------------------------------------------------------------------
async def test_request_log_has_no_secrets(shub):
    """Query strings carrying secrets never reach the log (defect 8): the OAuth callback's code and
    state, the EventSource's _xsrf, a token parameter."""
    secrets = ["SECRETCODE1", "SECRETSTATE2", "SECRETXSRF3", "SECRETTOKEN4"]
    async with httpx.AsyncClient(base_url=shub.service_url, timeout=30) as client:
        await client.get(f"oauth_callback?code={secrets[0]}&state={secrets[1]}")
        await client.get(f"api/builds?_xsrf={secrets[2]}&token={secrets[3]}")
        await client.get("api/builds?owner=marker-r2d-log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the service's own log lands in the Hub's
        log = shub.log_path.read_text(errors="replace")
        if "marker-r2d-log" in log:
            break
        await asyncio.sleep(0.2)
    assert "marker-r2d-log" in log, shub.log_tail()
    assert "[secret]" in log
    # every line about a request (the access log, tornado's warnings naming the URI); JupyterHub's
    # HubOAuth also warns "oauth state argument 'X' != cookie", X being a state that matched
    # nothing, so no one's secret
    requests = [line for line in log.splitlines() if re.search(r"\b(GET|POST) /", line)]
    leaked = [line for line in requests if any(s in line for s in secrets)]
    assert not leaked, leaked


# --- single-user servers --------------------------------------------------------------------------
async def _spawn(hub: Hub, user: str) -> dict[str, str]:
    """Start ``user``'s server as ``user`` does (their own token); what the Hub gave it."""
    token = await asyncio.to_thread(hub.token_for, user)
    async with httpx.AsyncClient(
        base_url=f"{hub.url}/hub/api/", headers={"Authorization": f"token {token}"}, timeout=30
    ) as api:
        r = await api.post(f"users/{user}/server")
        assert r.status_code in (201, 202), r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            model = (await api.get(f"users/{user}")).json()
            if (model.get("servers") or {}).get("", {}).get("ready"):
                return json.loads((hub.dir / f"server-{user}.json").read_text())
            await asyncio.sleep(0.2)
    raise AssertionError(f"{user}'s server did not become ready:\n{hub.log_tail()}")


async def _stop(hub: Hub, user: str) -> None:
    token = await asyncio.to_thread(hub.token_for, user)
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}, timeout=30) as api:
        await api.delete(f"{hub.url}/hub/api/users/{user}/server")


async def _server_oauth_token(hub: Hub, visitor: str, owner: str, server: dict[str, str]) -> str:
    """The token ``owner``'s server receives when ``visitor`` logs in to it (the OAuth flow the
    single-user server runs: authorize as the visitor, then exchange the code with the server's
    client secret, its API token)."""
    client = await login(hub, visitor)
    redirect_uri = f"/user/{owner}/oauth_callback"
    params = {
        "client_id": server["client_id"],
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "state": "s",
    }
    try:
        r = await client.get("/hub/api/oauth2/authorize", params=params, follow_redirects=False)
        if r.status_code == 200:  # someone else's server: the visitor confirms on the Hub's page
            form = {
                "_xsrf": re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1),
                "scopes": re.findall(r'type="hidden" name="scopes" value="([^"]+)"', r.text),
            }
            r = await client.post(
                "/hub/api/oauth2/authorize", params=params, data=form, follow_redirects=False
            )
        assert r.status_code == 302, (r.status_code, r.text[:500])
        location = r.headers["location"]
        assert location.startswith(redirect_uri), location
        code = httpx.URL(location).params["code"]
        r = await client.post(
            "/hub/api/oauth2/token",
            data={
                "client_id": server["client_id"],
                "client_secret": server["api_token"],
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
            },
        )
        assert r.status_code == 200, r.text
        return r.json()["access_token"]
    finally:
        await client.aclose()


async def test_singleuser_tokens_stay_in_the_owners_namespace(shub, git_server):
    """generate-hub-config --singleuser (defect 4): admin1 (build everywhere) opening alice's
    server hands alice's server code a token that builds as alice and never as bob; alice's own
    server token neither."""
    server = await _spawn(shub, "alice")
    assert server["client_id"] == "jupyterhub-user-alice"
    try:
        visit = await _server_oauth_token(shub, "admin1", "alice", server)
        body = {"repo": git_server.url("hello"), "ref": "v1", "name": "srvimg"}
        for token in (visit, server["api_token"]):
            async with httpx.AsyncClient(
                base_url=shub.service_url, headers={"Authorization": f"token {token}"}, timeout=60
            ) as c:
                info = (await c.get("api/")).json()
                assert info["permissions"]["build"] == {
                    "all": False,
                    "owners": ["alice"],
                    "groups": [],
                }, info
                r = await c.post("api/builds", json={**body, "owner": "bob", "force": True})
                assert r.status_code == 403, r.text
                r = await c.post("api/builds", json={**body, "owner": "alice"})
                assert r.status_code in (200, 202), r.text
    finally:
        await _stop(shub, "alice")
