"""The standalone service's identity: JupyterHub OAuth for browsers, Hub API tokens for clients.

A thin tornado base for the shared handlers of :mod:`r2d_tornado.handlers` (as jupyterhub's
``HubOAuthenticated`` is a thin mixin over the framework-agnostic ``HubOAuth``).
"""

from __future__ import annotations

import os

from tornado import web
from traitlets import default

from r2d_core.errors import Forbidden

from .base import Identity
from .lazyimport import lazy_modules

# jupyterhub.services.auth imports jupyterhub.scopes, which imports the Hub's database layer
# (jupyterhub.orm: SQLAlchemy's ORM, alembic, mako, ~0.2 s of CPU) for functions HubAuth never
# calls (it intersects scopes without a database). Loaded lazily, it costs nothing at the
# service's start; in a process that has it already (the Hub, tests) nothing changes.
with lazy_modules("jupyterhub.orm"):
    from jupyterhub.services.auth import HubOAuth as _HubOAuth
    from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated

try:
    # the very rule HubOAuth applies to cookies (navigations spared, scripted requests checked)
    from jupyterhub._xsrf_utils import _needs_check_xsrf
except ImportError:  # pragma: no cover - a JupyterHub that moved it: writes only, as before 4.1

    def _needs_check_xsrf(handler: web.RequestHandler) -> bool:
        return handler.request.method not in ("GET", "HEAD", "OPTIONS")


__all__ = ["HubOAuth", "HubOAuthCallbackHandler", "ServiceAuthBase"]


class HubOAuth(_HubOAuth):
    """jupyterhub's ``HubOAuth`` (configured as ``c.HubOAuth``, the same name), whose OAuth client
    id falls back to JupyterHub's default for a service, ``service-<name>``: a managed service gets
    ``JUPYTERHUB_CLIENT_ID`` from the Hub, an external one started by hand only needs
    ``JUPYTERHUB_SERVICE_NAME`` (as the container image's entry point does)."""

    @default("oauth_client_id")
    def _default_client_id(self) -> str:
        name = os.environ.get("JUPYTERHUB_SERVICE_NAME")
        return os.environ.get("JUPYTERHUB_CLIENT_ID") or (f"service-{name}" if name else "")


class ServiceAuthBase(HubOAuthenticated, web.RequestHandler):
    """Identity from the Hub: ``Authorization: token``/``bearer`` first, then the OAuth cookie.

    ``HubOAuth`` checks the XSRF token of cookie-authenticated writes while identifying the user
    (a failed check means "not logged in" for that request); token-authenticated calls need none.
    """

    @property
    def hub_auth(self):  # type: ignore[override]
        return self.settings["hub_auth"]

    async def r2d_identify(self) -> Identity | None:
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            if self.get_cookie(self.hub_auth.cookie_name) and _needs_check_xsrf(self):
                try:
                    self.check_xsrf_cookie()  # HubOAuth's check (get_user patched it in)
                except web.HTTPError:
                    # logged in, but a write or a scripted read came without the XSRF token
                    # (HubOAuth then ignores the cookie): say so, not "log in"
                    raise Forbidden(
                        "this request carries the login cookie but no valid XSRF token: send the "
                        "_xsrf cookie's value in an X-XSRFToken header (or use an API token)"
                    ) from None
                # the token was fine: the login itself expired (401 below)
            return None
        access = self.hub_auth.access_scopes
        if access and not self.hub_auth.check_scopes(access, model):
            raise Forbidden(
                f"you may not use this service: you need the scope {' or '.join(sorted(access))}; "
                "ask a Hub admin",
                scope=sorted(access)[0],
            )
        return Identity(
            name=model["name"],
            kind=model.get("kind", "user"),
            scopes=frozenset(model.get("scopes") or ()),
        )

    def r2d_login_url(self) -> str:
        return self.get_login_url()

    def r2d_xsrf_token(self) -> str:
        token = self.xsrf_token
        return token.decode() if isinstance(token, bytes) else token
