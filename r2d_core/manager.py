"""The build manager: the one core API every adapter translates (a small façade).

State lives in memory and in Docker only (no database, no state files). The work is done by
three parts, each in its own module:

* :mod:`r2d_core.scheduler` — builds waiting for a slot, the per-owner and global limits, one
  build per image (a second request joins it);
* :mod:`r2d_core.runner` — running one build: start repo2docker, follow its log, push, finish;
* :mod:`r2d_core.catalog` — the image index (Docker labels merged with the registry), who owns
  which reference, deletes.

The manager holds the settings (every ``c.BuildManager.*`` trait, defined in
:mod:`r2d_core.manager_config`), the build history, the
connection to the engine (reconnecting when it comes back), recovery after a restart (with
:class:`~r2d_core.builders.DockerBuilder`, builds live in labelled containers, so a new manager
finds running builds, re-reads their logs and follows them to the end), and two hook points for
an image lifecycle policy: :meth:`BuildManager.before_queue` and :meth:`BuildManager.after_built`.

The manager never checks *who* may do something: adapters do that with :mod:`r2d_core.scopes` and
pass the owner explicitly. It does enforce what holds for everybody: valid inputs, an image never
built over another owner's image, concurrency limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from . import metrics
from .archive import BuildArchive
from .builders import BuildProcess, RecoveredBuild
from .catalog import ImageCatalog
from .errors import Conflict, InvalidRequest, NotFound, R2DError, Unavailable
from .logs import LogBuffer
from .manager_config import BuildManagerConfig
from .models import (
    Build,
    BuildState,
    Credentials,
    ImageGroup,
    SubmitResult,
    new_build_id,
)
from .netpolicy import NetPolicy
from .options import options_digest, validate_annotations
from .record_retention import delete_image_records
from .refs import resolve_ref
from .runner import BuildRunner, recovered_build
from .scheduler import Scheduler
from .sizes import check_settings
from .validation import (
    default_name_for_repo,
    validate_name,
    validate_owner,
    validate_ref,
    validate_repo_url,
)

__all__ = ["BuildManager"]


class BuildManager(BuildManagerConfig):
    """Queue, run, follow, cancel and list builds; list and delete images."""

    # ---- lifecycle --------------------------------------------------------------------------------
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # settings read from the environment are checked now, not at the first build request
        check_settings(
            self, self.engine, self.lifecycle, self.builder, self.registry, self.build_options
        )
        self._started_at = time.time()
        self._builds: OrderedDict[str, Build] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # build id -> the task running/following it
        self._ready = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._restore_task: asyncio.TimerHandle | None = None
        self._stopping = False
        self._last_error: str | None = None
        self.scheduler = Scheduler(self)
        self.catalog = ImageCatalog(
            settings=self,
            engine=self.engine,
            registry=self.registry,
            engine_call=self._engine_call,
            log=self.log,
        )
        self.archive = BuildArchive(
            settings=self,
            registry=self.registry,
            location=self.catalog.registry_location,
            registry_prefix=self.catalog.registry_prefix,
            log=self.log,
            image_for=self.catalog.image_for,
        )
        self.catalog.archive = self.archive
        self.archive.on_unattached = self.lifecycle.record_stored
        self.runner = BuildRunner(
            settings=self,
            engine=self.engine,
            builder=self.builder,
            registry=self.registry,
            catalog=self.catalog,
            on_done=self._release,
            on_unavailable=self._mark_unavailable,
            log=self.log,
        )

    @property
    def _processes(self) -> dict[str, BuildProcess]:
        """build id -> repo2docker process (the TLJH plugin stops local ones at Hub exit)."""
        return self.runner.processes

    @property
    def image_warnings(self) -> list[str]:
        """Why the last image listing may be incomplete (e.g. the registry was unreachable)."""
        return self.catalog.warnings

    @property
    def ready(self) -> bool:
        """Whether the Docker engine answered the last time we asked."""
        return self._ready

    async def start(self) -> None:
        """Load state from Docker; if the engine is down, keep trying in the background."""
        await self.lifecycle.start()
        try:
            await self._sync()
        except Unavailable as e:
            self.log.warning(
                "Docker engine unavailable at start (%s); retrying every %gs",
                e,
                self.reconnect_interval,
            )
            self._mark_unavailable(e)
        await self._restore_archive()

    async def _restore_archive(self) -> None:
        """Builds of pushed images from the registry's records (a fresh engine has none)."""
        try:
            restored = await self.archive.restore(set(self._builds))
        except R2DError as e:
            self.log.warning(
                "Could not read build records from the registry (%s); retrying in %gs",
                e,
                self.reconnect_interval * 6,
            )
            if not self._stopping:
                self._restore_task = asyncio.get_running_loop().call_later(
                    self.reconnect_interval * 6,
                    lambda: asyncio.ensure_future(self._restore_archive()),
                )
            return
        for build in restored:
            if build.id not in self._builds:
                self._builds[build.id] = build
        self._builds = OrderedDict(sorted(self._builds.items(), key=lambda kv: kv[1].created))
        if restored:
            self.log.info(
                "Restored %d builds from the registry in %.2fs",
                len(restored),
                self.archive.last_restore.get("seconds", 0.0),
            )

    async def stop(self) -> None:
        """Stop following builds. Build containers keep running; child processes are stopped."""
        self._stopping = True
        await self.lifecycle.stop()
        self.archive.stopping()  # no more retries; builds the stop cancels are still stored
        if self._restore_task is not None:
            self._restore_task.cancel()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        self.catalog.close()
        for build in self.scheduler.waiting:
            self.runner.finish_cancelled(build, "the service stopped")
        if self.builder.kind == "local":
            await asyncio.gather(
                *(p.cancel() for p in self._processes.values()), return_exceptions=True
            )
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.builder.kind == "local":
            for build in list(self._builds.values()):
                self.runner.finish_cancelled(build, "stopped with the service")
        await self.archive.stop()  # flush records still waiting, within record_flush_timeout
        await self.engine.close()
        await self.registry.aclose()

    async def _sync(self) -> None:
        t0 = time.monotonic()
        await self.engine.ping()
        took: dict[str, float] = {}

        async def timed(name: str, work: Any) -> Any:
            try:
                return await work
            finally:
                took[name] = (time.monotonic() - t0) * 1000

        # at once, not one after the other: the engine answers both in parallel (a restart with
        # 1,000 images and 200 build containers answers its first request sooner); both end
        # before a failure of either is raised
        results = await asyncio.gather(
            timed("images", self.catalog.refresh(force=True)),
            timed("builds", self.builder.recover()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        found = results[1]
        for recovered in found:
            self._adopt(recovered)
        self.log.info(
            "Image index loaded in %.0f ms; %d build(s) found in Docker in %.0f ms",
            took["images"],
            len(found),
            took["builds"],
        )
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
        if not build_id:
            return
        known = self._builds.get(build_id)
        if known is not None:
            if not (known.done and recovered.running):
                return  # ours already (its task follows it, re-attaching after a lost stream)
            if known.state == BuildState.CANCELLED or known.stop_reason:
                # we stopped it, but the kill did not reach the engine: again
                task = asyncio.ensure_future(recovered.process.cancel())
                task.add_done_callback(lambda t: t.exception())
                return
            # given up for lost while its container kept building: follow it again
            del self._builds[build_id]
        build = recovered_build(recovered, self._new_log())
        self._builds[build.id] = build
        if not recovered.running and build.push:
            self.archive.ended_before_start(build.id)  # its record may be missing: stored then
        if recovered.running:
            self.log.info("Following build %s of %s again after a restart", build.id, build.image)
        self.scheduler.hold(build, active=recovered.running)
        self.runner.processes[build.id] = recovered.process
        self._tasks[build.id] = asyncio.create_task(
            self.runner.follow_recovered(build, recovered.process, recovered.running)
        )
        self._update_gauges()

    # ---- submitting -------------------------------------------------------------------------------
    def image_for(
        self, owner: str, name: str, sha: str, ref: str = "", options_digest: str = ""
    ) -> str:
        """The image reference a build of ``owner``'s ``name`` at ``sha`` produces."""
        return self.catalog.image_for(owner, name, sha, ref, options_digest)

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
        options: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
        may_appendix: bool = False,
    ) -> SubmitResult:
        """Queue a build, join an identical one in progress, or skip when the image exists.

        ``options`` are repo2docker options under ``c.BuildOptions`` (``may_appendix``: the
        caller holds the appendix scope; adapters decide); ``annotations`` are stored as image
        labels, never interpreted (see :mod:`r2d_core.options`). A request that joins a build in
        progress or skips an existing image does not change that image's annotations.
        """
        repo = validate_repo_url(repo, self.allowed_repo_patterns)
        effective = self.build_options.effective(options, may_appendix=may_appendix)
        annotations = validate_annotations(annotations)
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
        image = self.image_for(owner, name, sha, ref, options_digest(effective))
        if push:
            self.catalog.check_push_target(image)

        active = self.scheduler.active_build(image)
        if active is not None:
            self.lifecycle.touch(image)
            metrics.SUBMISSIONS.labels("joined").inc()
            return SubmitResult(build=active, joined=True)

        existing = await self._engine_call(self.engine.inspect_image(image))
        if existing is not None:
            if self.catalog.owner_of((existing.get("Config") or {}).get("Labels")) != owner:
                raise Conflict(
                    f"an image {image} that {owner} did not build exists already; refusing to "
                    "build over it (remove it from the Docker engine first)"
                )
            push_only = False
            if not force:
                if push and not await self.catalog.in_registry(image):
                    push_only = True  # built, never pushed (or the push failed): push it now
                else:
                    # the index is fresh enough unless it does not know this image yet
                    await self.catalog.refresh(force=not self.catalog.knows(image))
                    self.lifecycle.touch(image)
                    metrics.SUBMISSIONS.labels("skipped").inc()
                    return SubmitResult(image=self.catalog.group(owner, name), reference=image)
            previous_image_id = None if push_only else existing.get("Id")
        else:
            previous_image_id = None
            push_only = False
            if not force and self.registry.configured:
                remote = await self.catalog.registry_image(image)
                if remote is not None:
                    if self.catalog.owner_of(remote.labels) != owner:
                        raise Conflict(
                            f"the registry has an image {image} that {owner} did not build; "
                            "refusing to build over it"
                        )
                    await self.catalog.refresh(force=True)
                    self.lifecycle.touch(image)
                    metrics.SUBMISSIONS.labels("skipped").inc()
                    return SubmitResult(image=self.catalog.group(owner, name), reference=image)

        await self.before_queue(owner, image)
        active = self.scheduler.active_build(image)  # again: another request may have queued it
        if active is not None:
            self.lifecycle.touch(image)
            metrics.SUBMISSIONS.labels("joined").inc()
            return SubmitResult(build=active, joined=True)
        self.scheduler.check_room(owner)
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
            options=effective,
            annotations=annotations,
        )
        self._builds[build.id] = build
        self.scheduler.enqueue(build)
        metrics.SUBMISSIONS.labels("queued").inc()
        self.log.info("Queued build %s: %s@%s (%s) for %s", build.id, repo, ref, sha[:12], owner)
        self._schedule()
        return SubmitResult(build=build)

    def _new_log(self) -> LogBuffer:
        return LogBuffer(
            self.max_log_bytes, max_line_bytes=self.max_log_line_bytes, budget=self.log_budget
        )

    # ---- hooks for an image lifecycle policy -------------------------------------------------------
    async def before_queue(self, owner: str, image: str) -> None:
        """Called by :meth:`submit` right before a new build of ``image`` for ``owner`` is queued
        (after validation, ref resolution and the "built already"/"join" checks; never for a
        request that joins or skips). Raise an :class:`~r2d_core.errors.R2DError` (e.g.
        ``RateLimited``, ``Unavailable``) to refuse the build: the adapters answer with its status.
        Default: the lifecycle policy's quotas and disk guard."""
        await self.lifecycle.check_submit(owner, image)
        self.lifecycle.touch(image)

    def after_built(self, build: Build) -> None:
        """Called once when ``build`` ended ``built`` (its image is in the index already), before
        the next waiting build starts — also for builds found again after a restart
        (``build.recovered``; their image may be gone). Must not block: start a task for slow
        work; an exception is logged, not raised. Default: the lifecycle policy's retention
        and build cache check, in a task."""
        self.lifecycle.build_done(build)

    async def forget_build(self, build: Build) -> None:
        """Drop a finished build from memory and its build container (and log) from Docker."""
        if not build.done:
            raise Conflict(f"build {build.id} is {build.state.value}, not finished")
        self._builds.pop(build.id, None)
        await self.builder.forget(build)

    # ---- scheduling -------------------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._stopping or not self._ready:
            return
        for build in self.scheduler.startable():
            build.state = BuildState.FETCHING
            build.started = time.time()
            build.log.notify()
            self._tasks[build.id] = asyncio.create_task(self.runner.run(build))
        self._update_gauges()

    def _update_gauges(self) -> None:
        metrics.QUEUE_LENGTH.set(self.scheduler.waiting_count())
        metrics.BUILDS_IN_PROGRESS.set(self.scheduler.running_count())

    def queue_position(self, build: Build) -> int | None:
        return self.scheduler.queue_position(build)

    def _release(self, build: Build) -> None:
        """A build is done (``BuildRunner.on_done``): free its slot, start what waits."""
        outcome = build.state.value
        # counted by the process that saw it end: one found again after a restart that had
        # ended before this process started (its container exited) is not counted again,
        # which made rate(r2d_builds_total) spike at every restart
        if not (build.recovered and build.finished and build.finished < self._started_at):
            metrics.BUILDS.labels(outcome).inc()
        if build.started and build.finished and not build.recovered:
            metrics.BUILD_DURATION.labels(outcome).observe(max(0.0, build.finished - build.started))
        if not build.log.closed:
            build.log.close()
        self.scheduler.release(build)
        self.runner.processes.pop(build.id, None)
        self._tasks.pop(build.id, None)
        build.credentials = None  # not needed any more: drop the secret from memory
        self.log.info(
            "Build %s %s%s", build.id, build.state.value, f": {build.error}" if build.error else ""
        )
        self.archive.build_done(build)  # its record and log to the registry, in a task
        if build.state == BuildState.BUILT:
            try:
                self.after_built(build)
            except Exception:
                self.log.exception("after_built hook failed for build %s", build.id)
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
        if self.scheduler.is_waiting(build):
            self.runner.finish_cancelled(build, reason)
            return build
        build.log.append(build.state.value, f"Cancelling ({reason})")
        await self.runner.stop(build)  # its repo2docker process, or its push
        task = self._tasks.get(build.id)
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        return build

    # ---- images -----------------------------------------------------------------------------------
    async def list_images(self, owners: Iterable[str] | None = None) -> list[ImageGroup]:
        """Built images, grouped per (owner, name), newest first."""
        return await self.catalog.list_images(owners)

    async def get_image(self, owner: str, name: str) -> ImageGroup:
        return await self.catalog.get_image(owner, name)

    async def delete_image(
        self, owner: str, name: str, tag: str | None = None
    ) -> dict[str, list[Any]]:
        """Delete all versions of an image, or the one with ``tag``; report what failed.

        A version being rebuilt (forced) is deleted too: its backup is not put back when the
        rebuild does not succeed, and it counts as deleted even though listings do not show it
        while it is moved aside.
        """
        rebuilding = self.scheduler.forced_rebuilds(owner, name, tag)
        for build in rebuilding:
            build.restore_previous = False
        repositories = self._repositories_of(owner, name) if tag is None else set()
        try:
            result = await self.catalog.delete_image(owner, name, tag)
        except NotFound:
            # no version; its builds' records may remain (failed builds): those go all the same
            if not (rebuilding or await self._delete_records(repositories, everything=True)):
                raise
            result = {"deleted": [], "errors": []}
        else:
            if tag is None:
                await self._delete_records(repositories, everything=not result["errors"])
        for build in rebuilding:
            if build.image not in result["deleted"]:
                result["deleted"].append(build.image)
        target = "image" if tag is None else "version"
        metrics.IMAGE_DELETES.labels(target, "deleted").inc(len(result["deleted"]))
        metrics.IMAGE_DELETES.labels(target, "failed").inc(len(result["errors"]))
        return result

    def _repositories_of(self, owner: str, name: str) -> set[str]:
        """The registry repositories ``owner``'s image ``name`` lives in (one, by the naming
        template; more only with ``{sha}`` before the tag): from its versions, its builds in
        memory and the template."""
        images = {b.image for b in self._builds.values() if b.owner == owner and b.name == name}
        with contextlib.suppress(NotFound):
            images |= {v.reference for v in self.catalog.group(owner, name).versions}
        with contextlib.suppress(R2DError):
            images.add(self.image_for(owner, name, "0" * 40))
        locations = (self.catalog.registry_location(image) for image in images if image)
        return {location[0] for location in locations if location is not None}

    async def _delete_records(self, repositories: set[str], *, everything: bool) -> int:
        """A whole image was deleted: its build records in the registry go too (those of failed
        and cancelled builds, which no version holds). Returns how many; failures are logged."""
        if not (repositories and self.registry.configured):
            return 0
        for repository in repositories:
            await self.archive.forget_repository(repository)
        try:
            return await delete_image_records(
                self.archive.store(), self.log, repositories, everything=everything
            )
        except R2DError as e:
            self.log.warning("Could not delete the build records of %s: %s", repositories, e)
            return 0

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
