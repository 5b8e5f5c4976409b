"""Issue 9 through the real service, both adapters: hostile repository URLs answer a clean 400,
redirects are not followed, and (TLJH) the Hub keeps answering while attacker servers are read.

The allow-list here is what an admin of a default install has (https to any host name) plus the
loopback test servers, so the URL grammar and the network policy - not a narrow test allow-list -
are what refuses."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from r2d_core.validation import DEFAULT_ALLOWED_REPO_PATTERNS
from tests.harness.hostile import CountingHTTPServer, HostileGitServer, HostileHTTPServer
from tests.service_support import LOOPBACK_GIT, Callers, adapter_hub, running

pytestmark = [pytest.mark.docker, pytest.mark.hub]

PATTERNS = [*LOOPBACK_GIT, r"^http://127\.0\.0\.1:\d+/", *DEFAULT_ALLOWED_REPO_PATTERNS]
#: issue 9, defect 1: gitconfig injection through the userinfo of an https URL
INJECTION = 'https://[v1.a"][core]fsmonitor=touch${IFS}PWNED;@github.com/attacker/repo.git'
REF_TIMEOUT = 3


def _hub(docker_host: str, adapter: str):
    hub = adapter_hub(docker_host, adapter, PATTERNS)
    hub.config.service_config += f"\nc.BuildManager.ref_timeout = {REF_TIMEOUT}"
    return hub


@pytest.fixture(scope="module", params=["service", "tljh"])
def url_hub(request, docker_host, local_images):
    with running(_hub(docker_host, request.param)) as hub:
        yield hub


@pytest.fixture(scope="module")
async def alice(url_hub):
    callers = Callers(url_hub)
    yield await callers.token("alice")
    await callers.aclose()


@pytest.mark.parametrize(
    "body",
    [
        {"repo": INJECTION, "ref": "a" * 40, "credentials": {"password": "x"}},
        {"repo": INJECTION, "ref": "main"},
        {"repo": "https://[x]/"},
        {"repo": "https://[x]/", "ref": "a" * 40},
        {"repo": "https://[v1.x]/r", "ref": "a" * 40},
        {"repo": "https://[::1::2]/r", "ref": "a" * 40},
        {"repo": "https://user@github.com/org/repo", "ref": "a" * 40},
        {"repo": "https://github.com/org/%0a[core]/repo", "ref": "a" * 40},
        {"repo": "https://github.com/org/../../repo", "ref": "a" * 40},
        {"repo": "https://169.254.169.254/latest/meta-data/", "ref": "a" * 40},
        {"repo": "https://0251.0376.0251.0376/r", "ref": "a" * 40},  # 169.254.169.254 in octal
        {"repo": "git@github.com:org/repo.git", "ref": "a" * 40},
    ],
)
async def test_hostile_urls_answer_400(alice, body):
    r = await alice.request("POST", "api/builds", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "repo", r.json()


async def test_canonical_url_everywhere_after_validation(alice, git_server):
    """The build, its labels and the image list carry the canonical URL, not what was sent."""
    sent = git_server.url("hello").replace("git://", "GIT://").replace("/hello", "//hello/")
    r = await alice.request(
        "POST", "api/builds", json={"repo": sent, "ref": "v1", "name": "canon", "force": True}
    )
    assert r.status_code == 202, r.text
    build = r.json()
    assert build["repo"] == git_server.url("hello")
    assert (await alice.request("DELETE", f"api/builds/{build['id']}")).status_code == 200


async def test_redirect_through_the_api_is_refused_and_not_followed(alice):
    # the target listens on 127.0.0.2: loopback, but not in the allow-list (^http://127\.0\.0\.1)
    with (
        CountingHTTPServer(host="127.0.0.2") as other,
        HostileHTTPServer("redirect", target=f"http://127.0.0.2:{other.port}") as redirecting,
    ):
        r = await alice.request("POST", "api/builds", json={"repo": redirecting.url("repo")})
        assert r.status_code == 400, r.text
        assert "not followed" in r.json()["message"]
        assert f"http://127.0.0.2:{other.port}/repo" in r.json()["message"]
        assert redirecting.requests and other.requests == []
        # and submitting the target itself is refused by the allow-list, before any request
        r = await alice.request("POST", "api/builds", json={"repo": other.url("repo")})
        assert r.status_code == 400 and "not allowed here" in r.json()["message"], r.text
        assert other.requests == []


async def test_attacker_servers_through_the_api(alice):
    with HostileHTTPServer("flood") as flood, HostileHTTPServer("drip", interval=0.1) as drip:
        r = await alice.request("POST", "api/builds", json={"repo": flood.url("repo")})
        assert r.status_code == 400 and "advertisement" in r.json()["message"], r.text
        start = time.monotonic()
        r = await alice.request("POST", "api/builds", json={"repo": drip.url("repo")})
        assert r.status_code == 504 and r.json()["error"] == "ref_timeout", r.text
        assert time.monotonic() - start < REF_TIMEOUT + 3


async def test_hub_answers_while_attacker_servers_are_read(docker_host, local_images):
    """In TLJH the service shares the Hub's event loop: /hub/api must keep answering while the
    plugin reads a 0004 flood and slow drips (issue 9, defect 3)."""
    with (
        running(_hub(docker_host, "tljh")) as hub,
        HostileHTTPServer("flood") as flood,
        HostileGitServer("flood") as git_flood,
        HostileHTTPServer("drip", interval=0.05) as drip,
    ):
        token = await asyncio.to_thread(hub.token_for, "alice")
        headers = {"Authorization": f"token {token}"}
        async with httpx.AsyncClient(base_url=hub.url, headers=headers, timeout=30) as client:

            async def latencies(seconds: float) -> list[float]:
                samples = []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    r = await client.get("/hub/api/")
                    samples.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    await asyncio.sleep(0.02)
                return samples

            async def attack(url: str, rounds: int) -> list[int]:
                statuses = []
                for _ in range(rounds):
                    r = await client.post(hub.service_url + "api/builds", json={"repo": url})
                    statuses.append(r.status_code)
                return statuses

            idle = await latencies(1.0)
            busy, *statuses = await asyncio.gather(
                latencies(REF_TIMEOUT + 1.5),
                attack(flood.url("repo"), 4),
                attack(git_flood.url("repo"), 4),
                attack(drip.url("repo"), 1),
            )
        assert statuses == [[400] * 4, [400] * 4, [504]], statuses
        assert max(busy) < 1.0, (statistics.median(idle), max(busy))
