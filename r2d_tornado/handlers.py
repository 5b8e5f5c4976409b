"""The HTTP API, the event-stream logs and the UI page, written once for both adapters.

Each handler here is a *logic mixin*. An adapter turns them into tornado handlers with
:func:`make_handlers`, putting its own base class behind them; that base supplies only

* ``async r2d_identify() -> Identity | None`` — who is calling, with the scopes JupyterHub resolved;
* ``r2d_login_url() -> str`` — where a logged-out browser goes;
* ``r2d_xsrf_token() -> str`` — the token the UI sends back on writes (checked by the adapter).

Everything else (routes, JSON shapes, error mapping, permissions, SSE) lives here, so the standalone
service (:mod:`r2d_tornado.app`) and the TLJH plugin (:mod:`r2d_tljh`) cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import template, web
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from r2d_core import __version__, pages
from r2d_core.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    R2DError,
    RateLimited,
    Unauthorized,
    Unavailable,
    error_response,
)
from r2d_core.manager import BuildManager
from r2d_core.metrics import METRICS_SCOPE
from r2d_core.metrics import REGISTRY as METRICS_REGISTRY
from r2d_core.models import Build, Credentials, ImageGroup
from r2d_core.schema import PARAMETERS, parse_json_body, validate_body, validate_query
from r2d_core.scopes import ACTIONS, Authorizer, Permissions, parse_permissions, scope_for
from r2d_core.validation import NAME_PATTERN, REF_PATTERN

from .logscrub import ScrubbedSummary

__all__ = ["ContextProvider", "Identity", "R2DContext", "make_handlers"]

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(HERE, "static")
TEMPLATE_DIR = os.path.join(HERE, "templates")
#: a log replay is written (and flushed) in chunks of about this many bytes of log text
REPLAY_CHUNK = 64 * 1024


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
    #: open event streams by caller name
    streams: dict[str, int] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def stream_slot(self, who: str) -> Iterator[None]:
        """Hold one of ``who``'s slots for a long request, or raise :class:`RateLimited` (429).

        An event stream holds a connection (a file descriptor of the service, or of the Hub
        itself in TLJH) for as long as the build runs, and a submission for as long as its ref
        lookup on a (possibly slow, hostile) git server takes: without a cap, one user could
        hold thousands and leave no descriptor for anyone else."""
        if self.max_streams_per_user and self.streams.get(who, 0) >= self.max_streams_per_user:
            raise RateLimited(
                f"{who} has {self.max_streams_per_user} event streams or build submissions in "
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
        self._slots.enter_context(self.ctx.stream_slot(self.identity.name))

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
            self.request.body, content_length=int(length) if length.isdigit() else None
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


# ---- API ---------------------------------------------------------------------------------------
class InfoHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        manager = self.manager
        self.write_json(
            {
                "version": __version__,
                "builder": manager.builder.kind,
                "registry": self.ctx.registry_info(),
                "limits": {
                    "max_concurrent_builds": manager.max_concurrent_builds,
                    "max_builds_per_owner": manager.max_builds_per_owner,
                    "max_queued_builds": manager.max_queued_builds,
                    **manager.lifecycle.limits(),
                    "max_queued_builds_per_owner": manager.max_queued_builds_per_owner,
                },
                "user": {"name": self.identity.name, "kind": self.identity.kind},
                "permissions": self.permissions.to_dict(),
                "scopes": {action: scope_for(action) for action in ACTIONS},
                "rules": {
                    "name_pattern": NAME_PATTERN,
                    "ref_pattern": REF_PATTERN,
                    "allowed_repo_patterns": list(manager.allowed_repo_patterns),
                },
                "docker": manager.ready,
                # what the UI's "Advanced" section may show this caller
                "options": manager.build_options.describe(
                    may_appendix=manager.build_options.may_use_appendix(self.identity.scopes)
                ),
            }
        )


class ImagesHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        query = self.query("get /api/images")
        if not self.permissions.grant("read").any:
            await self.require("read", self.identity.name)
        owners = await self.readable_owners(query.get("owner"))
        groups = await self.manager.list_images(owners)
        images = [await self.image_json(g) for g in groups]
        self.write_json({"images": images, "warnings": getattr(self.manager, "image_warnings", [])})


class ImageHandler(R2DHandler):
    @r2d_api
    async def get(self, owner: str, name: str) -> None:
        await self.require("read", owner, hide=True)
        self.write_json(await self.image_json(await self.manager.get_image(owner, name)))

    @r2d_api
    async def delete(self, owner: str, name: str) -> None:
        query = self.query("delete /api/images/{owner}/{name}")
        await self.require("delete", owner, hide=True)
        result = await self.manager.delete_image(owner, name, query.get("tag"))
        self.write_json(result)


class BuildsHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        query = self.query("get /api/builds")
        if not self.permissions.grant("read").any:
            await self.require("read", self.identity.name)
        owners = await self.readable_owners(query.get("owner"))
        states = query.get("state") or None
        builds, next_page = pages.page(
            self.manager.list_builds(owners, states),
            query.get("limit", pages.DEFAULT_LIMIT),
            query.get("before"),
        )
        self.write_json({"builds": [await self.build_json(b) for b in builds], "next": next_page})

    @r2d_api
    async def post(self) -> None:
        # types, unknown fields, sizes: the BuildRequest schema of the OpenAPI document
        body = self.body_json("BuildRequest")
        owner = body.get("owner") or (self.identity.name if self.identity.kind == "user" else None)
        if not owner:
            raise InvalidRequest(
                "a service must say which owner it builds for ('owner')", field="owner"
            )
        await self.require("build", owner)
        credentials = None
        if "credentials" in body:
            raw_credentials = body["credentials"]
            credentials = Credentials(
                raw_credentials.get("username") or "git", raw_credentials["password"]
            )
        # the ref lookup may wait long on a slow git server: one of the caller's slots
        self.r2d_hold_slot()
        try:
            result = await self.manager.submit(
                repo=body["repo"],
                ref=body.get("ref") or "HEAD",
                name=body.get("name") or None,
                owner=owner,
                requested_by=self.identity.name,
                push=body.get("push", False),
                force=body.get("force", False),
                credentials=credentials,
                options=body.get("options"),
                annotations=body.get("annotations"),
                may_appendix=self.manager.build_options.may_use_appendix(self.identity.scopes),
            )
        except InvalidRequest as e:
            if "field" not in e.details:
                e.details["field"] = _guess_field(str(e))
            raise
        if result.skipped:
            assert result.image is not None
            self.write_json(
                {
                    "skipped": True,
                    "reason": "an image for this commit already exists (send force to rebuild)",
                    "image": await self.image_json(result.image),
                }
            )
            return
        assert result.build is not None
        data = await self.build_json(result.build)
        data["joined"] = result.joined
        self.set_header("Location", data["url"])
        self.write_json(data, status=202)


def _guess_field(message: str) -> str:
    for field in ("repo", "ref", "name", "owner", "push", "credentials"):
        if message.startswith(field) or f" {field} " in message[:20]:
            return field
    return "repo"


class BuildHandler(R2DHandler):
    async def _build(self, build_id: str) -> Build:
        build = self.manager.get_build(build_id)
        await self.require("read", build.owner, hide=True)
        return build

    @r2d_api
    async def get(self, build_id: str) -> None:
        self.write_json(await self.build_json(await self._build(build_id)))

    @r2d_api
    async def delete(self, build_id: str) -> None:
        build = await self._build(build_id)
        await self.require("build", build.owner)
        build = await self.manager.cancel(build_id, by=self.identity.name)
        self.write_json(await self.build_json(build))


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


class BuildLogsHandler(StreamingHandler):
    """``text/event-stream`` of a build's log: replay, live, resumable, and a final ``done``."""

    @r2d_api
    async def get(self, build_id: str) -> None:
        self.query("get /api/builds/{build_id}/logs")
        build = self.manager.get_build(build_id)
        await self.require("read", build.owner, hide=True)
        since = self._since()
        with self.ctx.stream_slot(self.identity.name):
            if self.get_argument("format", "") == "text":
                await self._text(build, since, self.get_argument("follow", "1") != "0")
            else:
                await self._events(build, since)

    def _since(self) -> int:
        last = self.request.headers.get("Last-Event-ID")
        try:
            if last is not None and last.strip():
                return int(last) + 1
            return max(0, int(self.get_argument("since", "0")))
        except ValueError:
            raise InvalidRequest("Last-Event-ID and since must be line numbers") from None

    async def _events(self, build: Build, cursor: int) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # no proxy buffering (nginx)
        log = build.log
        sent_state: str | None = None
        while not self._closed:
            # replay in chunks of at most REPLAY_CHUNK bytes, each written and flushed before the
            # next is read: a connect never serialises the whole log, and a slow reader holds one
            # chunk. The truncation marker is a log event of its own (with `omitted`), id = the
            # last omitted line, so ids increase across the gap and a resume after it gets the tail.
            chunk = log.read(cursor, REPLAY_CHUNK)
            parts = []
            for line in chunk:
                event: dict[str, Any] = {
                    "phase": line.phase,
                    "message": line.message,
                    "time": line.time,
                }
                if line.omitted is not None:
                    event["omitted"] = line.omitted.to_dict()
                parts.append(f"id: {line.n}\nevent: log\ndata: {json.dumps(event)}\n\n")
                cursor = line.n + 1
            if chunk and cursor < log.total:
                if not await self._send("".join(parts)):
                    break
                continue
            state = build.state.value
            finished = log.closed and cursor >= log.total
            if state != sent_state and not finished:
                parts.append(f"event: state\ndata: {json.dumps(await self.build_json(build))}\n\n")
                sent_state = state
            if finished:
                parts.append(f"event: done\ndata: {json.dumps(await self.build_json(build))}\n\n")
                await self._send("".join(parts))
                break
            if parts and not await self._send("".join(parts)):
                break
            try:
                await asyncio.wait_for(log.wait_for_change(), self.ctx.keepalive_interval)
            except asyncio.TimeoutError:
                if not await self._send(": keepalive\n\n"):
                    break
        if not self._finished:
            self.finish()

    async def _text(self, build: Build, cursor: int, follow: bool) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        log = build.log
        while not self._closed:
            lines = log.read(cursor, REPLAY_CHUNK)  # in bounded chunks, like the event stream
            if lines:
                cursor = lines[-1].n + 1
                if not await self._send("".join(line.message + "\n" for line in lines)):
                    break
                if cursor < log.total:
                    continue
            if not follow or (log.closed and cursor >= log.total):
                break
            await log.wait_for_change()
        if not self._finished:
            self.finish()


