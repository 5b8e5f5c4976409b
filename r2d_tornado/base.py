"""The shared base of every handler: who is calling, the context, permissions, error mapping.

Each handler of this package is a *logic mixin* on :class:`R2DHandler`. An adapter turns them into
tornado handlers with :func:`r2d_tornado.handlers.make_handlers`, putting its own base class behind
them; that base supplies only

* ``async r2d_identify() -> Identity | None`` — who is calling, with the scopes JupyterHub resolved;
* ``r2d_login_url() -> str`` — where a logged-out browser goes;
* ``r2d_xsrf_token() -> str`` — the token the UI sends back on writes (checked by the adapter).

Everything else (routes, JSON shapes, error mapping, permissions, SSE) lives in this package, so
the standalone service (:mod:`r2d_tornado.app`) and the TLJH plugin (:mod:`r2d_tljh`) cannot drift
apart. The one place an exception becomes an HTTP answer is :meth:`R2DHandler.r2d_send_error`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from r2d_core.errors import (
    Forbidden,
    NotFound,
    R2DError,
    RateLimited,
    Unauthorized,
    Unavailable,
    error_response,
)
from r2d_core.manager import BuildManager
from r2d_core.models import Build, ImageGroup
from r2d_core.schema import PARAMETERS, parse_json_body, validate_body, validate_query
from r2d_core.scopes import Authorizer, Permissions, parse_permissions

from .logscrub import ScrubbedSummary

__all__ = [
    "ContextProvider",
    "Identity",
    "R2DContext",
    "R2DHandler",
    "StreamingHandler",
    "r2d_api",
]


@dataclass(frozen=True)
class Identity:
    """Who is calling, as JupyterHub told the adapter."""

    name: str
    kind: str  # "user" or "service"
    scopes: frozenset[str]


@dataclass
class R2DContext:
    """What every handler needs, shared by reference through the tornado settings."""

    manager: BuildManager
    authorizer: Authorizer
    base_url: str  # the URL prefix the handlers live under, ending in "/"
    hub_url: str = "/hub/"
    logout_url: str = "/hub/logout"
    keepalive_interval: float = 15.0
    #: event streams (build logs, BinderHub endpoint) one caller may hold open at once
    max_streams_per_user: int = 20
    #: open event streams by caller (kind, name): a user and a service of one name are two
    streams: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def stream_slot(self, caller: Identity) -> Iterator[None]:
        """Hold one of ``caller``'s slots for a long request, or raise :class:`RateLimited` (429).

        An event stream holds a connection (a file descriptor of the service, or of the Hub
        itself in TLJH) for as long as the build runs, and a submission for as long as its ref
        lookup on a (possibly slow, hostile) git server takes: without a cap, one user could
        hold thousands and leave no descriptor for anyone else."""
        who = (caller.kind, caller.name)
        if self.max_streams_per_user and self.streams.get(who, 0) >= self.max_streams_per_user:
            raise RateLimited(
                f"{caller.name} has {self.max_streams_per_user} event streams or build submissions in "
                "progress already; close one (another tab?) or wait, and try again",
                retry_after=5,
                limit=self.max_streams_per_user,
            )
        self.streams[who] = self.streams.get(who, 0) + 1
        try:
            yield
        finally:
            left = self.streams.get(who, 1) - 1
            if left > 0:
                self.streams[who] = left
            else:
                self.streams.pop(who, None)

    def registry_info(self) -> dict[str, Any]:
        registry = self.manager.registry
        return {"configured": registry.configured, "url": registry.url or None}


class ContextProvider:
    """Builds the :class:`R2DContext` on first use (see :mod:`r2d_tljh`)."""

    async def get(self, handler: web.RequestHandler) -> R2DContext:
        raise NotImplementedError


def r2d_api(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Run an API method with the caller identified, mapping every exception to a JSON answer.

    :class:`R2DError` answers its own status; anything else is a bug: logged with its traceback,
    answered 500 (tornado's own ``HTTPError`` keeps its status, through :meth:`write_error`).
    """

    @functools.wraps(method)
    async def wrapper(self: R2DHandler, *args: Any, **kwargs: Any) -> Any:
        try:
            await self.r2d_setup()
            await self.r2d_authenticate()
            return await method(self, *args, **kwargs)
        except R2DError as e:
            self.r2d_send_error(e)
        except web.HTTPError:
            raise
        except Exception as e:
            app_log.exception("unexpected error in %s %s", self.request.method, self.request.path)
            self.r2d_send_error(e)

    return wrapper


