"""The BinderHub-compatible build endpoint: ``GET build/<provider>/<spec>?build_only=true``.

What jupyterhub-fancy-profiles and ``@jupyterhub/binderhub-client`` speak to binderhub-service,
answered by the same build as ``POST api/builds`` (``binderhub/builder.py``'s ``BuildHandler`` is
the model for the wire format):

* an event stream of ``data: <JSON>`` events without event names, ``:keepalive`` comments;
* each event has a ``phase`` (``waiting``, ``fetching``, ``building``, ``pushing``, ``built``,
  ``ready``, ``failed``) and a ``message`` whose every line ends in ``\\n`` (clients write it to a
  terminal as is); ``built`` and ``ready`` carry ``imageName``, the reference a spawner should use
  (the registry's when the image was pushed);
* every error, including "not logged in" and "not allowed", is a ``failed`` event in a 200
  response with a ``status_code`` field, as BinderHub's ``send_error`` does: an EventSource
  client cannot read an error body, and binderhub-client would show only the status.

Differences from BinderHub, on purpose: the build runs in the caller's namespace (or ``?owner=``
with the scopes for it) and needs ``custom:repo2docker:build``; it is visible in ``api/builds``
and the UI with its whole log; a request that joins a running build replays its log from the
start; ``build_only=true`` is required, since this service never launches servers.
A client that disconnects does not cancel the build (as in BinderHub): cancel it in the UI or
with ``DELETE api/builds/<id>``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import unquote

from tornado.log import app_log

from r2d_core.errors import Forbidden, InvalidRequest, R2DError, Unauthorized, http_status
from r2d_core.models import Build, BuildState
from r2d_core.providers import ProviderSpec, RepoProviders

from .base import R2DHandler, StreamingHandler
from .streams import REPLAY_CHUNK

__all__ = ["ROUTES", "BinderBuildHandler", "binder_event"]

_PHASE_OF_LINE = {"fetching": "fetching", "building": "building", "pushing": "pushing"}


def _lines(messages: list[str]) -> str:
    """Log lines as one BinderHub message: every line ends in a newline, blank ones too (a batch
    that is one blank line would otherwise be an empty message, and the client's terminal would
    lose that line break)."""
    return "".join(f"{m}\n" for m in messages)


def binder_event(phase: str, message: str, **extra: Any) -> str:
    """One BinderHub event: ``data: {...}`` with ``message`` ending in a newline."""
    if message and not message.endswith("\n"):
        message += "\n"
    return f"data: {json.dumps({'phase': phase, 'message': message, **extra})}\n\n"


def _providers(handler: R2DHandler) -> RepoProviders:
    # one per manager, configured from the same config (the service's file, or the Hub's in TLJH)
    manager = handler.manager
    providers = getattr(manager, "_r2d_binder_providers", None)
    if providers is None:
        providers = RepoProviders(parent=manager)
        manager._r2d_binder_providers = providers  # type: ignore[attr-defined]
    return providers


#: a ``?user_id=`` that is a number (a longer one is out of range anyway)
_ASCII_INT = re.compile(r"[0-9]{1,12}")


class BinderBuildHandler(StreamingHandler):
    """``GET build/<provider>/<spec>``: build (or find) the image and stream BinderHub events.

    A client that goes away stops only its stream: the build goes on (BinderHub does not cancel
    either, and another request may follow it)."""

    async def _fail(self, message: str, status_code: int | None = None) -> None:
        extra = {"status_code": status_code} if status_code else {}
        await self._send(binder_event("failed", message, **extra))

    async def get(self, *_args: str) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self._build()
        except R2DError as e:
            await self._fail(str(e), http_status(e))
        except Exception:
            # a bug, not the caller's fault: logged with its traceback, answered as an event
            # (an EventSource client could not read a 500 page)
            app_log.exception("BinderHub-compatible build request %s failed", self.request.path)
            await self._fail("Internal error in repo2docker-service; see the service's log", 500)
        if not self._finished:
            self.finish()

    def _raw_spec(self) -> tuple[str, str]:
        # tornado unescapes path arguments ('%2F' → '/'), which would make 'git/<escaped url>/ref'
        # ambiguous: read the raw path, as BinderHub's get_spec_from_request does
        prefix = self.ctx.base_url + "build/"
        path = self.request.path
        if not path.startswith(prefix):
            raise InvalidRequest("unexpected build URL")
        provider, _, spec = path[len(prefix) :].partition("/")
        return unquote(provider), spec

    async def _build(self) -> None:
        await self.r2d_setup()
        try:
            await self.r2d_authenticate()
        except Unauthorized:
            raise Unauthorized(
                "You are not logged in to JupyterHub: log in again, or send "
                "'Authorization: Bearer <API token>'"
            ) from None
        # a GET that starts a build: a cookie needs the XSRF token even on a navigation
        self.r2d_require_xsrf()
        if self.get_argument("build_only", "").lower() != "true":
            raise InvalidRequest(
                "This service builds images but never launches servers: request "
                "build/<provider>/<spec>?build_only=true (binderhub-client's buildOnly option; "
                "jupyterhub-fancy-profiles does so) and start a server with the image it names."
            )
        provider, raw_spec = self._raw_spec()
        spec = _providers(self).resolve(provider, raw_spec)
        identity = self.identity
        owner = self.get_argument("owner", "") or (identity.name if identity.kind == "user" else "")
        if not owner:
            raise InvalidRequest("a service must say which owner it builds for (?owner=)")
        try:
            await self.require("build", owner)
        except Forbidden as e:
            raise Forbidden(f"You may not build images here: {e}") from None
        # a stream slot before the build is queued: a refused stream queues nothing
        with self.ctx.stream_slot(identity):
            await self._submit_and_follow(owner, spec)

    async def _submit_and_follow(self, owner: str, spec: ProviderSpec) -> None:
        identity = self.identity
        manager = self.manager
        result = await manager.submit(
            repo=spec.repo,
            ref=spec.ref,
            name=self.get_argument("name", "") or None,
            owner=owner,
            requested_by=identity.name,
            # where a registry is configured, a spawner on another node has to pull the image
            push=manager.registry.configured,
            # BinderHub has no build options: ours come from the query string (documented)
            options=self._query_options(),
            annotations=self._query_pairs("annotation"),
            may_appendix=manager.build_options.may_use_appendix(identity.scopes),
        )
        if result.skipped:
            image = result.reference or (result.image.newest.reference if result.image else "")
            await self._send(
                binder_event("built", f"Found built image {image}", imageName=image)
                + binder_event("ready", "Done! Found built image", imageName=image)
            )
            return
        assert result.build is not None
        await self._follow(result.build, joined=result.joined)

    def _query_pairs(self, name: str) -> dict[str, str]:
        """``?name=KEY=VALUE`` repeated, as a dict (later ones win); refused if malformed."""
        pairs: dict[str, str] = {}
        for item in self.get_query_arguments(name, strip=False):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidRequest(f"{name} must be given as {name}=KEY=VALUE", field=name)
            pairs[key] = value
        return pairs

    def _query_options(self) -> dict[str, Any]:
        """Build options from the query string (the policy of c.BuildOptions checks them)."""
        options: dict[str, Any] = {}
        for name in ("subdir", "target_repo_dir", "user_name", "platform", "appendix"):
            values = self.get_query_arguments(name, strip=False)
            if len(values) > 1:
                raise InvalidRequest(f"{name} may be given only once", field=f"options.{name}")
            if values:
                options[name] = values[0]
        user_id = self.get_query_arguments("user_id", strip=False)
        if user_id:
            # ASCII digits only: str.isdigit() is True for '²' (int() then fails) and for other
            # scripts' digits; anything else goes on as a string for the policy to refuse
            value = user_id[0]
            options["user_id"] = int(value) if _ASCII_INT.fullmatch(value) else value
        build_args = self._query_pairs("build_arg")
        if build_args:
            options["build_args"] = build_args
        return options

    async def _follow(self, build: Build, joined: bool) -> None:
        log = build.log
        url = f"{self.ctx.base_url}api/builds/{build.id}"
        what = "Joining the running build" if joined else "Build"
        intro = (
            f"{what} {build.id} of {build.repo}@{build.ref} ({build.sha[:12]}) for {build.owner}"
        )
        chunks = [binder_event("waiting", f"{intro}\nIts log stays at {url}/logs")]
        cursor = 0
        sent_queued = False
        while not self._closed:
            # log lines, batched by phase into one event each (a newline after every line)
            batch: list[str] = []
            batch_phase = None
            # the replay in chunks of REPLAY_CHUNK, each sent before the next is read (as the
            # API's event stream does): a client that does not read holds one chunk, not the log
            replayed = log.read(cursor, REPLAY_CHUNK)
            for line in replayed:
                cursor = line.n + 1
                phase = _PHASE_OF_LINE.get(line.phase, "building")
                if batch and phase != batch_phase:
                    chunks.append(binder_event(batch_phase or phase, _lines(batch)))
                    batch = []
                batch_phase = phase
                batch.append(line.message)
            if batch:
                chunks.append(binder_event(batch_phase or "building", _lines(batch)))
            if build.state == BuildState.QUEUED and not sent_queued:
                position = self.manager.queue_position(build)
                ahead = f" ({position} ahead)" if position else ""
                chunks.append(binder_event("waiting", f"Waiting for build to start...{ahead}"))
                sent_queued = True
            if build.done and cursor >= log.total:
                chunks.append(self._final(build))
                await self._send("".join(chunks))
                return
            if chunks and not await self._send("".join(chunks)):
                return
            chunks = []
            if replayed and cursor < log.total:
                continue  # more of the replay
            try:
                await asyncio.wait_for(log.wait_for_change(), self.ctx.keepalive_interval)
            except asyncio.TimeoutError:
                if not await self._send(":keepalive\n\n"):
                    return

    def _final(self, build: Build) -> str:
        if build.state == BuildState.BUILT:
            if build.push and build.push_error:
                return binder_event(
                    "failed", f"Built {build.image}, but pushing it failed: {build.push_error}"
                )
            return binder_event("built", f"Built image {build.image}", imageName=build.image) + (
                binder_event("ready", "Done! Image built", imageName=build.image)
            )
        if build.state == BuildState.CANCELLED:
            return binder_event("failed", build.error or "The build was cancelled")
        return binder_event("failed", f"Build failed: {build.error or 'see the log above'}")


#: (pattern, handler) under the service's prefix; provider and spec are re-read from the raw path
ROUTES: list[tuple[str, type[R2DHandler]]] = [(r"build/([^/]+)/(.+)", BinderBuildHandler)]
