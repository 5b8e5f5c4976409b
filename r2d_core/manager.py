"""The build manager: the one core API every adapter translates.

State lives in memory and in Docker only (no database, no state files):

* built images are found by their labels (owner, name, repo, ref, sha, build id) and indexed in
  memory, refreshed from Docker after a short TTL and after every change we make;
* builds are kept in memory while they run and for a bounded history afterwards; with the
  :class:`~r2d_core.builders.DockerBuilder` they also live in labelled build containers, so a new
  manager (after a restart) finds running builds, re-reads their logs and follows them to the end.

The manager never checks *who* may do something: adapters do that with :mod:`r2d_core.scopes` and
pass the owner explicitly. It does enforce what holds for everybody: valid inputs, an image never
built over another owner's image, concurrency limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from traitlets import Bool, Float, Instance, Int, List, Type, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from . import metrics
from .builders import Builder, BuildProcess, LocalProcessBuilder, RecoveredBuild
from .engine import DockerEngine
from .errors import Conflict, InvalidRequest, NotFound, R2DError, RateLimited, Unavailable
from .logs import LogBuffer
from .models import (
    Build,
    BuildState,
    Credentials,
    ImageGroup,
    ImageVersion,
    SubmitResult,
    new_build_id,
    parse_labels,
    parse_time,
    short_error,
)
from .naming import DEFAULT_IMAGE_NAME_TEMPLATE, image_reference, parse_reference, validate_template
from .netpolicy import NetPolicy, parse_networks
from .refs import resolve_ref
from .registry.config import Registry
from .validation import (
    DEFAULT_ALLOWED_REPO_PATTERNS,
    check_allowed_pattern,
    default_name_for_repo,
    validate_name,
    validate_owner,
    validate_ref,
    validate_repo_url,
)

__all__ = ["BuildManager"]

# A BuildKit step header in `--progress plain` output, e.g. "#7 [3/4] RUN pip install ...".
_STEP_RE = re.compile(r"^#\d+ \[[^\]]+\] \S")
_PHASES = {
    "fetching": BuildState.FETCHING,
    "building": BuildState.BUILDING,
    "pushing": BuildState.PUSHING,
}


def _env_int(name: str, fallback: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return fallback


class BuildManager(LoggingConfigurable):
    """Queue, run, follow, cancel and list builds; list and delete images."""

    # ---- configuration --------------------------------------------------------------------------
    builder_class = Type(
        LocalProcessBuilder,
        klass=Builder,
        config=True,
        help="""The builder: ``r2d_core.builders.LocalProcessBuilder`` (default; repo2docker as a
        child process) or ``r2d_core.builders.DockerBuilder`` (repo2docker in a container; builds
        survive service restarts). Env: ``R2D_BUILDER`` (``local`` or ``docker``).""",
    )

    @default("builder_class")
    def _default_builder_class(self) -> type[Builder]:
        from .builders import DockerBuilder

        return DockerBuilder if os.environ.get("R2D_BUILDER") == "docker" else LocalProcessBuilder

    image_prefix = Unicode(
        config=True,
        help="""Prefix of every image name, e.g. ``registry.example.org/r2d/`` (default ``r2d-``,
        env ``R2D_IMAGE_PREFIX``). With a registry configured, put its host first.""",
    )

    @default("image_prefix")
    def _default_image_prefix(self) -> str:
        return os.environ.get("R2D_IMAGE_PREFIX", "r2d-")

    image_name_template = Unicode(
        DEFAULT_IMAGE_NAME_TEMPLATE,
        config=True,
        help=f"""Template of image references, with the fields ``{{prefix}}``, ``{{owner}}``,
        ``{{name}}``, ``{{sha}}``, ``{{short_sha}}``, ``{{ref}}``. Owner and name are escaped so no
        two owners can share an image repository; for that, each field before the tag must be
        followed by ``-``, ``_``, ``.``, ``/`` or the tag (``{{sha}}``/``{{short_sha}}`` need no
        separator), and ``{{ref}}`` may only appear in the tag. Default
        ``{DEFAULT_IMAGE_NAME_TEMPLATE}``.""",
    )

    @validate("image_name_template")
    def _check_template(self, proposal: Any) -> str:
        try:
            return validate_template(proposal["value"], self.image_prefix)
        except InvalidRequest as e:
            from traitlets import TraitError

            raise TraitError(str(e)) from None

    allowed_repo_patterns = List(
        Unicode(),
        config=True,
        help=f"""Regular expressions (``re.search``); a repository URL must match one to be built.
        They are matched against the URL's canonical form (lower-case scheme and host, default
        port dropped, no user name but for ssh, path without ``//``, ``.`` or trailing ``/``).
        Default ``{list(DEFAULT_ALLOWED_REPO_PATTERNS)!r}``: https to any host *name* (not an IP
        address); safe because the network policy (``allowed_networks``) refuses hosts that resolve
        to internal addresses. Env ``R2D_ALLOWED_REPO_PATTERNS`` (comma-separated). A pattern that
        names a host must pin it: ``^https://github\\.com`` is refused because it also matches
        ``https://github.com.evil.example/``; write ``^https://github\\.com/``. Local paths,
        ``file://`` and git remote helpers are refused whatever this says.""",
    )

    @default("allowed_repo_patterns")
    def _default_allowed(self) -> list[str]:
        env = os.environ.get("R2D_ALLOWED_REPO_PATTERNS")
        if env:  # traitlets does not validate dynamic defaults: check the env value here
            return self._check_patterns({"value": [p.strip() for p in env.split(",") if p.strip()]})
        return list(DEFAULT_ALLOWED_REPO_PATTERNS)

    @validate("allowed_repo_patterns")
    def _check_patterns(self, proposal: Any) -> list[str]:
        from traitlets import TraitError

        for pattern in proposal["value"]:
            try:
                check_allowed_pattern(pattern)
            except ValueError as e:
                raise TraitError(f"allowed_repo_patterns: {e}") from None
        return proposal["value"]

    allowed_networks = List(
        Unicode(),
        config=True,
        help="""Networks (CIDR, e.g. ``10.1.0.0/16``) the service and its builds may fetch
        repositories from although they are internal. By default (``[]``) a repository host that
        resolves to any loopback, private, link-local (cloud metadata ``169.254.169.254``), CGNAT,
        unique-local or multicast address is refused; the address actually connected is checked.
        Env ``R2D_ALLOWED_NETWORKS`` (comma-separated). Tests on one machine use
        ``["127.0.0.0/8"]``; an internal GitLab would need its subnet here.""",
    )

    @default("allowed_networks")
    def _default_allowed_networks(self) -> list[str]:
        env = os.environ.get("R2D_ALLOWED_NETWORKS", "")
        return self._check_networks({"value": [n.strip() for n in env.split(",") if n.strip()]})

    @validate("allowed_networks")
    def _check_networks(self, proposal: Any) -> list[str]:
        from traitlets import TraitError

        try:
            parse_networks(proposal["value"])
        except ValueError as e:
            raise TraitError(f"allowed_networks: {e}") from None
        return proposal["value"]

    max_concurrent_builds = Int(
        config=True,
        help="Builds running at once, for everybody (default 2; env R2D_MAX_CONCURRENT_BUILDS).",
    )

    @default("max_concurrent_builds")
    def _default_max(self) -> int:
        return _env_int("R2D_MAX_CONCURRENT_BUILDS", 2)

    max_builds_per_owner = Int(
        config=True,
        help="Builds running at once for one owner (default 1; env R2D_MAX_BUILDS_PER_OWNER).",
    )

    @default("max_builds_per_owner")
    def _default_per_owner(self) -> int:
        return _env_int("R2D_MAX_BUILDS_PER_OWNER", 1)

    @validate("max_concurrent_builds", "max_builds_per_owner")
    def _check_positive(self, proposal: Any) -> int:
        from traitlets import TraitError

        if proposal["value"] < 1:
            raise TraitError(
                f"{proposal['trait'].name} must be at least 1, not {proposal['value']}"
            )
        return proposal["value"]

    always_push = Bool(
        False,
        config=True,
        help="""Push every build when a registry is configured, whatever the request says
        (default False; env R2D_ALWAYS_PUSH=1). Use it where nodes pull images, e.g. z2jh.""",
    )

    @default("always_push")
    def _default_always_push(self) -> bool:
        return os.environ.get("R2D_ALWAYS_PUSH", "") in ("1", "true", "yes")

    max_queued_builds = Int(
        100, config=True, help="Builds waiting at most; more are refused with 429 (default 100)."
    )
    max_log_lines = Int(20000, config=True, help="Log lines kept per build (default 20000).")
    build_history = Int(
        200,
        config=True,
        help="Finished builds remembered (and their containers kept); default 200.",
    )
    ref_timeout = Float(
        30.0,
        config=True,
        help="""Seconds, in total, for resolving a ref: connecting, TLS and reading the whole ref
        advertisement (capped at 4 MiB); a short sha looked up in a clone gets the same again.
        A server that sends slowly is cut off at this deadline (error ``ref_timeout``, 504).
        Default 30.""",
    )
    image_cache_ttl = Float(
        5.0,
        config=True,
        help="""Seconds the in-memory image index is trusted (default 5). After that, listings
        answer from it while it is refreshed in the background; 0 refreshes on every listing.""",
    )
    reconnect_interval = Float(
        5.0,
        config=True,
        help="Seconds between tries to reach a Docker engine that is down (default 5).",
    )
    last_lines = Int(20, config=True, help="Log lines shown with a failed build (default 20).")

    engine = Instance(DockerEngine)

    @default("engine")
    def _default_engine(self) -> DockerEngine:
        return DockerEngine(parent=self)

    builder = Instance(Builder)

    @default("builder")
    def _default_builder(self) -> Builder:
        return self.builder_class(parent=self, engine=self.engine)

    #: the optional registry (configured by ``c.Registry.*``; without a URL, images stay local)
    registry = Instance(Registry)

    @default("registry")
    def _default_registry(self) -> Registry:
        return Registry(parent=self)

    # ---- lifecycle --------------------------------------------------------------------------------
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # settings read from the environment are checked now, not at the first build request
        self.allowed_repo_patterns, self.allowed_networks  # noqa: B018
        self._builds: OrderedDict[str, Build] = OrderedDict()
        self._active: dict[str, Build] = {}  # image reference -> queued or running build
        self._queue: list[Build] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._processes: dict[str, BuildProcess] = {}
        self._images: dict[str, ImageVersion] = {}
        self._images_at = 0.0
        self._images_lock = asyncio.Lock()
        self._ready = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_error: str | None = None
        self._image_warnings: list[str] = []
        self._all_groups: list[ImageGroup] = []
        self._images_loaded = False
        self._images_refresh: asyncio.Task[None] | None = None

    @property
    def image_warnings(self) -> list[str]:
        """Why the last image listing may be incomplete (e.g. the registry was unreachable)."""
        return list(self._image_warnings)

    @property
    def ready(self) -> bool:
        """Whether the Docker engine answered the last time we asked."""
        return self._ready

    async def start(self) -> None:
        """Load state from Docker; if the engine is down, keep trying in the background."""
        try:
            await self._sync()
        except Unavailable as e:
            self.log.warning(
                "Docker engine unavailable at start (%s); retrying every %gs",
                e,
                self.reconnect_interval,
            )
            self._mark_unavailable(e)

    async def stop(self) -> None:
        """Stop following builds. Build containers keep running; child processes are stopped."""
        self._stopping = True
        for task in (self._reconnect_task, self._images_refresh):
            if task is not None:
                task.cancel()
        for build in list(self._queue):
            self._finish_cancelled(build, "the service stopped")
        if self.builder.kind == "local":
            await asyncio.gather(
                *(p.cancel() for p in self._processes.values()), return_exceptions=True
            )
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.builder.kind == "local":
            for build in list(self._builds.values()):
                self._finish_cancelled(build, "stopped with the service")
        await self.engine.close()
        await self.registry.aclose()

    async def _sync(self) -> None:
        await self.engine.ping()
        await self._refresh_images(force=True)
        for recovered in await self.builder.recover():
            self._adopt(recovered)
        self._ready = True
        self._last_error = None

    def _mark_unavailable(self, error: Exception) -> None:
        self._ready = False
        self._last_error = str(error)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.reconnect_interval)
            try:
                await self._sync()
            except Unavailable:
                continue
            self.log.info("Docker engine reachable again")
            self._schedule()
            return

    async def _engine_call(self, coro: Any) -> Any:
        """Await a Docker call; note an unreachable engine so we reconnect in the background."""
        try:
            return await coro
        except Unavailable as e:
            self._mark_unavailable(e)
            raise

    # ---- recovery ---------------------------------------------------------------------------------
    def _adopt(self, recovered: RecoveredBuild) -> None:
        fields = recovered.fields
        build_id = fields.get("build-id", "")
        if not build_id or build_id in self._builds:
            return
        build = Build(
            id=build_id,
            owner=fields["owner"],
            name=fields["name"],
            repo=fields.get("repo", ""),
            ref=fields.get("ref", ""),
            sha=fields["sha"],
            image=fields.get("image", ""),
            push=fields.get("push") == "1",
            requested_by=fields.get("requested-by", ""),
            created=parse_time(fields.get("created")) or recovered.started or time.time(),
            started=recovered.started,
            state=BuildState.FETCHING,
            recovered=True,
            log=self._new_log(),
        )
        self._builds[build.id] = build
        if recovered.running:
            self._active[build.image] = build
            self.log.info("Following build %s of %s again after a restart", build.id, build.image)
        self._processes[build.id] = recovered.process
        self._running[build.id] = asyncio.create_task(self._follow(build, recovered.process))
        if not recovered.running:
            build.finished = recovered.finished
        self._update_gauges()

    # ---- submitting -------------------------------------------------------------------------------
    def image_for(self, owner: str, name: str, sha: str, ref: str = "") -> str:
        """The image reference a build of ``owner``'s ``name`` at ``sha`` produces."""
        return image_reference(
            self.image_name_template,
            prefix=self.image_prefix,
            owner=owner,
            name=name,
            sha=sha,
            ref=ref,
        )

    async def submit(
        self,
        *,
        repo: str,
        ref: str = "HEAD",
        owner: str,
        name: str | None = None,
        requested_by: str | None = None,
        push: bool = False,
        force: bool = False,
        credentials: Credentials | None = None,
    ) -> SubmitResult:
        """Queue a build, join an identical one in progress, or skip when the image exists."""
        repo = validate_repo_url(repo, self.allowed_repo_patterns)
        ref = validate_ref(ref or "HEAD")
        name = validate_name(name if name else default_name_for_repo(repo))
        owner = validate_owner(owner)
        push = push or (self.always_push and self.registry.configured)
        if push and not self.registry.configured:
            raise InvalidRequest("push was requested but no registry is configured", field="push")
        if not self._ready:
            # one direct try, so a recovered engine is noticed without waiting for the loop
            try:
                await self._sync()
            except Unavailable as e:
                self._mark_unavailable(e)
                raise
        sha = await resolve_ref(
            repo,
            ref,
            credentials=credentials,
            timeout=self.ref_timeout,
            policy=NetPolicy(self.allowed_networks),
        )
        image = self.image_for(owner, name, sha, ref)
        if push:
            self._check_push_target(image)

        active = self._active.get(image)
        if active is not None:
            metrics.SUBMISSIONS.labels("joined").inc()
            return SubmitResult(build=active, joined=True)

        existing = await self._engine_call(self.engine.inspect_image(image))
        if existing is not None:
            fields = parse_labels((existing.get("Config") or {}).get("Labels"))
            if fields is None or fields.get("owner") != owner:
                raise Conflict(
                    f"an image {image} that {owner} did not build exists already; refusing to "
                    "build over it (remove it from the Docker engine first)"
                )
            push_only = False
            if not force:
                if push and not await self._in_registry(image):
                    push_only = True  # built, never pushed (or the push failed): push it now
                else:
                    # the index is fresh enough unless it does not know this image yet
                    await self._refresh_images(force=image not in self._images)
                    metrics.SUBMISSIONS.labels("skipped").inc()
                    return SubmitResult(image=self._group(owner, name))
            previous_image_id = None if push_only else existing.get("Id")
        else:
            previous_image_id = None
            push_only = False
            if not force and self.registry.configured:
                remote = await self._registry_image(image)
                if remote is not None:
                    fields = parse_labels(remote.labels)
                    if fields is None or fields.get("owner") != owner:
                        raise Conflict(
                            f"the registry has an image {image} that {owner} did not build; "
                            "refusing to build over it"
                        )
                    await self._refresh_images(force=True)
                    metrics.SUBMISSIONS.labels("skipped").inc()
                    return SubmitResult(image=self._group(owner, name))

        active = self._active.get(image)  # again: another request may have queued it meanwhile
        if active is not None:
            metrics.SUBMISSIONS.labels("joined").inc()
            return SubmitResult(build=active, joined=True)
        if len(self._queue) >= self.max_queued_builds:
            raise RateLimited(
                f"{len(self._queue)} builds are waiting already; try again later", retry_after=30
            )
        build = Build(
            id=new_build_id(),
            owner=owner,
            name=name,
            repo=repo,
            ref=ref,
            sha=sha,
            image=image,
            push=push,
            requested_by=requested_by or owner,
            credentials=credentials,
            previous_image_id=previous_image_id,
            push_only=push_only,
            log=self._new_log(),
        )
        self._builds[build.id] = build
        self._active[image] = build
        self._queue.append(build)
        metrics.SUBMISSIONS.labels("queued").inc()
        self.log.info("Queued build %s: %s@%s (%s) for %s", build.id, repo, ref, sha[:12], owner)
        self._schedule()
        return SubmitResult(build=build)

    def _new_log(self) -> LogBuffer:
        return LogBuffer(self.max_log_lines)

    # ---- scheduling -------------------------------------------------------------------------------
    def _running_count(self, owner: str | None = None) -> int:
        return sum(
            1
            for build_id in self._running
            if not self._builds[build_id].done
            and (owner is None or self._builds[build_id].owner == owner)
        )

    def _schedule(self) -> None:
        if self._stopping or not self._ready:
            return
        for build in list(self._queue):
            if self._running_count() >= self.max_concurrent_builds:
                break
            if self._running_count(build.owner) >= self.max_builds_per_owner:
                continue
            self._queue.remove(build)
            build.state = BuildState.FETCHING
            build.started = time.time()
            build.log.notify()
            self._running[build.id] = asyncio.create_task(self._run(build))
        self._update_gauges()

    def _update_gauges(self) -> None:
        metrics.QUEUE_LENGTH.set(len(self._queue))
        metrics.BUILDS_IN_PROGRESS.set(self._running_count())

    def queue_position(self, build: Build) -> int | None:
        try:
            return self._queue.index(build)
        except ValueError:
            return None

    async def _run(self, build: Build) -> None:
        if build.push_only:
            build.log.append("pushing", f"{build.image} is built already: pushing it")
            await self._push(build)
            await self._refresh_quietly()
            self._finish(build, exit_code=0)
            return
        try:
            if build.previous_image_id is not None:
                # repo2docker reuses an existing tag instead of building: move it aside for a
                # forced rebuild, under a backup tag that keeps the image (and that listings
                # ignore), and put it back if the rebuild does not succeed (see _complete)
                await self.engine.tag_image(build.previous_image_id, self._backup_tag(build))
                await self.engine.remove_image(build.image)
            process = await self.builder.start(build)
        except R2DError as e:
            if isinstance(e, Unavailable):
                self._mark_unavailable(e)
            build.log.append("failed", f"Could not start the build: {e}")
            await self._complete(build, exit_code=None, error=str(e))
            return
        self._processes[build.id] = process
        if build.cancel_requested:
            await process.cancel()
        await self._follow(build, process)

    async def _follow(self, build: Build, process: BuildProcess) -> None:
        # A CancelledError (the service stopping) propagates without completing the build: a
        # DockerBuilder build goes on and the next service process follows it again.
        error: str | None = None
        exit_code: int | None = None
        try:
            async for raw in process.output():
                self._handle_line(build, raw)
            exit_code = await process.wait()
        except R2DError as e:
            error = f"lost contact with the build: {e}"
            if isinstance(e, Unavailable):
                self._mark_unavailable(e)
        with contextlib.suppress(Exception):
            await process.cleanup()
        await self._complete(build, exit_code, error)

    def _handle_line(self, build: Build, raw: str) -> None:
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError
            message = str(record.get("message", "")).rstrip("\n")
            phase = str(record.get("phase", build.state.value))
        except ValueError:
            message, phase = raw, build.state.value
        if phase == "failed":
            build.error = build.error or short_error(message) or None
        state = _PHASES.get(phase)
        if state is not None and not build.done and state != build.state:
            build.state = state
        for line in message.split("\n") if message else [""]:
            build.log.append(
                phase
                if phase in ("fetching", "building", "pushing", "failed")
                else build.state.value,
                line,
            )

    async def _complete(self, build: Build, exit_code: int | None, error: str | None) -> None:
        try:
            await self._finish_run(build, exit_code, error)
        finally:
            if build.previous_image_id is not None:
                with contextlib.suppress(R2DError):
                    if build.state != BuildState.BUILT:
                        await self.engine.tag_image(build.previous_image_id, build.image)
                    await self.engine.remove_image(self._backup_tag(build))
                    await self._refresh_images(force=True)
            build.previous_image_id = None

    @staticmethod
    def _backup_tag(build: Build) -> str:
        return f"{build.repository}:r2d-previous-{build.id}"

    async def _finish_run(self, build: Build, exit_code: int | None, error: str | None) -> None:
        if build.cancel_requested:
            self._finish_cancelled(build, "cancelled")
            try:
                await self.builder.forget(build)
            except R2DError as e:
                self.log.warning(
                    "Could not remove what is left of cancelled build %s: %s", build.id, e
                )
            return
        if exit_code == 0 and error is None:
            found = None
            with contextlib.suppress(Unavailable):
                found = await self.engine.inspect_image(build.image)
            if found is not None:
                if build.push and not build.cancel_requested:
                    await self._push(build)
                # the index knows the image before anyone hears the build is done
                await self._refresh_quietly()
                self._finish(build, exit_code=0)
                return
            error = f"repo2docker finished but the image {build.image} is not in the Docker engine"
        if error is None:
            error = f"repo2docker exited with status {exit_code}"
        self._finish(build, exit_code=exit_code, error=error)

    # ---- registry ---------------------------------------------------------------------------------
    def _check_push_target(self, image: str) -> None:
        domain = parse_reference(image).domain
        if domain != self.registry.host:
            raise InvalidRequest(
                f"images are named {image}, which is not in the registry {self.registry.host}: set "
                f"c.BuildManager.image_prefix to start with it, e.g. '{self.registry.host}/r2d-'",
                field="push",
            )

    def _registry_prefix(self) -> str:
        """The repository-name prefix our images have inside the registry (for the catalog)."""
        host = self.registry.host
        if not self.image_name_template.startswith("{prefix}"):
            return ""
        prefix = self.image_prefix
        return prefix[len(host) + 1 :] if host and prefix.startswith(host + "/") else ""

    def _registry_location(self, image: str) -> tuple[str, str] | None:
        """(path, tag) of ``image`` in the configured registry, or None if it is not there."""
        parsed = parse_reference(image)
        if parsed.domain != self.registry.host or not parsed.tag:
            return None
        return parsed.path, parsed.tag

    async def _registry_image(self, image: str) -> Any:
        """The registry's image for ``image``, or None (also when the registry is unreachable)."""
        location = self._registry_location(image)
        if location is None:
            return None
        try:
            return await self.registry.client().image(*location)
        except NotFound:
            return None
        except R2DError as e:
            self.log.warning("Registry lookup of %s failed: %s", image, e)
            return None

    async def _in_registry(self, image: str) -> bool:
        location = self._registry_location(image)
        if location is None:
            return False
        try:
            await self.registry.client().digest(*location)
            return True
        except R2DError:
            return False

    async def _push(self, build: Build) -> None:
        """Push the built image through the engine; a failure leaves the build built, not pushed."""
        build.state = BuildState.PUSHING
        build.log.notify()
        parsed = parse_reference(build.image)
        build.log.append("pushing", f"Pushing {build.image}")
        seen: dict[str, str] = {}
        try:
            credentials = self.registry.credentials()
            auth = {"username": credentials[0], "password": credentials[1]} if credentials else None
            async for record in self.engine.push_image(
                parsed.repository, parsed.tag or "latest", auth
            ):
                if record.get("error"):
                    raise Unavailable(f"push failed: {record['error']}")
                status, layer = record.get("status", ""), record.get("id", "")
                # one line per layer state ("Preparing", "Pushed", ...), not per progress tick
                if (
                    status
                    and seen.get(layer) != status
                    and not (record.get("progressDetail") or {}).get("current")
                ):
                    seen[layer] = status
                    build.log.append("pushing", f"{layer}: {status}" if layer else status)
            self.registry.client().invalidate(parsed.path)
            build.push_error = None
            build.log.append("pushing", f"Pushed {build.image}")
        except R2DError as e:
            build.push_error = str(e)
            build.log.append(
                "pushing",
                f"Push failed: {e} (the image is built locally; request the build again with push to retry)",
            )

    def _failed_step(self, build: Build) -> str | None:
        for line in reversed(build.log.lines(max(0, build.log.total - 400))):
            if _STEP_RE.match(line.message):
                return line.message.strip()
        return None

    def _finish(self, build: Build, *, exit_code: int | None, error: str | None = None) -> None:
        build.exit_code = exit_code
        build.finished = build.finished if build.recovered and build.finished else time.time()
        if error is None:
            build.state = BuildState.BUILT
            build.log.append("built", f"Built {build.image}")
        else:
            build.state = BuildState.FAILED
            build.failed_step = self._failed_step(build)
            if build.error is None or build.error == error or not build.error:
                build.error = error
            elif error not in build.error:
                build.error = f"{build.error} ({error})"
        self._release(build)

    def _finish_cancelled(self, build: Build, reason: str) -> None:
        if build.done:
            return
        build.state = BuildState.CANCELLED
        build.finished = time.time()
        build.error = None
        if not build.log.closed:
            build.log.append("cancelled", f"Build {reason}")
        if build in self._queue:
            self._queue.remove(build)
        self._release(build)

    def _release(self, build: Build) -> None:
        outcome = build.state.value
        metrics.BUILDS.labels(outcome).inc()
        if build.started and build.finished and not build.recovered:
            metrics.BUILD_DURATION.labels(outcome).observe(max(0.0, build.finished - build.started))
        if not build.log.closed:
            build.log.close()
        if self._active.get(build.image) is build:
            del self._active[build.image]
        self._processes.pop(build.id, None)
        self._running.pop(build.id, None)
        build.credentials = None  # not needed any more: drop the secret from memory
        self.log.info(
            "Build %s %s%s", build.id, build.state.value, f": {build.error}" if build.error else ""
        )
        self._trim_history()
        self._schedule()

    def _trim_history(self) -> None:
        done = [b for b in self._builds.values() if b.done]
        for build in done[: max(0, len(done) - self.build_history)]:
            del self._builds[build.id]
            task = asyncio.ensure_future(self.builder.forget(build))
            task.add_done_callback(lambda t: t.exception())

    # ---- builds: queries and cancel ----------------------------------------------------------------
    def get_build(self, build_id: str) -> Build:
        build = self._builds.get(build_id)
        if build is None:
            raise NotFound(f"no build {build_id!r}")
        return build

    def list_builds(
        self, owners: Iterable[str] | None = None, states: Iterable[str] | None = None
    ) -> list[Build]:
        """Builds (in progress and recent), newest first, optionally filtered."""
        owner_set = set(owners) if owners is not None else None
        state_set = {BuildState(s) for s in states} if states is not None else None
        builds = [
            b
            for b in self._builds.values()
            if (owner_set is None or b.owner in owner_set)
            and (state_set is None or b.state in state_set)
        ]
        builds.sort(key=lambda b: b.created, reverse=True)
        return builds

    async def cancel(self, build_id: str, by: str | None = None, wait: float = 15.0) -> Build:
        """Cancel a queued or running build; wait up to ``wait`` seconds for it to stop."""
        build = self.get_build(build_id)
        if build.done:
            raise Conflict(f"build {build_id} is {build.state.value} already")
        build.cancel_requested = True
        reason = f"cancelled by {by}" if by else "cancelled"
        if build in self._queue:
            self._finish_cancelled(build, reason)
            return build
        process = self._processes.get(build.id)
        if process is not None:
            build.log.append(build.state.value, f"Cancelling ({reason})")
            await process.cancel()
        task = self._running.get(build.id)
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        return build

    # ---- images -----------------------------------------------------------------------------------
    async def _refresh_images(self, force: bool = False) -> None:
        """Bring the image index up to date with Docker (and the registry).

        A stale index is refreshed in the background while callers get the current one
        (stale-while-revalidate), so listings never wait for Docker; ``force`` waits.
        """
        if not force and time.monotonic() - self._images_at < self.image_cache_ttl:
            return
        if not force and self._images_loaded and self.image_cache_ttl > 0:
            if self._images_refresh is None or self._images_refresh.done():
                self._images_refresh = asyncio.create_task(self._refresh_quietly(force=False))
            return
        await self._load_images(force)

    async def _refresh_quietly(self, force: bool = True) -> None:
        """Refresh the index; a failure is logged (listings report it), not raised."""
        try:
            await self._load_images(force)
        except R2DError as e:
            self.log.warning("Refreshing the image index failed: %s", e)

    async def _load_images(self, force: bool) -> None:
        async with self._images_lock:
            if not force and time.monotonic() - self._images_at < self.image_cache_ttl:
                return
            summaries = await self._engine_call(self.engine.list_images())
            images: dict[str, ImageVersion] = {}
            for summary in summaries:
                for tag in summary.get("RepoTags") or []:
                    # Only the name our template gives these labels counts: an image labelled as
                    # alice's but tagged elsewhere (by hand, or with an older template) is ignored.
                    fields = self._owned_fields(summary.get("Labels"), tag)
                    if fields is None:
                        continue
                    images[tag] = self._version(
                        fields,
                        tag,
                        created=float(summary.get("Created") or 0),
                        size=summary.get("Size"),
                        local=True,
                        image_id=summary.get("Id"),
                    )
            warnings: list[str] = []
            if self.registry.configured:
                try:
                    remote = await self.registry.client().list_images(self._registry_prefix())
                except R2DError as e:
                    remote = []
                    warnings.append(
                        f"registry {self.registry.host} unavailable, showing local images only: {e}"
                    )
                for item in remote:
                    self._merge_remote(images, item)
            self._images = images
            self._all_groups = self._build_groups(images)
            self._images_loaded = True
            self._image_warnings = warnings
            # an incomplete listing is not trusted for the TTL: the next one asks again
            self._images_at = 0.0 if warnings else time.monotonic()

    def _merge_remote(self, images: dict[str, ImageVersion], item: Any) -> None:
        """Add a registry image to the index (or mark the local one pushed), if it is ours."""
        fields = self._owned_fields(item.labels, item.reference)
        if fields is None:
            return
        version = images.get(item.reference)
        if version is not None:
            version.pushed = True
            version.digest = item.digest
            return
        images[item.reference] = self._version(
            fields,
            item.reference,
            created=item.created.timestamp() if item.created else None,
            size=item.size,
            local=False,
            pushed=True,
            digest=item.digest,
        )

    def _owned_fields(self, labels: dict[str, str] | None, reference: str) -> dict[str, str] | None:
        """Our label fields, if ``reference`` is the very name our template gives them."""
        fields = parse_labels(labels)
        if fields is None:
            return None
        try:
            expected = self.image_for(
                fields["owner"], fields["name"], fields["sha"], fields.get("ref", "")
            )
        except InvalidRequest:
            return None
        return fields if reference == expected else None

    @staticmethod
    def _version(
        fields: dict[str, str], reference: str, *, created: float | None, **found: Any
    ) -> ImageVersion:
        return ImageVersion(
            reference=reference,
            owner=fields["owner"],
            name=fields["name"],
            repo=fields.get("repo", ""),
            ref=fields.get("ref", ""),
            sha=fields["sha"],
            created=parse_time(fields.get("created")) or created,
            build_id=fields.get("build-id"),
            **found,
        )

    @staticmethod
    def _build_groups(images: dict[str, ImageVersion]) -> list[ImageGroup]:
        """Versions grouped per (owner, name), newest first (once per refresh, not per request)."""
        grouped: dict[tuple[str, str], list[ImageVersion]] = {}
        for version in images.values():
            grouped.setdefault((version.owner, version.name), []).append(version)
        groups = []
        for (owner, name), versions in grouped.items():
            versions.sort(key=lambda v: v.created or 0, reverse=True)
            groups.append(ImageGroup(owner, name, versions[0].repository, versions))
        groups.sort(key=lambda g: g.newest.created or 0, reverse=True)
        return groups

    def _groups(self, owners: set[str] | None = None) -> list[ImageGroup]:
        if owners is None:
            return list(self._all_groups)
        return [g for g in self._all_groups if g.owner in owners]

    def _group(self, owner: str, name: str) -> ImageGroup:
        groups = [g for g in self._groups({owner}) if g.name == name]
        if not groups:
            raise NotFound(f"{owner} has no image {name!r}")
        return groups[0]

    async def list_images(self, owners: Iterable[str] | None = None) -> list[ImageGroup]:
        """Built images, grouped per (owner, name), newest first."""
        await self._refresh_images()
        return self._groups(set(owners) if owners is not None else None)

    async def get_image(self, owner: str, name: str) -> ImageGroup:
        await self._refresh_images()
        return self._group(owner, name)

    async def delete_image(
        self, owner: str, name: str, tag: str | None = None
    ) -> dict[str, list[Any]]:
        """Delete all versions of an image, or the one with ``tag``; report what failed."""
        await self._refresh_images(force=True)
        group = self._group(owner, name)
        versions = [v for v in group.versions if tag is None or v.tag == tag]
        if not versions:
            raise NotFound(f"{owner}'s image {name!r} has no version {tag!r}")
        deleted: list[str] = []
        errors: list[dict[str, str]] = []
        for version in versions:
            ok = True
            if version.local:
                try:
                    await self._engine_call(self.engine.remove_image(version.reference))
                except NotFound:
                    pass
                except R2DError as e:
                    ok = False
                    errors.append({"image": version.reference, "where": "local", "message": str(e)})
            if version.pushed and self.registry.configured:
                parsed = parse_reference(version.reference)
                try:
                    await self.registry.client().delete(parsed.path, parsed.tag or "latest")
                    self.registry.client().invalidate(parsed.path)
                except NotFound:
                    pass
                except R2DError as e:
                    ok = False
                    errors.append(
                        {"image": version.reference, "where": "registry", "message": str(e)}
                    )
            if ok:
                deleted.append(version.reference)
        await self._refresh_images(force=True)
        return {"deleted": deleted, "errors": errors}

    # ---- health -----------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        try:
            await self.engine.ping()
            docker_ok = True
        except Unavailable as e:
            self._mark_unavailable(e)
            docker_ok = False
        registry_ok: bool | None = None
        if self.registry.configured:
            try:
                await self.registry.client().ping()
                registry_ok = True
            except R2DError:
                registry_ok = False
        return {
            "ok": docker_ok,
            "docker": docker_ok,
            "registry": registry_ok,
            "error": None if docker_ok else self._last_error,
        }