class HealthHandler(R2DHandler):
    """Unauthenticated, and says nothing about users: for load balancers and the Hub."""

    async def get(self) -> None:
        await self.r2d_setup()
        health = await self.manager.health()
        self.write_json(
            {"ok": health["ok"], "docker": health["docker"], "registry": health["registry"]},
            status=200 if health["ok"] else 503,
        )


class MetricsHandler(R2DHandler):
    """This service's metrics only (:data:`r2d_core.metrics.REGISTRY`), for holders of
    ``read:metrics`` (JupyterHub's scope for its own ``/hub/metrics``)."""

    @r2d_api
    async def get(self) -> None:
        if METRICS_SCOPE not in self.identity.scopes:
            raise Forbidden(
                f"metrics need the {METRICS_SCOPE} scope (as the Hub's own /hub/metrics); "
                "ask a Hub admin for a token with it",
                scope=METRICS_SCOPE,
            )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(generate_latest(METRICS_REGISTRY))


class APINotFoundHandler(R2DHandler):
    """Any other path under ``api/`` (or an id the routes refuse): a JSON 404, as the document
    says, not tornado's HTML page."""

    async def prepare(self) -> None:
        self.r2d_send_error(NotFound(f"no such API endpoint: {self.request.path}"))


class OpenAPIHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        from .openapi import openapi_document

        self.write_json(openapi_document(self.ctx.base_url))


