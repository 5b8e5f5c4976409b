"""The build runner: run one build to its end — start, follow, push, finish.

:class:`BuildRunner` starts repo2docker through the :class:`~r2d_core.builders.Builder`, turns its
JSON log lines into the build's state and log, pushes a built image through the engine (never from
inside repo2docker, so a registry outage never loses a build), puts a forced rebuild's previous
image back when the rebuild does not succeed, and decides the outcome. Every ending goes through
``on_done`` (the manager frees the slot and starts the next build).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from .builders import Builder, BuildProcess, RecoveredBuild
from .catalog import ImageCatalog
from .engine import DockerEngine
from .errors import R2DError, Unavailable
from .fetch import EXIT_PHASE
from .logs import LogBuffer
from .models import Build, BuildState, label_options, parse_time, short_error
from .naming import parse_reference
from .registry.config import Registry

__all__ = ["BuildRunner", "RunnerSettings", "recovered_build"]

# A BuildKit step header in `--progress plain` output, e.g. "#7 [3/4] RUN pip install ...".
_STEP_RE = re.compile(r"^#\d+ \[[^\]]+\] \S")
# BuildKit has tagged the image ("#12 naming to docker.io/library/r2d-x:abc done"): repo2docker
# only exits after this
_NAMED_RE = re.compile(r"^#\d+ naming to \S+ done$")


def _exit_line(raw: str) -> tuple[str, int] | None:
    """(nonce, status) of a fetch stage exit line (:data:`~r2d_core.fetch.EXIT_PHASE`), else
    None (any other line, a forged one of another shape included)."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("phase") != EXIT_PHASE:
        return None
    nonce, status = record.get("nonce"), record.get("status")
    if not isinstance(nonce, str) or type(status) is not int or not 0 <= status <= 255:
        return ("", 0)  # hidden like a real one, never trusted
    return nonce, status


#: a log stream that breaks again and again although the engine answers is given up on
_MAX_FRUITLESS_REATTACHES = 10
#: a build whose process the kernel killed for memory (live, or found again after a restart)
OOM_ERROR = "the build ran out of memory (killed by the kernel's OOM killer)"
_PHASES = {
    "fetching": BuildState.FETCHING,
    "building": BuildState.BUILDING,
    "pushing": BuildState.PUSHING,
}


def recovered_build(recovered: RecoveredBuild, log: LogBuffer) -> Build:
    """The build a build container found after a restart stands for, from its labels and state.

    A finished one shows its real outcome at once (exit status, OOM), before its log is re-read.
    """
    fields = recovered.fields
    build = Build(
        id=fields["build-id"],
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
        log=log,
    )
    build.options, build.annotations = label_options(fields)
    if not recovered.running:
        build.finished = recovered.finished
        build.exit_code = recovered.exit_code
        build.state = BuildState.BUILT if recovered.exit_code == 0 else BuildState.FAILED
        if recovered.oom_killed:
            build.error = OOM_ERROR
    return build


class RunnerSettings(Protocol):
    """The settings the runner reads (live): BuildManager's traits of the same names."""

    build_timeout: float
    build_inactivity_timeout: float
    reconnect_interval: float


