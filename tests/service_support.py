"""Shared set-up of the service tests: a real Hub with the service, users, roles, groups.

Used by both adapters' behaviour suites (the standalone service and the TLJH plugin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from r2d_core import aio
from tests.harness import REPO2DOCKER_IMAGE, repo2docker_config
from tests.harness.hub import Hub, HubConfig, login, xsrf_headers

SERVICE = "r2d"
ACCESS = f"access:services!service={SERVICE}"
READ, BUILD, DELETE, APPENDIX = (
    f"custom:repo2docker:{a}" for a in ("read", "build", "delete", "appendix")
)

#: who is who in the authorization matrix
ROLES: list[dict[str, Any]] = [
    # own namespace: build and delete (build implies read)
    {
        "name": "r2d-own",
        "users": ["alice", "bob", "frank"],
        "scopes": [ACCESS, f"{BUILD}!user", f"{DELETE}!user"],
    },
    # read everything, change nothing
    {"name": "r2d-viewer", "users": ["carol"], "scopes": [ACCESS, READ]},
    # everything everywhere
    # (and the metrics, with JupyterHub's own scope for them)
    # (and the metrics, with JupyterHub's own scope for them; and build appendices)
    {
        "name": "r2d-admin",
        "users": ["admin1"],
        "scopes": [ACCESS, BUILD, DELETE, "read:metrics", APPENDIX],
    },
    # build for the members of group "team" (frank)
    {"name": "r2d-team-builder", "users": ["erin"], "scopes": [ACCESS, f"{BUILD}!group=team"]},
    # may open the service, holds no repo2docker scope
    {"name": "r2d-access-only", "users": ["gina"], "scopes": [ACCESS]},
    # dave exists but may not even access the service
    {"name": "r2d-nothing", "users": ["dave"], "scopes": ["self"]},
]
GROUPS = {"team": {"users": ["frank"]}}
LOOPBACK_GIT = [r"^git://127\.0\.0\.1:\d+/"]
#: every test server listens on loopback, which the network policy refuses by default
LOOPBACK_NETWORKS = ["127.0.0.0/8"]
USERS = ["alice", "bob", "carol", "admin1", "erin", "frank", "gina", "dave"]


def service_config(git_patterns: list[str] | None = None, builder: str = "local") -> str:
    return "\n".join(
        [
            f"c.BuildManager.allowed_repo_patterns = {git_patterns or LOOPBACK_GIT!r}",
            f"c.BuildManager.allowed_networks = {LOOPBACK_NETWORKS!r}",
            f"c.Builder.repo2docker_config = {repo2docker_config(network='none')!r}",
            f"c.DockerBuilder.image = {REPO2DOCKER_IMAGE!r}",
            "c.DockerBuilder.network_mode = 'host'",
            f"c.BuildManager.builder_class = {'r2d_core.builders.DockerBuilder' if builder == 'docker' else 'r2d_core.builders.LocalProcessBuilder'!r}",
            "c.BuildManager.max_concurrent_builds = 4",
            "c.BuildManager.max_builds_per_owner = 2",
            "c.BuildOptions.allowed = ['subdir', 'build_args', 'user_id', 'appendix']",
            "c.R2DService.permissions_ttl = 2",
            "c.R2DService.keepalive_interval = 1",
        ]
    )


def tljh_service_config(docker_host: str, git_patterns: list[str] | None = None) -> str:
    """The same settings for the plugin: it reads them from the Hub's own config."""
    return (
        f"c.DockerEngine.host = {docker_host!r}\n"
        + service_config(git_patterns)
        + "\nc.R2DPlugin.keepalive_interval = 1"
    )


def adapter_hub(docker_host: str, adapter: str, git_patterns: list[str] | None = None) -> Hub:
    """A Hub (not started) for ``adapter``: "service" (the standalone service, managed by the Hub)
    or "tljh" (the TLJH plugin inside the Hub)."""
    if adapter == "tljh":
        hub = make_hub(docker_host, mode="tljh", service_name="repo2docker")
        hub.config.service_config = tljh_service_config(docker_host, git_patterns)
        return hub
    return make_hub(docker_host, service_config=service_config(git_patterns))


@contextlib.contextmanager
def running(hub: Hub) -> Iterator[Hub]:
    """Start ``hub`` and wait for the service; fail the test clearly if it does not come up;
    stop and remove everything afterwards."""
    import pytest

    try:
        hub.start()
        hub.wait_for_service()
    except Exception as e:
        hub.cleanup()
        pytest.fail(f"JupyterHub with the service did not start: {e}")
    try:
        yield hub
    finally:
        hub.cleanup()