class R2DHandler(ScrubbedSummary, web.RequestHandler):
    """Shared logic of every handler (a mixin placed before the adapter's base class)."""

    identity: Identity
    permissions: Permissions

    # The adapter's base class provides r2d_identify(), r2d_login_url() and r2d_xsrf_token()
    # (see the module docstring). They are not defined here: this mixin comes first in the MRO.

    # -- shared --
    def initialize(self, r2d: R2DContext | ContextProvider, **kwargs: Any) -> None:
        self._r2d = r2d
        super().initialize(**kwargs)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # The UI's Build and Delete buttons must not be framed by another page (clickjacking; a
        # page on another port of the same host is "same site" and gets the cookies). JupyterHub
        # answers its own pages so (the TLJH adapter's base has set it already); the standalone
        # service does the same, or what tornado_settings["headers"] says, as the Hub reads it.
        # build logs are text an attacker's repository wrote (`?format=text`): never sniffed as HTML
        self.set_header("X-Content-Type-Options", "nosniff")
        if "Content-Security-Policy" not in self._headers:
            headers = self.settings.get("headers") or {}
            self.set_header(
                "Content-Security-Policy",
                headers.get("Content-Security-Policy", "frame-ancestors 'none'"),
            )

    @property
    def ctx(self) -> R2DContext:
        assert isinstance(self._r2d, R2DContext), "r2d_setup() first"
        return self._r2d

    async def r2d_setup(self) -> None:
        """Resolve a lazily created context (the TLJH plugin builds it in the Hub's loop)."""
        if not isinstance(self._r2d, R2DContext):
            self._r2d = await self._r2d.get(self)

    @property
    def manager(self) -> BuildManager:
        return self.ctx.manager

    async def r2d_authenticate(self) -> None:
        identity = await self.r2d_identify()
        if identity is None:
            raise Unauthorized(
                "log in to JupyterHub, or send 'Authorization: token <API token>'",
            )
        self.identity = identity
        self.permissions = parse_permissions(identity.scopes, identity.name, identity.kind)

    _slots: contextlib.ExitStack | None = None

    def r2d_hold_slot(self) -> None:
        """Hold one of the caller's long-request slots (:meth:`R2DContext.stream_slot`) until
        this request is finished, or raise :class:`RateLimited`."""
        if self._slots is None:
            self._slots = contextlib.ExitStack()
        self._slots.enter_context(self.ctx.stream_slot(self.identity))

    def on_finish(self) -> None:
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        super().on_finish()

    def r2d_require_xsrf(self) -> None:
        """Refuse a cookie-authenticated request without the XSRF token, **whatever its fetch
        mode**: for a GET that changes state (the BinderHub endpoint starts builds). JupyterHub's
        rule spares navigations, and any site can make a browser navigate (a link, a redirect),
        sending the login cookie. API tokens are no ambient credential and need none."""
        if getattr(self, "_token_authenticated", False):
            return
        sent = (
            self.get_argument("_xsrf", None)
            or self.request.headers.get("X-XSRFToken")
            or self.request.headers.get("X-CSRFToken")
            or ""
        )
        if not sent or not hmac.compare_digest(sent.encode(), self.r2d_xsrf_token().encode()):
            raise Forbidden(
                "this request carries the login cookie but no valid XSRF token: send the "
                "_xsrf cookie's value in an X-XSRFToken header (or use an API token)"
            )

    def r2d_send_error(self, error: BaseException) -> None:
        """The one place an exception becomes an HTTP answer (status and body: errors.py)."""
        status, body = error_response(error)
        if isinstance(error, Unavailable):
            app_log.warning("%s %s: %s", self.request.method, self.request.path, error)
        if self._finished:
            return
        if self._headers_written:
            # mid-stream (SSE): nothing sensible can be sent any more
            self.finish()
            return
        self.clear()
        self.set_status(status)
        if isinstance(error, Unauthorized):
            self.set_header("WWW-Authenticate", 'token realm="JupyterHub"')
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            self.set_header("Retry-After", str(int(retry_after)))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # errors tornado raises itself (404 route, 405 method, 500 bug): JSON, no traceback
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], web.HTTPError) and exc_info[1].log_message:
            message = (
                exc_info[1].log_message % exc_info[1].args
                if exc_info[1].args
                else exc_info[1].log_message
            )
        else:
            message = reason
        if status_code == 405:
            # RFC 9110: a 405 lists the methods the resource has
            self.set_header("Allow", ", ".join(self.r2d_methods()))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": "http_error", "message": message}))

    @classmethod
    def r2d_methods(cls) -> list[str]:
        """The HTTP methods this handler implements."""
        return [
            m
            for m in cls.SUPPORTED_METHODS
            if getattr(cls, m.lower(), None) is not getattr(web.RequestHandler, m.lower(), None)
        ]

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def body_json(self, schema: str) -> dict[str, Any]:
        """The JSON body, within the size and depth limits, valid against request ``schema``."""
        length = self.request.headers.get("Content-Length", "")
        data = parse_json_body(
            self.request.body,
            content_length=int(length) if length.isascii() and length.isdigit() else None,
        )
        return validate_body(schema, data)

    def query(self, operation: str) -> dict[str, Any]:
        """The query (and header) parameters of ``operation`` (as the OpenAPI document names it),
        validated."""
        arguments = {
            name: self.get_query_arguments(name, strip=False)
            for name in self.request.query_arguments
        }
        headers = {
            p["name"]: self.request.headers.get_list(p["name"])
            for p in PARAMETERS.get(operation, [])
            if p["in"] == "header"
        }
        return validate_query(operation, arguments, headers)

    async def can(self, action: str, owner: str) -> bool:
        return await self.ctx.authorizer.allowed(self.permissions, action, owner)

    async def require(self, action: str, owner: str, hide: bool = False) -> None:
        await self.ctx.authorizer.check(self.permissions, action, owner, hide=hide)

    async def readable_build(self, build_id: str) -> Build:
        """Build ``build_id`` if the caller may read it; otherwise the very 404 an unknown id
        gets (manager.get_build's), so an id of someone else's build says neither that it exists
        nor whose it is."""
        build = self.manager.get_build(build_id)
        if not await self.can("read", build.owner):
            raise NotFound(f"no build {build_id!r}")
        return build

    async def readable_owners(self, requested: str | None = None) -> frozenset[str] | None:
        owners = await self.ctx.authorizer.owners(self.permissions, "read")
        if requested is not None:
            if owners is not None and requested not in owners:
                return frozenset()
            return frozenset({requested})
        return owners

    async def build_json(self, build: Build) -> dict[str, Any]:
        data = build.to_dict(
            queue_position=self.manager.queue_position(build), last_lines=self.manager.last_lines
        )
        data["can_cancel"] = not build.done and await self.can("build", build.owner)
        data["logs_url"] = f"{self.ctx.base_url}api/builds/{build.id}/logs"
        data["url"] = f"{self.ctx.base_url}api/builds/{build.id}"
        return data

    async def image_json(self, group: ImageGroup) -> dict[str, Any]:
        data = group.to_dict()
        data["can_build"] = await self.can("build", group.owner)
        data["can_delete"] = await self.can("delete", group.owner)
        return data


class StreamingHandler(R2DHandler):
    """A handler that writes a long answer in chunks and stops when the client goes away (the
    build it follows goes on either way)."""

    _closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    async def _send(self, chunk: str) -> bool:
        """Write and flush ``chunk``; False once the client is gone."""
        if self._closed:
            return False
        self.write(chunk)
        try:
            await self.flush()
        except StreamClosedError:
            self._closed = True
            return False
        return True
