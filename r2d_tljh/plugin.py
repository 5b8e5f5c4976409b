"""The TLJH plugin: the service's API, event-stream logs and UI as ``JupyterHub.extra_handlers``.

TLJH discovers it through the ``tljh`` entry-point group (pluggy project ``tljh``) and calls
:func:`tljh_custom_jupyterhub_config` with the Hub's traitlets ``Config``. That adds, under
``/hub/<path>/`` (default ``/hub/repo2docker/``):

* the handlers of :mod:`r2d_tornado.handlers` — the same code the standalone service runs — on
  JupyterHub's own ``BaseHandler``: identity and scopes are the ones the Hub resolved for the
  request (cookie or API token), no OAuth round trip;
* the custom scopes, and default roles (admins: every namespace; users: their own) unless the
  admin defined roles named ``repo2docker-admin``/``repo2docker-user`` or set
  ``R2DPlugin.add_default_roles = False``.

The :class:`~r2d_core.manager.BuildManager` is created on first use, in the Hub's event loop, from
the Hub's final configuration (so ``jupyterhub_config.d`` files loaded after this hook apply), and
is never blocked on: Docker, git and registry calls are all async.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
from typing import Any

from jupyterhub.handlers import BaseHandler
from pluggy import HookimplMarker
from traitlets import Bool, Float, Unicode
from traitlets.config import Config, Configurable

from r2d_core.manager import BuildManager
from r2d_core.scopes import SCOPE_PREFIX, Authorizer
from r2d_tornado.handlers import ContextProvider, Identity, R2DContext, make_handlers

__all__ = ["R2DPlugin", "configure", "tljh_custom_jupyterhub_config", "tljh_extra_hub_pip_packages"]

hookimpl = HookimplMarker("tljh")


class R2DPlugin(Configurable):
    """Settings of the TLJH plugin (the build settings are the service's own traits)."""

    path = Unicode(
        "repo2docker",
        config=True,
        help="Path of the UI and API under the Hub prefix (default 'repo2docker': /hub/repo2docker/).",
    )
    keepalive_interval = Float(
        15.0, config=True, help="Seconds between keepalive comments on event streams (default 15)."
    )
    add_default_roles = Bool(
        True,
        config=True,
        help="""Add the roles 'repo2docker-admin' (Hub admins: every namespace) and give every user
        build/delete on their own namespace, unless roles of those names are configured (default True).""",
    )


class TLJHBase(BaseHandler):
    """Identity from the Hub's own request handling (cookie or API token, XSRF checked by the Hub).

    XSRF is checked on reads too, as JupyterHub's own ``APIHandler`` and ``HubOAuth`` (the
    standalone service) do: a cookie-authenticated scripted GET (``Sec-Fetch-Mode: cors``, ...)
    needs the token, navigations do not (JupyterHub's ``_needs_check_xsrf`` decides).
    """

    _accept_token_auth = True
    # BaseHandler spares GET (page views); the API answers data, so only HEAD/OPTIONS are spared
    _xsrf_safe_methods = frozenset({"HEAD", "OPTIONS"})

    def check_xsrf_cookie(self) -> None:
        # Without any cookie there is no ambient credential to forge: let authentication answer
        # (401 logged out, or the token's identity) instead of a 403 about a missing XSRF token.
        if not self.request.cookies:
            return
        if getattr(self, "_token_authenticated", False):
            return  # an API token is no ambient credential
        super().check_xsrf_cookie()

    async def r2d_identify(self) -> Identity | None:
        user = self.current_user
        if user is None:
            return None
        return Identity(
            name=user.name,
            kind=getattr(user, "kind", "user"),
            scopes=frozenset(self.expanded_scopes or ()),
        )

    def r2d_login_url(self) -> str:
        from tornado.httputil import url_concat

        url = self.get_login_url()
        return url if "next=" in url else url_concat(url, {"next": self.request.uri})

    def r2d_xsrf_token(self) -> str:
        token = self.xsrf_token
        return token.decode() if isinstance(token, bytes) else token


class HubDBGroups:
    """Group membership straight from the Hub's database (no API token needed in-process)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def members(self, group: str) -> frozenset[str]:
        from jupyterhub import orm

        found = orm.Group.find(self.db, group)
        return frozenset(user.name for user in found.users) if found is not None else frozenset()


class HubContext(ContextProvider):
    """Creates the manager in the Hub's loop on first use, from the Hub's final config."""

    def __init__(self, path: str) -> None:
        self.path = path.strip("/")
        self._context: R2DContext | None = None
        self._lock: asyncio.Lock | None = None

    async def get(self, handler: Any) -> R2DContext:
        if self._context is not None:
            return self._context
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._context is None:
                self._context = await self._create(handler)
        return self._context

    async def _create(self, handler: Any) -> R2DContext:
        config = handler.settings.get("config") or Config()
        hub_prefix = handler.hub.base_url  # e.g. /hub/
        manager = BuildManager(config=config, log=handler.log)
        groups = HubDBGroups(handler.db)
        await manager.start()
        _stop_with_the_hub(manager)
        return R2DContext(
            manager=manager,
            authorizer=Authorizer(groups),
            base_url=f"{hub_prefix}{self.path}/",
            hub_url=hub_prefix,
            logout_url=f"{hub_prefix}logout",
            keepalive_interval=R2DPlugin(config=config).keepalive_interval,
        )


def _stop_with_the_hub(manager: BuildManager) -> None:
    """Stop local build processes when the Hub process exits (build containers go on)."""

    def kill_children() -> None:
        for process in list(manager._processes.values()):
            proc = getattr(process, "proc", None)
            if proc is not None and proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    atexit.register(kill_children)


def configure(c: Config) -> None:
    """Add the plugin's handlers, scopes and default roles to the Hub config ``c``."""
    plugin = R2DPlugin(config=c)
    path = plugin.path.strip("/")
    handlers = make_handlers(path, TLJHBase, HubContext(path))
    c.JupyterHub.extra_handlers = [*c.JupyterHub.get("extra_handlers", []), *handlers]

    read, build, delete = (f"{SCOPE_PREFIX}:{a}" for a in ("read", "build", "delete"))
    scopes = dict(c.JupyterHub.get("custom_scopes", {}))
    scopes.setdefault(
        read, {"description": "See repo2docker images and builds, and follow build logs"}
    )
    scopes.setdefault(build, {"description": "Build repo2docker images", "subscopes": [read]})
    scopes.setdefault(delete, {"description": "Delete repo2docker images", "subscopes": [read]})
    c.JupyterHub.custom_scopes = scopes

    if plugin.add_default_roles:
        roles = list(c.JupyterHub.get("load_roles", []))
        names = {role.get("name") for role in roles}
        if "repo2docker-admin" not in names:
            # JupyterHub's admin flag grants no custom scopes: give admins theirs through a role
            # assigned to the admin users (kept in sync by TLJH's admin list).
            admins = sorted(c.Authenticator.get("admin_users", set()) or [])
            roles.append({"name": "repo2docker-admin", "users": admins, "scopes": [build, delete]})
        if "repo2docker-user" not in names and "user" not in names:
            roles.append({"name": "user", "scopes": ["self", f"{build}!user", f"{delete}!user"]})
        c.JupyterHub.load_roles = roles


@hookimpl
def tljh_custom_jupyterhub_config(c: Config) -> None:
    configure(c)


@hookimpl
def tljh_extra_hub_pip_packages() -> list[str]:
    return ["repo2docker-service"]