def make_hub(docker_host: str, **overrides: Any) -> Hub:
    config = HubConfig(
        service_name=SERVICE,
        service_env={"DOCKER_HOST": docker_host},
        service_config=service_config(),
        roles=ROLES,
        groups=GROUPS,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return Hub(config)


@dataclass
class Caller:
    """One way of calling the API: a logged-in browser session, a token, or nobody."""

    name: str
    client: httpx.AsyncClient
    headers: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)


class Callers:
    """Lazily logged-in browser sessions and tokens for every user of :data:`USERS`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._cookie: dict[str, Caller] = {}
        self._token: dict[str, Caller] = {}
        self._lock = asyncio.Lock()

    async def cookie(self, user: str) -> Caller:
        async with self._lock:
            if user not in self._cookie:
                client = await login(self.hub, user)
                client.base_url = httpx.URL(self.hub.service_url)
                self._cookie[user] = Caller(user, client, xsrf_headers(client, self.hub))
            return self._cookie[user]

    async def token(self, user: str) -> Caller:
        async with self._lock:
            if user not in self._token:
                token = await asyncio.to_thread(self.hub.token_for, user)
                client = httpx.AsyncClient(base_url=self.hub.service_url, timeout=30)
                self._token[user] = Caller(user, client, {"Authorization": f"token {token}"})
            return self._token[user]

    def anonymous(self) -> Caller:
        return Caller("anonymous", httpx.AsyncClient(base_url=self.hub.service_url, timeout=30))

    async def aclose(self) -> None:
        for caller in [*self._cookie.values(), *self._token.values()]:
            await caller.client.aclose()


async def wait_build(caller: Caller, build_id: str, timeout: float = 120) -> dict[str, Any]:
    """Follow the event stream to its ``done`` event and return the final build."""
    async with aio.timeout(timeout):
        while True:
            async with caller.client.stream(
                "GET", f"api/builds/{build_id}/logs", headers=caller.headers, timeout=timeout
            ) as response:
                assert response.status_code == 200, await response.aread()
                event = None
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "done":
                        return json.loads(line[6:])


TLJH_TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "tljh.md"
TLJH_CONFIG_D = "/opt/tljh/config/jupyterhub_config.d/"


def tljh_recipes() -> dict[str, str]:
    """The TLJH tutorial's recipes, exactly as written: every fenced ``python`` block whose first
    line is ``# /opt/tljh/config/jupyterhub_config.d/<file>``, by file name."""
    text = TLJH_TUTORIAL.read_text()
    recipes = {}
    for block in re.findall(r"^```python\n(.*?)^```", text, re.M | re.S):
        first = block.split("\n", 1)[0]
        if first.startswith(f"# {TLJH_CONFIG_D}"):
            recipes[first[len(f"# {TLJH_CONFIG_D}") :].strip()] = block
    return recipes


#: the recipes the behaviour suite runs through (adapter "tljh-recipes"), and who is in the groups
#: they grant to (set with load_groups, as the tutorial allows)
SUITE_RECIPES = (
    "repo2docker-path.py",
    "repo2docker-roles.py",
    "repo2docker-viewers.py",
    "repo2docker-admins.py",
)
RECIPE_GROUPS = {
    "repo2docker-viewers": {"users": ["carol"]},
    "repo2docker-admins": {"users": ["admin1"]},
}


def suite_hub(docker_host: str, adapter: str) -> Hub:
    """A Hub for the behaviour suite: :func:`adapter_hub`'s, or "tljh-recipes": the TLJH plugin
    configured by the TLJH tutorial's recipes as written (path /hub/images/, default roles off,
    carol in the read-only group, admin1 in the admin group) instead of the suite's own viewer and
    admin roles."""
    if adapter != "tljh-recipes":
        return adapter_hub(docker_host, adapter)
    recipes = tljh_recipes()
    hub = make_hub(
        docker_host,
        mode="tljh",
        service_name="images",  # where the path recipe puts it (the URLs the tests use)
        tljh_set_path=False,
        tljh_default_roles=True,  # turned off by the recipe, not by the test's own file
        roles=[
            *(r for r in ROLES if r["name"] not in ("r2d-viewer", "r2d-admin")),
            # admin1's Hub scopes other than repo2docker's (the recipes grant only those)
            {"name": "r2d-admin-hub", "users": ["admin1"], "scopes": ["read:metrics"]},
        ],
        groups={**GROUPS, **RECIPE_GROUPS},
        config_d={name: recipes[name] for name in SUITE_RECIPES},
    )
    hub.config.service_config = tljh_service_config(docker_host)
    return hub
