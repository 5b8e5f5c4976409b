"""The build runner: run one build to its end — start, follow, push, finish.

:class:`BuildRunner` starts repo2docker through the :class:`~r2d_core.builders.Builder`, turns its
JSON log lines into the build's state and log, pushes a built image through the engine (never from
inside repo2docker, so a registry outage never loses a build), puts a forced rebuild's previous
image back when the rebuild does not succeed, and decides the outcome. Every ending goes through
``on_done`` (the manager frees the slot and starts the next build).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

from .builders import Builder, BuildProcess
from .catalog import ImageCatalog
from .engine import DockerEngine
from .errors import R2DError, Unavailable
from .models import Build, BuildState, short_error
from .naming import parse_reference
from .registry.config import Registry

__all__ = ["BuildRunner"]

# A BuildKit step header in `--progress plain` output, e.g. "#7 [3/4] RUN pip install ...".
_STEP_RE = re.compile(r"^#\d+ \[[^\]]+\] \S")
_PHASES = {
    "fetching": BuildState.FETCHING,
    "building": BuildState.BUILDING,
    "pushing": BuildState.PUSHING,
}


class BuildRunner:
    """Runs and follows builds; reports each ending to ``on_done``."""

    def __init__(
        self,
        *,
        engine: DockerEngine,
        builder: Builder,
        registry: Registry,
        catalog: ImageCatalog,
        on_done: Callable[[Build], None],
        on_unavailable: Callable[[Exception], None],
        log: Any,
    ) -> None:
        self.engine = engine
        self.builder = builder
        self.registry = registry
        self.catalog = catalog
        self.on_done = on_done
        self.on_unavailable = on_unavailable
        self.log = log
        #: build id -> its repo2docker process (local child or build container)
        self.processes: dict[str, BuildProcess] = {}

    # ---- running ----------------------------------------------------------------------------------
    async def run(self, build: Build) -> None:
        """Run a build that just left the queue, to its end."""
        if build.push_only:
            build.log.append("pushing", f"{build.image} is built already: pushing it")
            await self.push(build)
            await self.catalog.refresh_quietly()
            self.finish(build, exit_code=0)
            return
        try:
            if build.previous_image_id is not None:
                # repo2docker reuses an existing tag instead of building: move it aside for a
                # forced rebuild, under a backup tag that keeps the image (and that listings
                # ignore), and put it back if the rebuild does not succeed (see complete)
                await self.engine.tag_image(build.previous_image_id, self.backup_tag(build))
                await self.engine.remove_image(build.image)
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

    async def follow(self, build: Build, process: BuildProcess) -> None:
        """Read a build's output to the end (also a build found again after a restart)."""
        # A CancelledError (the service stopping) propagates without completing the build: a
        # DockerBuilder build goes on and the next service process follows it again.
        error: str | None = None
        exit_code: int | None = None
        try:
            async for raw in process.output():
                self.handle_line(build, raw)
            exit_code = await process.wait()
        except R2DError as e:
            error = f"lost contact with the build: {e}"
            if isinstance(e, Unavailable):
                self.on_unavailable(e)
        with contextlib.suppress(Exception):
            await process.cleanup()
        await self.complete(build, exit_code, error)

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

    async def complete(self, build: Build, exit_code: int | None, error: str | None) -> None:
        """repo2docker is done: decide the outcome, then restore a forced rebuild's backup."""
        try:
            await self._finish_run(build, exit_code, error)
        finally:
            if build.previous_image_id is not None:
                with contextlib.suppress(R2DError):
                    if build.state != BuildState.BUILT:
                        await self.engine.tag_image(build.previous_image_id, build.image)
                    await self.engine.remove_image(self.backup_tag(build))
                    await self.catalog.refresh(force=True)
            build.previous_image_id = None

    @staticmethod
    def backup_tag(build: Build) -> str:
        """Where a forced rebuild keeps the previous image until it is done."""
        return f"{build.repository}:r2d-previous-{build.id}"

    async def _finish_run(self, build: Build, exit_code: int | None, error: str | None) -> None:
        if build.cancel_requested:
            self.finish_cancelled(build, "cancelled")
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
                    await self.push(build)
                # the index knows the image before anyone hears the build is done
                await self.catalog.refresh_quietly()
                self.finish(build, exit_code=0)
                return
            error = f"repo2docker finished but the image {build.image} is not in the Docker engine"
        if error is None:
            error = f"repo2docker exited with status {exit_code}"
        self.finish(build, exit_code=exit_code, error=error)

    # ---- pushing ----------------------------------------------------------------------------------
    async def push(self, build: Build) -> None:
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
