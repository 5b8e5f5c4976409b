"""The TLJH plugin: the service's API, event-stream logs and UI as ``JupyterHub.extra_handlers``.

TLJH discovers it through the ``tljh`` entry-point group (pluggy project ``tljh``) and calls
:func:`tljh_custom_jupyterhub_config` with the Hub's traitlets ``Config``. That adds, under
``/hub/<path>/`` (default ``/hub/repo2docker/``):

* the handlers of :mod:`r2d_tornado.handlers` — the same code the standalone service runs — on
  JupyterHub's own ``BaseHandler``: identity and scopes are the ones the Hub resolved for the
  request (cookie or API token), no OAuth round trip;
* the custom scopes and default grants (see :mod:`r2d_tljh.settings`).

TLJH calls the hook before it loads ``jupyterhub_config.d``; the plugin's settings
(``R2DPlugin``) and roles are therefore decided when the Hub has loaded its whole configuration
(:func:`configure`), so the admin's last word applies whatever the load order.

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
from traitlets.config import Config

from r2d_core.manager import BuildManager
from r2d_core.scopes import Authorizer
from r2d_tornado.handlers import ContextProvider, Identity, R2DContext, make_handlers

from .settings import R2DPlugin, plan_hub_config, resolve_config_value

__all__ = ["R2DPlugin", "configure", "tljh_custom_jupyterhub_config", "tljh_extra_hub_pip_packages"]

hookimpl = HookimplMarker("tljh")


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

    def __deepcopy__(self, memo: dict[int, Any]) -> HubContext:
        # one shared runtime object: traitlets deep-copies config values into the Hub's traits,
        # and a copy would make the same handlers compare unequal (and be replaced, and warned
        # about, once more)
        return self

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
        settings = R2DPlugin(config=config)
        return R2DContext(
            manager=manager,
            authorizer=Authorizer(groups),
            base_url=f"{hub_prefix}{self.path}/",
            hub_url=hub_prefix,
            logout_url=f"{hub_prefix}logout",
            keepalive_interval=settings.keepalive_interval,
            max_streams_per_user=settings.max_streams_per_user,
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


# --- registration: decided when the Hub has loaded its whole configuration ---------------------
# TLJH calls the hook *before* it loads /opt/tljh/config/jupyterhub_config.d/*.py, and each of
# those files starts from an empty ``c`` merged in afterwards (traitlets' load_subconfig). So the
# hook cannot know the admin's settings yet: it registers the plugin, and the final values are
# planned when the JupyterHub application loads the merged configuration into its traits — before
# it creates roles (init_role_creation) and handlers (init_handlers).

_OBSERVED = ("extra_handlers", "load_roles", "custom_scopes", "extra_user_scopes")


def _is_ours(spec: Any) -> bool:
    """A URL spec the plugin added (its handler classes live in r2d_tljh / r2d_tornado)."""
    handler = spec[1] if isinstance(spec, (tuple, list)) and len(spec) > 1 else None
    return isinstance(handler, type) and handler.__module__.split(".")[0] in (
        "r2d_tljh",
        "r2d_tornado",
    )


class _Registration:
    """Applies the plugin to a Hub: handlers at ``R2DPlugin.path``, scopes, default roles.

    ``config`` is the root config TLJH hands to the hook; every ``jupyterhub_config.d`` file is
    merged into it, so when the Hub loads its traits it holds the admin's final settings."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._handlers: dict[str, list[tuple[str, type, dict[str, Any]]]] = {}
        self._busy = False
        self._announced: tuple[str, bool] | None = None

    def settings(self) -> R2DPlugin:
        return R2DPlugin(config=self.config)

    def handlers(self, path: str) -> list[tuple[str, type, dict[str, Any]]]:
        # one set per path, so planning again sets an equal value (no new change event)
        if path not in self._handlers:
            self._handlers[path] = make_handlers(path, TLJHBase, HubContext(path))
        return self._handlers[path]

    def admin_users(self) -> set[str]:
        section = self.config.Authenticator if "Authenticator" in self.config else {}
        return set(resolve_config_value(section.get("admin_users"), set()) or ())

    def plan(
        self,
        extra_handlers: list[Any],
        load_roles: list[dict[str, Any]],
        custom_scopes: dict[str, Any],
        extra_user_scopes: set[str] | None,
    ) -> dict[str, Any]:
        """The values of the Hub's traits with the plugin applied."""
        settings = self.settings()
        plan = plan_hub_config(
            add_default_roles=settings.add_default_roles,
            load_roles=load_roles,
            custom_scopes=custom_scopes,
            extra_user_scopes=extra_user_scopes,
            admin_users=self.admin_users(),
        )
        values: dict[str, Any] = {
            "extra_handlers": [
                *(spec for spec in extra_handlers if not _is_ours(spec)),
                *self.handlers(settings.path),
            ],
            "load_roles": plan.load_roles,
            "custom_scopes": plan.custom_scopes,
        }
        if plan.extra_user_scopes is not None:
            values["extra_user_scopes"] = plan.extra_user_scopes
        return values

    def apply_to_config(self, with_roles: bool) -> None:
        """Write the plan into ``config`` now (from the values it holds so far)."""
        from jupyterhub.app import JupyterHub

        hub = self.config.JupyterHub
        # JupyterHub < 6 has no extra_user_scopes: the plan then extends the user role instead
        has_extra = JupyterHub.class_traits().get("extra_user_scopes") is not None
        values = self.plan(
            resolve_config_value(hub.get("extra_handlers"), []),
            resolve_config_value(hub.get("load_roles"), []),
            resolve_config_value(hub.get("custom_scopes"), {}),
            resolve_config_value(hub.get("extra_user_scopes"), set()) if has_extra else None,
        )
        hub.extra_handlers = values["extra_handlers"]
        hub.custom_scopes = values["custom_scopes"]
        if with_roles:
            hub.load_roles = values["load_roles"]
            if "extra_user_scopes" in values:
                hub.extra_user_scopes = values["extra_user_scopes"]

    def attach(self, app: Any) -> None:
        """Plan again whenever the Hub loads (or reloads) one of the traits the plugin touches."""
        app.observe(lambda _change: self.apply_to_hub(app), names=list(_OBSERVED))

    def apply_to_hub(self, app: Any) -> None:
        # called from trait notifications, after the Hub set all its config values; setting the
        # traits here notifies again: ignore those (planning is idempotent anyway)
        if self._busy:
            return
        self._busy = True
        try:
            extra = set(app.extra_user_scopes) if app.has_trait("extra_user_scopes") else None
            values = self.plan(
                list(app.extra_handlers), list(app.load_roles), dict(app.custom_scopes), extra
            )
            for name, value in values.items():
                if getattr(app, name) != value:
                    setattr(app, name, value)
            settings = self.settings()
            if self._announced != (settings.path, settings.add_default_roles):
                self._announced = (settings.path, settings.add_default_roles)
                app.log.info(
                    "repo2docker-service: UI and API at %shub/%s/, default roles %s",
                    app.base_url,
                    settings.path,
                    "on" if settings.add_default_roles else "off",
                )
        finally:
            self._busy = False