class PageHandler(R2DHandler):
    """The single page of the UI; the browser app does the rest through the API."""

    async def get(self, path: str = "") -> None:
        try:
            await self.r2d_setup()
            await self.r2d_authenticate()
        except Unauthorized:
            self.redirect(self.r2d_login_url())
            return
        except R2DError as e:
            self.r2d_send_error(e)
            return
        base = self.ctx.base_url
        config = {
            "base_url": base,
            "hub_url": self.ctx.hub_url,
            "logout_url": self.ctx.logout_url,
            "user": self.identity.name,
            "xsrf_token": self.r2d_xsrf_token(),
            "version": __version__,
            "launch_url": _launch_url(self.manager),
        }
        page = _page_template()
        if page is None:
            # a source checkout whose UI was never built: say how to fix it instead of a 500
            self.set_status(503)
            self.finish(
                "<!doctype html><title>repo2docker-service</title><p>The web UI is not built. "
                "Reinstall the package (<code>pip install .</code> runs the npm build). The API works "
                f"at <a href='{base}api/'>{base}api/</a>.</p>"
            )
            return
        html = page.generate(
            base_url=base,
            static_url=lambda p: static_url(base, p),
            xsrf_token=config["xsrf_token"],
            user=self.identity.name,
            hub_url=self.ctx.hub_url,
            logout_url=self.ctx.logout_url,
            page_config=script_json(config),
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


#: what JSON inside an HTML ``<script>`` element must not contain raw: ``<`` (``</script>`` ends the
#: element, ``<!--`` then ``<script`` switch the HTML tokenizer into a state where the real
#: ``</script>`` no longer closes it), ``>`` and ``&`` (markup, should the text ever land in an
#: attribute or XHTML), and U+2028/U+2029 (line terminators to JavaScript before ES2019). JSON
#: syntax has none of them outside strings, so a ``\\u`` escape is always valid JSON.
_SCRIPT_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def script_json(value: object) -> str:
    """``value`` as JSON that is inert inside a ``<script>`` element (the page's config)."""
    return json.dumps(value).translate(_SCRIPT_JSON_ESCAPES)


def _launch_url(manager: BuildManager) -> str:
    from .launch import launch_url_template

    return launch_url_template(manager)


_loader = template.Loader(TEMPLATE_DIR, autoescape="xhtml_escape")


def _page_template() -> template.Template | None:
    """The page template (tornado's loader caches it), or None when the UI was never built."""
    try:
        return _loader.load("page.html")
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, mtime: float) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def static_url(base_url: str, path: str) -> str:
    """Versioned URL of a static file, so browsers cache it until it changes."""
    full = os.path.join(STATIC_DIR, path)
    try:
        version = _file_hash(full, os.path.getmtime(full))
    except OSError:
        version = __version__
    return f"{base_url}static/{path}?v={version}"


