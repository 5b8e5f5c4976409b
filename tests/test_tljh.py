"""TLJH-specific behaviour: plugin discovery as TLJH does it, and a Hub that stays responsive."""

from __future__ import annotations

import asyncio
import statistics
import time
import types

import httpx
import pluggy
import pytest
from traitlets.config import Config

from tests.service_support import make_hub, tljh_service_config, wait_build


def _plugin_manager() -> pluggy.PluginManager:
    """As TLJH's tljh.utils.get_plugin_manager: hookspecs from a module (tljh.hooks)."""
    hookspec = pluggy.HookspecMarker("tljh")

    @hookspec
    def tljh_custom_jupyterhub_config(c):  # type: ignore[no-untyped-def]
        pass

    @hookspec
    def tljh_extra_hub_pip_packages():  # type: ignore[no-untyped-def]
        pass

    hooks = types.ModuleType("tljh.hooks")
    hooks.tljh_custom_jupyterhub_config = tljh_custom_jupyterhub_config  # type: ignore[attr-defined]
    hooks.tljh_extra_hub_pip_packages = tljh_extra_hub_pip_packages  # type: ignore[attr-defined]
    pm = pluggy.PluginManager("tljh")
    pm.add_hookspecs(hooks)
    pm.load_setuptools_entrypoints("tljh")
    return pm


def test_entry_point_hooks_configure_the_hub():
    pm = _plugin_manager()
    assert any(getattr(p, "__name__", "").startswith("r2d_tljh") for p in pm.get_plugins())
    assert ["repo2docker-service"] in pm.hook.tljh_extra_hub_pip_packages()
    c = Config()
    c.Authenticator.admin_users = {"root-admin"}
    c.JupyterHub.load_roles = [{"name": "custom", "scopes": ["self"]}]
    pm.hook.tljh_custom_jupyterhub_config(c=c)
    patterns = [h[0] for h in c.JupyterHub.extra_handlers]
    assert r"/repo2docker/api/builds/([0-9a-f]+)/logs/?$" in patterns
    assert set(c.JupyterHub.custom_scopes) == {
        "custom:repo2docker:read",
        "custom:repo2docker:build",
        "custom:repo2docker:delete",
        # build options: Dockerfile text appended to a build needs a scope of its own
        "custom:repo2docker:appendix",
    }
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["custom"]["scopes"] == ["self"]  # the admin's own roles stay
    assert roles["repo2docker-admin"]["users"] == ["root-admin"]
    # every user's own namespace: added to JupyterHub's default user role, no role redefined
    assert "user" not in roles
    assert "custom:repo2docker:build!user" in c.JupyterHub.extra_user_scopes


def test_admin_roles_are_extended_not_replaced():
    """Without a Hub loading (``configure`` on a bare Config): applied at once, same merge."""
    c = Config()
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self"]}]
    c.R2DPlugin.path = "images"
    _plugin_manager().hook.tljh_custom_jupyterhub_config(c=c)
    roles = [r for r in c.JupyterHub.load_roles if r["name"] == "user"]
    assert roles == [
        {
            "name": "user",
            "scopes": ["self", "custom:repo2docker:build!user", "custom:repo2docker:delete!user"],
        }
    ]
    assert any(p.startswith("/images/") for p, *_ in c.JupyterHub.extra_handlers)


@pytest.mark.docker
@pytest.mark.hub
async def test_hub_stays_responsive_during_builds(docker_host, local_images, git_server):
    """Builds run in the Hub's event loop: other Hub requests must not stall meanwhile."""
    hub = make_hub(docker_host, mode="tljh", service_name="repo2docker")
    hub.config.service_config = tljh_service_config(docker_host)
    hub.start()
    try:
        token = hub.token_for("alice")
        headers = {"Authorization": f"token {token}"}
        async with httpx.AsyncClient(base_url=hub.url, headers=headers, timeout=30) as client:

            async def hub_latencies(seconds: float) -> list[float]:
                samples = []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    r = await client.get("/hub/api/")
                    samples.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    await asyncio.sleep(0.02)
                return samples

            idle = await hub_latencies(1.0)
            r = await client.post(
                hub.service_url + "api/builds",
                json={
                    "repo": git_server.url("hello"),
                    "ref": "main",
                    "name": f"resp{int(time.time())}",
                },
            )
            assert r.status_code == 202, r.text
            build_id = r.json()["id"]

            class TokenCaller:
                def __init__(self) -> None:
                    self.client = httpx.AsyncClient(base_url=hub.service_url, timeout=60)
                    self.headers = headers

            follower = TokenCaller()
            busy, done = await asyncio.gather(hub_latencies(3.0), wait_build(follower, build_id))
            await follower.client.aclose()
        assert done["state"] == "built"
        # no request stalls behind the build: worst case stays far from a blocked loop (seconds)
        assert max(busy) < 0.5, (statistics.median(idle), max(busy))
        assert statistics.median(busy) < statistics.median(idle) * 5 + 0.05
    finally:
        hub.cleanup()