def _loading_hub() -> Any | None:
    """The JupyterHub application whose config file is running this hook, if any."""
    from jupyterhub.app import JupyterHub

    return JupyterHub.instance() if JupyterHub.initialized() else None


def configure(c: Config, app: Any | None = None) -> None:
    """Add the plugin to the Hub config ``c``: handlers, custom scopes and default roles.

    Inside a Hub (the TLJH case: the hook runs while the Hub loads ``jupyterhub_config.py``) the
    settings and roles are decided when the Hub has loaded its *whole* configuration, so
    ``jupyterhub_config.d`` files loaded after the hook are obeyed: ``R2DPlugin.path``,
    ``R2DPlugin.add_default_roles``, their own ``user`` role (extended) and admin users. Outside
    a Hub (``app`` None and no Hub loading) everything is applied to ``c`` at once."""
    app = app if app is not None else _loading_hub()
    registration = getattr(app, "_r2d_tljh_registration", None)
    if registration is not None:  # the hook ran again for this Hub: one registration only
        registration.config = c
    else:
        registration = _Registration(c)
    # handlers and scopes go into c now as well: a config dump shows them, and the Hub loading
    # extra_handlers is what triggers the final planning
    registration.apply_to_config(with_roles=app is None)
    if app is not None and getattr(app, "_r2d_tljh_registration", None) is None:
        app._r2d_tljh_registration = registration
        registration.attach(app)


@hookimpl
def tljh_custom_jupyterhub_config(c: Config) -> None:
    configure(c)


@hookimpl
def tljh_extra_hub_pip_packages() -> list[str]:
    return ["repo2docker-service"]