class BuildRunner:
    """Runs and follows builds; reports each ending to ``on_done``.

    Every build task goes through :meth:`run` or :meth:`follow_recovered`, which catch whatever
    goes wrong (a bug, an unexpected library exception): the build ends ``failed`` with an
    internal error, its process is stopped and its slot freed — never a build left running forever.
    """

    def __init__(
        self,
        *,
        settings: RunnerSettings,
        engine: DockerEngine,
        builder: Builder,
        registry: Registry,
        catalog: ImageCatalog,
        on_done: Callable[[Build], None],
        on_unavailable: Callable[[Exception], None],
        log: Any,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.builder = builder
        self.registry = registry
        self.catalog = catalog
        self.on_done = on_done
        self.on_unavailable = on_unavailable
        self.log = log
        #: build id -> its repo2docker process (local child or build container)
        self.processes: dict[str, BuildProcess] = {}
        #: build id -> the task pushing its image (a cancel or a time limit stops it)
        self._pushes: dict[str, asyncio.Task[None]] = {}
        #: finished builds found after a restart whose logs are re-read at the same time
        self._reread_limit = asyncio.Semaphore(4)
        #: build id -> the inspect of its image, asked as soon as BuildKit named it (see _read)
        self._probes: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    # ---- the task boundary ------------------------------------------------------------------------
    async def run(self, build: Build) -> None:
        """Run a build that just left the queue, to its end."""
        await self._guarded(build, self._run(build))

    async def follow_recovered(self, build: Build, process: BuildProcess, running: bool) -> None:
        """Follow a build found again after a restart: re-read its log, finish it.

        A build that was still running is held to the time limits (the total from its start);
        one that had ended before the restart keeps the outcome it had (no second push).
        Finished builds' logs are re-read a few at a time (their outcome shows at once): hundreds
        of them after a restart do not crowd out the first requests.
        """
        if running:
            await self._guarded(build, self.follow(build, process))
            return
        async with self._reread_limit:
            await self._guarded(build, self.follow(build, process, ended=True))

    async def _guarded(self, build: Build, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise  # the service is stopping: a build container goes on, the next process follows
        except Exception as e:
            self.log.exception("Internal error in build %s", build.id)
            if build.log.closed:
                return  # it had ended and was released already
            if build.done:
                # a build that had ended before a restart: keep its outcome, release it
                self.on_done(build)
                return
            process = self.processes.get(build.id)
            if process is not None:
                with contextlib.suppress(Exception):
                    await process.cancel()
            if not build.log.closed:
                build.log.append(
                    "failed", f"Internal error: {type(e).__name__} (see the service log)"
                )
            self.finish(build, exit_code=None, error=f"internal error: {type(e).__name__}: {e}")
            await self._restore_backup(build)

    # ---- running ----------------------------------------------------------------------------------
    async def _run(self, build: Build) -> None:
        if build.push_only:
            build.log.append("pushing", f"{build.image} is built already: pushing it")
            watchdog = asyncio.create_task(self._watch(build))
            try:
                await self.push(build)
            finally:
                watchdog.cancel()
            await self.catalog.refresh_quietly()
            if build.cancel_requested:
                self.finish_cancelled(build, "cancelled")
            else:
                self.finish(build, exit_code=0)
            return
        try:
            if build.previous_image_id is not None and build.restore_previous:
                # repo2docker reuses an existing tag instead of building: move it aside for a
                # forced rebuild, under a backup tag that keeps the image (and that listings
                # ignore), and put it back if the rebuild does not succeed (see complete)
                await self.engine.tag_image(build.previous_image_id, self.backup_tag(build))
                await self.engine.remove_image(build.image)
            else:
                build.previous_image_id = None  # deleted while this build waited: nothing to keep
            process = await self.builder.start(build)
        except R2DError as e:
            if isinstance(e, Unavailable):
                self.on_unavailable(e)
            build.log.append("failed", f"Could not start the build: {e}")
            await self.complete(build, exit_code=None, error=str(e))
            return
        self.processes[build.id] = process
        if build.cancel_requested:
            await process.cancel()
        await self.follow(build, process)

    async def follow(self, build: Build, process: BuildProcess, *, ended: bool = False) -> None:
        """Read a build's output to the end, then finish it.

        ``ended``: the process had ended before we started following (a build recovered after a
        restart): no time limits, and its outcome is what it was.
        """
        # A CancelledError (the service stopping) propagates without completing the build: a
        # DockerBuilder build goes on and the next service process follows it again.
        watchdog = None if ended else asyncio.create_task(self._watch(build))
        try:
            exit_code, error = await self._read(build, process, probe=not ended)
            if exit_code and error is None:
                with contextlib.suppress(R2DError):  # then the exit status is all we say
                    if await process.oom_killed():
                        error = OOM_ERROR
            with contextlib.suppress(Exception):
                await process.cleanup()
            await self.complete(build, exit_code, error, ended=ended)
        finally:
            self._drop_probe(build)
            if watchdog is not None:
                watchdog.cancel()

    async def _read(
        self, build: Build, process: BuildProcess, *, probe: bool = True
    ) -> tuple[int | None, str | None]:
        """The process's output into the build; (exit status, None) or (None, why we lost it).
        ``probe``: inspect the image as soon as BuildKit has named it (:meth:`_probe_image`).

        A build container goes on when the engine connection drops (an engine restart, a proxy
        timeout): then we wait for the engine, re-read the log from the start, skip the lines we
        have, and go on — instead of failing a build that is still running.
        """
        seen = 0
        fruitless = 0  # re-attaches in a row that read nothing new
        while True:
            skip = seen
            before = seen
            try:
                async for raw in process.output():
                    if skip:
                        skip -= 1
                        continue
                    seen += 1
                    build.last_output = time.monotonic()
                    if EXIT_PHASE in raw and (exit_line := _exit_line(raw)) is not None:
                        # the fetch stage's own last line: not part of the log; with our nonce,
                        # the build's end (the engine reports the exit tens of ms later)
                        nonce, status = exit_line
                        if process.exit_nonce and secrets.compare_digest(nonce, process.exit_nonce):
                            return status, None
                        continue
                    self.handle_line(build, raw)
                    if probe and "naming to " in raw and build.id not in self._probes:
                        self._probe_image(build, raw)
                return await process.wait(), None
            except R2DError as e:
                if isinstance(e, Unavailable):
                    self.on_unavailable(e)
                fruitless = 0 if seen > before else fruitless + 1
                if (
                    not process.reattachable
                    or build.cancel_requested
                    or build.stop_reason
                    or fruitless > _MAX_FRUITLESS_REATTACHES
                ):
                    return None, f"lost contact with the build: {e}"
                self.log.warning("Lost contact with build %s (%s); re-attaching", build.id, e)
                gone = await self._wait_to_reattach(build, process)
                if gone is not None:
                    return None, gone

    async def _wait_to_reattach(self, build: Build, process: BuildProcess) -> str | None:
        """Wait until the build can be read again; a reason to give up, or None."""
        while not (build.cancel_requested or build.stop_reason):
            await asyncio.sleep(self.settings.reconnect_interval)
            try:
                if await process.exists():
                    return None
                return "lost contact with the build: its container is gone"
            except R2DError:
                continue  # the engine is still unreachable
        return "lost contact with the build"

    def _probe_image(self, build: Build, raw: str) -> None:
        """Inspect the image once BuildKit has named it, while repo2docker winds down and exits
        (tens of ms): the outcome is decided without one more round trip to the engine after
        the exit (:meth:`_built_image`)."""
        try:
            message = str(json.loads(raw).get("message", "")).strip()
        except (ValueError, AttributeError):
            return
        if not _NAMED_RE.match(message):
            return
        probe = asyncio.ensure_future(self.engine.inspect_image(build.image))
        probe.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._probes[build.id] = probe

    async def _built_image(self, build: Build) -> dict[str, Any] | None:
        """The inspect document of the build's image (None: not in the engine), from the probe
        asked while repo2docker exited, else (no probe, or it found nothing yet or failed) from
        the engine now. Raises :class:`Unavailable` when the engine cannot be asked."""
        probe = self._probes.pop(build.id, None)
        if probe is not None:
            with contextlib.suppress(R2DError):
                found = await probe
                if found is not None:
                    return found
        return await self.engine.inspect_image(build.image)

    def _drop_probe(self, build: Build) -> None:
        probe = self._probes.pop(build.id, None)
        if probe is not None:
            probe.cancel()

    # ---- time limits ------------------------------------------------------------------------------
    def _time_limit(self, build: Build) -> tuple[float, str] | None:
        """(seconds left, what ends the build then) for the nearest time limit, or None."""
        limits = []
        total = self.settings.build_timeout
        if total > 0 and build.started:
            limits.append(
                (
                    build.started + total - time.time(),
                    f"build exceeded the time limit of {total:g} s (c.BuildManager.build_timeout)",
                )
            )
        idle = self.settings.build_inactivity_timeout
        if idle > 0:
            limits.append(
                (
                    build.last_output + idle - time.monotonic(),
                    f"build printed nothing for {idle:g} s "
                    "(c.BuildManager.build_inactivity_timeout)",
                )
            )
        return min(limits) if limits else None

    async def _watch(self, build: Build) -> None:
        """Stop the build when it runs into a time limit."""
        build.last_output = time.monotonic()
        while not build.done:
            limit = self._time_limit(build)
            if limit is None:
                await asyncio.sleep(30)  # limits are off: look again (settings can change)
                continue
            remaining, reason = limit
            if remaining > 0:
                await asyncio.sleep(min(remaining, 30))
                continue
            self.log.warning("Stopping build %s: %s", build.id, reason)
            await self.stop(build, reason=reason)
            return

    async def stop(self, build: Build, *, reason: str | None = None) -> None:
        """Stop a running build now: its push, or its repo2docker process.

        ``reason`` (a time limit) makes it end ``failed`` with that error; without one, it is a
        cancel (``build.cancel_requested``) and it ends ``cancelled``.
        """
        if reason is not None and build.stop_reason is None:
            build.stop_reason = reason
            if not build.log.closed:
                build.log.append(build.state.value, f"Stopping the build: {reason}")
        push = self._pushes.get(build.id)
        if push is not None:
            push.cancel()
            return
        process = self.processes.get(build.id)
        if process is not None:
            await process.cancel()

    @staticmethod
    def handle_line(build: Build, raw: str) -> None:
        """One line of repo2docker output (``--json-logs``) into the build's state and log."""
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

    async def complete(
        self, build: Build, exit_code: int | None, error: str | None, *, ended: bool = False
    ) -> None:
        """repo2docker is done: decide the outcome, then restore a forced rebuild's backup."""
        try:
            await self._finish_run(build, exit_code, error, ended)
        finally:
            await self._restore_backup(build)

    async def _restore_backup(self, build: Build) -> None:
        """A forced rebuild is over: put the previous image back unless it succeeded (or the
        image was deleted meanwhile), and drop the backup tag."""
        if build.previous_image_id is None:
            return
        with contextlib.suppress(R2DError):
            if build.state != BuildState.BUILT and build.restore_previous:
                await self.engine.tag_image(build.previous_image_id, build.image)
            await self.engine.remove_image(self.backup_tag(build))
            await self.catalog.refresh(force=True)
        build.previous_image_id = None

    @staticmethod
    def backup_tag(build: Build) -> str:
        """Where a forced rebuild keeps the previous image until it is done."""
        return f"{build.repository}:r2d-previous-{build.id}"

    async def _finish_run(
        self, build: Build, exit_code: int | None, error: str | None, ended: bool
    ) -> None:
        if build.cancel_requested:
            await self._cancelled(build)
            return
        if ended:
            # it ended before this service process started: its image may have been deleted
            # since (still a build that succeeded) and its push happened then or never — the
            # registry says which; pushing again would bring back an image deleted from there
            if exit_code is None and build.exit_code is not None:
                exit_code = build.exit_code  # the engine told us at adoption
            if exit_code == 0:
                if build.push and not self.catalog.pushed(build.image):
                    build.push_error = (
                        f"{build.image} is not in the registry (not pushed before the service "
                        "restarted, or deleted since): request the build again with push to push it"
                    )
                self.finish(build, exit_code=0)
                return
        elif exit_code == 0 and error is None and build.stop_reason is None:
            found = None
            with contextlib.suppress(Unavailable):
                found = await self._built_image(build)
            if found is not None:
                if build.push and not build.cancel_requested:
                    await self.push(build)
                # the index knows the image before anyone hears the build is done: from the
                # inspect above (no re-listing of every image); a push also changes the
                # registry's listing, which only a refresh reads
                if build.push or not self.catalog.add_local(found):
                    await self.catalog.refresh_quietly()
                if build.cancel_requested:  # during the push: the image stays, not pushed
                    await self._cancelled(build)
                    return
                self.finish(build, exit_code=0)
                return
            error = f"repo2docker finished but the image {build.image} is not in the Docker engine"
        if build.stop_reason is not None:
            error = build.stop_reason
        elif error is None:
            error = f"repo2docker exited with status {exit_code}"
        self.finish(build, exit_code=exit_code, error=error)

    async def _cancelled(self, build: Build) -> None:
        self.finish_cancelled(build, "cancelled")
        try:
            await self.builder.forget(build)
        except R2DError as e:
            self.log.warning("Could not remove what is left of cancelled build %s: %s", build.id, e)

    # ---- pushing ----------------------------------------------------------------------------------
    async def push(self, build: Build) -> None:
        """Push the built image through the engine; a failure leaves the build built, not pushed.

        The push runs as its own task so that a cancel or a time limit can stop it (closing the
        engine's push stream stops the push); then ``push_error`` says so.
        """
        task = asyncio.create_task(self._push(build))
        self._pushes[build.id] = task
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._pushes.pop(build.id, None)
        if not task.cancelled():
            task.result()  # an unexpected error goes to the task boundary
            return
        reason = "cancelled" if build.cancel_requested else (build.stop_reason or "stopped")
        build.push_error = f"push stopped: {reason}"
        if not build.log.closed:
            build.log.append(
                "pushing", f"Push stopped ({reason}); the image is built locally, not pushed"
            )

    async def _push(self, build: Build) -> None:
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
                    build.last_output = time.monotonic()
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

    # ---- endings ----------------------------------------------------------------------------------
    @staticmethod
    def failed_step(build: Build) -> str | None:
        """The last BuildKit step header in the log's tail: the step that failed."""
        for line in reversed(build.log.lines(max(0, build.log.total - 400))):
            if _STEP_RE.match(line.message):
                return line.message.strip()
        return None

    def finish(self, build: Build, *, exit_code: int | None, error: str | None = None) -> None:
        """The build is built (``error`` None) or failed."""
        build.exit_code = exit_code
        build.finished = build.finished if build.recovered and build.finished else time.time()
        if error is None:
            build.state = BuildState.BUILT
            build.log.append("built", f"Built {build.image}")
        else:
            build.state = BuildState.FAILED
            build.failed_step = self.failed_step(build)
            if build.error is None or build.error == error or not build.error:
                build.error = error
            elif error not in build.error:
                build.error = f"{build.error} ({error})"
        self.on_done(build)

    def finish_cancelled(self, build: Build, reason: str) -> None:
        """The build is cancelled (queued or running)."""
        if build.done:
            return
        build.state = BuildState.CANCELLED
        build.finished = time.time()
        build.error = None
        if not build.log.closed:
            build.log.append("cancelled", f"Build {reason}")
        self.on_done(build)
