"""A real JupyterHub 6 + configurable-http-proxy on loopback, with the service registered.

Used by the service tests and the demo. Users log in with DummyAuthenticator (one password for
all) and reach the service through the proxy with a real OAuth flow, or with real API tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def _children_of(parent: int) -> list[int]:
    """PIDs whose parent is ``parent`` (read from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, log_tail: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(
        f"{what} not ready after {timeout:g}s" + (f"\n{log_tail()}" if log_tail else "")
    )


__all__ = ["PASSWORD", "Hub", "HubConfig", "free_port", "login", "xsrf_headers"]

PASSWORD = "r2d-test-password"
SCOPES = {
    "read": "custom:repo2docker:read",
    "build": "custom:repo2docker:build",
    "delete": "custom:repo2docker:delete",
    "appendix": "custom:repo2docker:appendix",
}


@dataclass
class HubConfig:
    """What the Hub is started with."""

    service_name: str = "r2d"
    #: "managed" (the Hub starts the service), "external" (the caller starts it at service_port),
    #: or "tljh" (no service: the TLJH plugin's hook adds handlers inside the Hub)
    mode: str = "managed"
    service_port: int = 0
    #: environment and config-file text of the service process
    service_env: dict[str, str] = field(default_factory=dict)
    service_config: str = ""
    service_command: list[str] | None = None
    #: extra roles, groups and raw config lines
    roles: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_config: str = ""
    #: extra_handlers-style TLJH config (a Python snippet appended as is)
    singleuser_scopes: bool = False
    #: mode "tljh": TLJH's ``users.admin`` (applied before the hook, as TLJH's configurer does),
    #: whether the plugin's default roles stay on (the behaviour suite turns them off: its roles
    #: say who may do what), and the admin's jupyterhub_config.d files (name -> text), loaded
    #: after the hook in name order the way TLJH's jupyterhub_config.py loads them
    tljh_admins: list[str] = field(default_factory=list)
    tljh_default_roles: bool = False
    #: whether the test's own file sets R2DPlugin.path to service_name (off: an admin file does)
    tljh_set_path: bool = True
    config_d: dict[str, str] = field(default_factory=dict)


# How TLJH's jupyterhub_config.py calls plugins (tljh/jupyterhub_config.py, tljh/utils.py): a
# pluggy manager for project "tljh", hook specifications as tljh.hooks declares them, plugins found
# through the "tljh" entry-point group, the config hook called on ``c``; then every
# jupyterhub_config.d/*.py file, in sorted order, through load_subconfig (each file gets a fresh
# ``c`` that is merged in afterwards).
_TLJH_HOOK = """
import glob as _glob
import os as _os

import pluggy

c.Authenticator.admin_users = set({admins!r})  # TLJH's users.admin (tljh.configurer)

import types as _types

_hookspec = pluggy.HookspecMarker("tljh")

@_hookspec
def tljh_custom_jupyterhub_config(c):
    pass

@_hookspec
def tljh_extra_hub_pip_packages():
    pass

_hooks = _types.ModuleType("tljh.hooks")  # a module, as TLJH's own hookspecs are
_hooks.tljh_custom_jupyterhub_config = tljh_custom_jupyterhub_config
_hooks.tljh_extra_hub_pip_packages = tljh_extra_hub_pip_packages
_pm = pluggy.PluginManager("tljh")
_pm.add_hookspecs(_hooks)
_pm.load_setuptools_entrypoints("tljh")
assert _pm.get_plugins(), "the tljh entry point of repo2docker-service was not found"
_pm.hook.tljh_custom_jupyterhub_config(c=c)

for _ec in sorted(_glob.glob(_os.path.join({config_dir!r}, "jupyterhub_config.d", "*.py"))):
    load_subconfig(_ec)
"""

# The test's own settings for mode "tljh", as an admin would write them in jupyterhub_config.d
# (sorted first: an admin's files named after it have the last word).
_TLJH_HARNESS_FILE = """
# the service's own traits
{config}
{path}
{default_roles}
c.JupyterHub.load_roles.extend({roles!r})
c.JupyterHub.load_groups.update({groups!r})
"""


class Hub:
    """Start/stop a JupyterHub (and its proxy) by PID; ``url`` is the proxy's public URL."""

    def __init__(self, config: HubConfig, workdir: str | None = None) -> None:
        self.config = config
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="r2d-hub-"))
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = os.urandom(16).hex()
        self.service_token = os.urandom(16).hex()
        if config.service_port == 0:
            config.service_port = free_port()
        if config.mode == "tljh":
            self.service_url = f"{self.url}/hub/{config.service_name}/"
        else:
            self.service_url = f"{self.url}/services/{config.service_name}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "hub.log"

    # ---- config ---------------------------------------------------------------------------------
    def config_text(self) -> str:
        c = self.config
        name = c.service_name
        service: dict[str, Any] = {
            "name": name,
            "url": f"http://127.0.0.1:{c.service_port}",
            "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": list(SCOPES.values()),
            "api_token": self.service_token,
        }
        if c.mode == "managed":
            service_config_path = self.dir / "r2d_service_config.py"
            service_config_path.write_text(c.service_config)
            service["command"] = c.service_command or [sys.executable, "-m", "r2d_tornado.app"]
            service["environment"] = {
                "R2D_CONFIG_FILE": str(service_config_path),
                "PATH": os.environ.get("PATH", ""),
                **c.service_env,
            }
            service["cwd"] = str(self.dir)
        services = [
            service,
            {"name": "test-admin", "api_token": self.admin_token},
        ]
        if c.mode == "tljh":
            services = services[1:]
        roles = [
            {
                "name": "r2d-service-role",
                "services": [name],
                "scopes": ["read:groups", "list:groups", "read:users:groups"],
            },
            {
                "name": "test-admin-role",
                "services": ["test-admin"],
                "scopes": ["admin:users", "admin:groups", "tokens", "list:users", "read:users"],
            },
            *c.roles,
        ]
        tljh = c.mode == "tljh"
        if tljh:
            # no service process: nothing to resolve groups for; the suite's roles, groups and
            # scopes come from jupyterhub_config.d and the plugin, as on a TLJH install
            roles = roles[1:2]
        return "\n".join(
            [
                "c = get_config()  # noqa",
                "c.JupyterHub.ip = '127.0.0.1'",
                f"c.JupyterHub.port = {self.port}",
                "c.JupyterHub.hub_ip = '127.0.0.1'",
                f"c.JupyterHub.hub_port = {self.hub_port}",
                f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{self.proxy_api_port}'",
                "c.ConfigurableHTTPProxy.should_start = True",
                f"c.JupyterHub.db_url = 'sqlite:///{self.dir}/jupyterhub.sqlite'",
                f"c.JupyterHub.cookie_secret_file = '{self.dir}/cookie_secret'",
                f"c.ConfigurableHTTPProxy.pid_file = '{self.dir}/proxy.pid'",
                "c.JupyterHub.authenticator_class = 'dummy'",
                f"c.DummyAuthenticator.password = {PASSWORD!r}",
                "c.Authenticator.allow_all = True",
                "c.JupyterHub.redirect_to_server = False",
                "c.JupyterHub.cleanup_servers = True",
                ""
                if tljh
                else "c.JupyterHub.custom_scopes = "
                + repr(
                    {
                        SCOPES["read"]: {"description": "See repo2docker images and builds"},
                        SCOPES["build"]: {
                            "description": "Build images",
                            "subscopes": [SCOPES["read"]],
                        },
                        SCOPES["delete"]: {
                            "description": "Delete images",
                            "subscopes": [SCOPES["read"]],
                        },
                        SCOPES["appendix"]: {"description": "Send a build appendix"},
                    }
                ),
                f"c.JupyterHub.services = {services!r}",
                f"c.JupyterHub.load_roles = {roles!r}",
                "" if tljh else f"c.JupyterHub.load_groups = {c.groups!r}",
                _TLJH_HOOK.format(admins=sorted(c.tljh_admins), config_dir=str(self.dir))
                if tljh
                else "",
                c.extra_config,
            ]
        )

    # ---- lifecycle ------------------------------------------------------------------------------
    def tljh_config_d(self) -> dict[str, str]:
        """The jupyterhub_config.d files of mode "tljh": the test's settings, then the admin's."""
        c = self.config
        harness = _TLJH_HARNESS_FILE.format(
            config=c.service_config,
            path=f"c.R2DPlugin.path = {c.service_name!r}" if c.tljh_set_path else "",
            default_roles=""
            if c.tljh_default_roles
            else "c.R2DPlugin.add_default_roles = False  # the suite's roles say who does what",
            roles=c.roles,
            groups=c.groups,
        )
        return {"00-harness.py": harness, **c.config_d}

    def start(self, timeout: float = 60.0) -> Hub:
        (self.dir / "jupyterhub_config.py").write_text(self.config_text())
        if self.config.mode == "tljh":
            config_d = self.dir / "jupyterhub_config.d"
            shutil.rmtree(config_d, ignore_errors=True)
            config_d.mkdir()
            for file_name, text in self.tljh_config_d().items():
                (config_d / file_name).write_text(text)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.pop("JUPYTERHUB_API_TOKEN", None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.dir / "jupyterhub_config.py")],
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for(self._hub_up, timeout, "JupyterHub /hub/health", self.log_tail)
        except Exception:
            self.stop()
            raise
        return self

    def _hub_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"JupyterHub exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/hub/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_service(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            self._hub_up()
            try:
                r = httpx.get(f"{self.service_url}health", timeout=2)
            except httpx.HTTPError:
                return False
            # 503 from the service itself (engine down) counts as up; the proxy's own 503 does not
            return r.status_code == 200 or (r.status_code == 503 and "docker" in r.text)

        wait_for(up, timeout, f"service at {self.service_url}", self.log_tail)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGINT then SIGTERM (as the Hub itself stops services), by PID; the proxy goes too."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # managed services run in sessions of their own: remember them, in case the Hub dies
        # without stopping them
        children = _children_of(proc.pid)
        for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # the proxy is started in its own process group by the Hub: stop it by its pid file
        pid_file = self.dir / "proxy.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (ValueError, ProcessLookupError, PermissionError):
                pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- API ------------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.admin_token}"}
        return httpx.request(
            method, f"{self.url}/hub/api/{path.lstrip('/')}", headers=headers, timeout=10, **kwargs
        )

    def token_for(self, user: str, scopes: list[str] | None = None) -> str:
        body: dict[str, Any] = {"note": "r2d test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        r = self.api("POST", f"users/{user}/tokens", content=json.dumps(body))
        r.raise_for_status()
        return r.json()["token"]

    def set_groups(self, group: str, users: list[str]) -> None:
        r = self.api("GET", f"groups/{group}")
        current = r.json().get("users", []) if r.status_code == 200 else []
        if r.status_code == 404:
            self.api("POST", f"groups/{group}").raise_for_status()
        if current:
            self.api("DELETE", f"groups/{group}/users", content=json.dumps({"users": current}))
        if users:
            self.api(
                "POST", f"groups/{group}/users", content=json.dumps({"users": users})
            ).raise_for_status()


async def login(hub: Hub, user: str, password: str = PASSWORD) -> httpx.AsyncClient:
    """An httpx client logged in as ``user`` to the Hub *and* the service (real OAuth flow).

    Writes need ``X-XSRFToken``: use :func:`xsrf_headers`.
    """
    client = httpx.AsyncClient(base_url=hub.url, follow_redirects=True, timeout=30)
    r = await client.get("/hub/login")
    r.raise_for_status()
    xsrf = client.cookies.get("_xsrf", path="/hub/") or client.cookies.get("_xsrf")
    r = await client.post(
        "/hub/login",
        data={"username": user, "password": password, "_xsrf": xsrf or ""},
    )
    r.raise_for_status()
    r = await client.get(hub.service_url)
    if r.status_code not in (200, 503) or not str(r.url).startswith(hub.service_url):
        raise RuntimeError(
            f"OAuth login of {user} to the service failed: {r.status_code} {r.text[:300]}"
        )
    return client


def xsrf_headers(client: httpx.AsyncClient, hub: Hub) -> dict[str, str]:
    path = "/hub/" if hub.config.mode == "tljh" else f"/services/{hub.config.service_name}/"
    for cookie in client.cookies.jar:
        if cookie.name == "_xsrf" and cookie.path.rstrip("/") == path.rstrip("/"):
            return {"X-XSRFToken": cookie.value}
    raise RuntimeError("no _xsrf cookie for the service; did the page load?")