class StaticHandler(web.StaticFileHandler):
    """UI assets (no user data: served without authentication, cached by version)."""

    def set_extra_headers(self, path: str) -> None:
        if self.get_argument("v", None):
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")


# ---- routing -----------------------------------------------------------------------------------
_ROUTES: list[tuple[str, type[R2DHandler]]] = [
    (r"api/?", InfoHandler),
    (r"api/openapi\.json", OpenAPIHandler),
    (r"api/images/?", ImagesHandler),
    (r"api/images/([^/]+)/([^/]+)/?", ImageHandler),
    (r"api/builds/?", BuildsHandler),
    (r"api/builds/([0-9a-f]+)/?", BuildHandler),
    (r"api/builds/([0-9a-f]+)/logs/?", BuildLogsHandler),
    (r"health/?", HealthHandler),
    (r"metrics/?", MetricsHandler),
    (r"api/.*", APINotFoundHandler),
    (r"", PageHandler),
]


def make_handlers(
    prefix: str, base: type, context: R2DContext
) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado URL specs for every route under ``prefix``, each handler built on ``base``.

    The context travels in the handler's ``initialize`` keyword (so the Hub's own settings, in the
    TLJH adapter, need no new key).
    """
    import re

    from .binder import ROUTES as BINDER_ROUTES  # imports this module: import it late

    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    specs: list[tuple[str, type, dict[str, Any]]] = []
    for pattern, logic in [*BINDER_ROUTES, *_ROUTES]:
        cls = type(logic.__name__, (logic, base), {"__module__": base.__module__})
        specs.append(
            (
                re.escape(prefix) + pattern + "$" if pattern else re.escape(prefix) + "?$",
                cls,
                {"r2d": context},
            )
        )
    specs.append((re.escape(prefix) + r"static/(.*)$", StaticHandler, {"path": STATIC_DIR}))
    return specs
