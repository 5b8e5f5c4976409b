"""The build archive: records and logs of pushed builds kept in the registry (issue 13).

In the z2jh recipe the Docker engine is a sidecar on an ``emptyDir``: when the pod moves, every
image, build container and log is gone, only the registry survives. So when a build that was to
push ends ``built`` or ``failed``, :class:`BuildArchive` stores its record and log as an OCI
artifact next to its image (:mod:`r2d_core.registry.artifacts`), in a task (the build is done
already; nothing waits for the registry). A registry that fails then leaves the build ``built``
with ``record_error`` saying why, and the upload is retried with backoff until it succeeds (for
as long as the service runs).

On start, :meth:`BuildArchive.restore` reads the newest ``build_history`` records and their logs
back, so a service on a fresh engine lists its builds (same ids) and replays their logs.

Builds that did not push (no registry, or ``push`` not requested) keep what the engine holds:
their build containers and labels, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import NotFound, R2DError, Unavailable
from .logs import LogBudget
from .models import Build, BuildState, iso
from .records import build_from_record, decode_log, decode_record, encode_log, encode_record
from .registry.artifacts import ArtifactStore
from .registry.config import Registry

__all__ = ["ArchiveSettings", "BuildArchive"]

#: seconds before the first retry of a failed upload; doubles up to _RETRY_MAX
_RETRY_FIRST = 5.0
_RETRY_MAX = 300.0
#: a restore may take this many times c.Registry.timeout in all (the start waits for it)
_RESTORE_TIMEOUTS = 6
#: records dated further ahead than this (seconds) are not believed (they would take the
#: place of every real record in the newest-first history)
_CLOCK_SKEW = 3600.0


class ArchiveSettings(Protocol):
    build_history: int
    max_log_bytes: int
    log_budget: LogBudget


class BuildArchive:
    """Store finished pushed builds in the registry; read them back on start."""

    def __init__(
        self,
        *,
        settings: ArchiveSettings,
        registry: Registry,
        location: Callable[[str], tuple[str, str] | None],
        registry_prefix: Callable[[], str],
        log: Any,
        image_for: Callable[[str, str, str, str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        #: (repository path, tag) of an image reference in the registry, or None
        self.location = location
        self.registry_prefix = registry_prefix
        #: the image reference our naming template gives (owner, name, sha, ref)
        self.image_for = image_for
        self.log = log
        #: uploads in flight -> the image reference of their build
        self._tasks: dict[asyncio.Task[bool], str] = {}
        #: build id -> build whose upload failed, waiting for a retry
        self.pending: dict[str, Build] = {}
        self._retry_delay = _RETRY_FIRST
        self._retry_task: asyncio.Task[None] | None = None
        self._stopping = False
        #: requests made by the last restore, and its duration (for the bench and the log)
        self.last_restore: dict[str, float] = {}

    def store(self) -> ArtifactStore:
        client = self.registry.client()
        return ArtifactStore(client, concurrency=client.max_concurrency)

    def wanted(self, build: Build) -> bool:
        """Whether ``build``'s record belongs in the registry."""
        return (
            self.registry.configured
            and build.push
            and build.state in (BuildState.BUILT, BuildState.FAILED)
            and self.location(build.image) is not None
        )

    # ---- storing -----------------------------------------------------------------------------
    def build_done(self, build: Build) -> None:
        """``build`` ended: store its record and log in a task (never blocks the caller)."""
        if self._stopping or not self.wanted(build):
            return
        task = asyncio.create_task(self._upload(build))
        self._tasks[task] = build.image
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def _upload(self, build: Build) -> bool:
        location = self.location(build.image)
        if location is None:
            return True
        repository, tag = location
        try:
            await self.store().push(
                repository,
                build_id=build.id,
                owner=build.owner,
                created=iso(build.created) or "",
                record=encode_record(build),
                log=encode_log(build.log),
                image_tag=tag
                if build.state == BuildState.BUILT and build.push_error is None
                else None,
            )
        except NotFound:
            # the image (or its repository) was deleted meanwhile: its record is not wanted
            build.record_error = None
            self.pending.pop(build.id, None)
            return True
        except R2DError as e:
            build.record_error = (
                f"the build's record and log are not in the registry yet ({e}); the service "
                "retries until it succeeds"
            )
            self.log.warning("Storing the record of build %s failed: %s", build.id, e)
            self._retry_later(build)
            return False
        build.record_error = None
        self.pending.pop(build.id, None)
        return True

    def _retry_later(self, build: Build) -> None:
        self.pending[build.id] = build
        while len(self.pending) > max(1, self.settings.build_history):
            self.pending.pop(next(iter(self.pending)))  # bounded: the oldest is given up
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        while self.pending and not self._stopping:
            await asyncio.sleep(self._retry_delay)
            progress = False
            for build in list(self.pending.values()):
                if await self._upload(build):
                    progress = True
            self._retry_delay = _RETRY_FIRST if progress else min(_RETRY_MAX, self._retry_delay * 2)
        self._retry_delay = _RETRY_FIRST

    async def retry_now(self) -> None:
        """Retry every pending upload at once (tests, and after the registry came back)."""
        for build in list(self.pending.values()):
            await self._upload(build)

    async def idle(self) -> None:
        """Wait for the uploads started so far."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def forget_image(self, image: str) -> None:
        """``image`` is being deleted: let its uploads end first (so no record comes back after
        the delete), and retry none of them any more."""
        uploads = [task for task, ref in self._tasks.items() if ref == image]
        if uploads:
            await asyncio.wait(uploads, timeout=30)
        for build_id, build in list(self.pending.items()):
            if build.image == image:
                del self.pending[build_id]
                build.record_error = None

    async def stop(self) -> None:
        self._stopping = True
        if self._retry_task is not None:
            self._retry_task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle(), 10)

    # ---- restoring ---------------------------------------------------------------------------
    def _names_match(self, record: dict[str, Any], repository: str) -> bool:
        """Whether the record's owner, name, sha and ref give its image, in the repository it
        was found in: whoever can write to the registry must not make a build appear as another
        owner's (the same rule the catalog applies to image labels)."""
        if self.image_for is None:
            return True
        try:
            image = self.image_for(
                record["owner"], record["name"], record["sha"], str(record.get("ref") or "")
            )
        except R2DError:
            return False
        if image != record.get("image"):
            return False
        location = self.location(image)
        return location is not None and location[0] == repository

    async def restore(self, known: set[str]) -> list[Build]:
        """The newest ``build_history`` archived builds not in ``known``, oldest first.

        Bounded in time (``_RESTORE_TIMEOUTS`` times ``c.Registry.timeout``): the service's start
        waits for it, and a registry is a remote server that may stall; past the deadline it
        raises :class:`Unavailable` (the manager retries later)."""
        if not self.registry.configured:
            return []
        deadline = _RESTORE_TIMEOUTS * self.registry.timeout
        try:
            return await asyncio.wait_for(self._restore(known), deadline)
        except asyncio.TimeoutError:
            raise Unavailable(
                f"reading the build records from the registry took longer than {deadline:g}s"
            ) from None

    async def _restore(self, known: set[str]) -> list[Build]:
        started = time.perf_counter()
        client = self.registry.client()
        before = client.request_count
        store = self.store()
        repositories = await client.catalog(self.registry_prefix())
        found = [r for r in await store.find(repositories) if r.build_id not in known]
        found = self._believable(found)
        found.sort(key=lambda r: r.created, reverse=True)
        found = found[: max(0, self.settings.build_history)]
        max_log = self.settings.max_log_bytes

        async def one(stored: Any) -> Build | None:
            try:
                record_bytes, log_bytes = await store.read(stored, max_log_bytes=max_log)
                record = decode_record(record_bytes)
                # up to 16 MiB of JSON lines: ~0.35 s of CPU, in a worker thread so the event
                # loop (in TLJH: the Hub's) keeps answering while a registry hands us big logs
                log = await asyncio.to_thread(
                    decode_log, log_bytes or _EMPTY_LOG, max_bytes=max(max_log * 4, 1024 * 1024)
                )
                if self.settings.log_budget is not None:
                    log.join_budget(self.settings.log_budget)
            except R2DError as e:
                self.log.warning(
                    "Skipping the build record %s in %s: %s", stored.build_id, stored.repository, e
                )
                return None
            if record["id"] != stored.build_id or record["id"] in known:
                return None
            if not self._names_match(record, stored.repository):
                self.log.warning(
                    "Skipping the build record %s in %s: its owner and name do not give that "
                    "repository (written by someone else?)",
                    stored.build_id,
                    stored.repository,
                )
                return None
            return build_from_record(record, log)

        builds = [b for b in await asyncio.gather(*(one(s) for s in found)) if b is not None]
        builds = self._unique(builds)
        builds.sort(key=lambda b: b.created)
        self.last_restore = {
            "builds": len(builds),
            "requests": client.request_count - before,
            "seconds": time.perf_counter() - started,
        }
        return builds

    def _believable(self, found: list[Any]) -> list[Any]:
        """Records not dated in the future (beyond clock skew): a flood of records dated 2999
        would push every real one out of the newest-first history."""
        horizon = iso(time.time() + _CLOCK_SKEW) or ""
        kept = []
        for stored in found:
            if stored.created > horizon:
                self.log.warning(
                    "Skipping the build record %s in %s: it is dated %s, in the future",
                    stored.build_id,
                    stored.repository,
                    stored.created[:40],
                )
                continue
            kept.append(stored)
        return kept

    def _unique(self, builds: list[Build]) -> list[Build]:
        """Builds whose id no other record claims: two records with one id (a copy of someone's
        build id in a repository the copier may write) cannot tell which is real, and whichever
        came first would take the id; neither is restored."""
        by_id: dict[str, list[Build]] = {}
        for build in builds:
            by_id.setdefault(build.id, []).append(build)
        unique = []
        for build_id, claims in by_id.items():
            if len(claims) > 1:
                self.log.warning(
                    "Skipping build %s: %d records in the registry claim its id (%s)",
                    build_id,
                    len(claims),
                    ", ".join(sorted({b.image for b in claims}))[:300],
                )
                continue
            unique.append(claims[0])
        return unique


_EMPTY_LOG = gzip.compress(b'{"total":0,"bytes":0}\n', mtime=0)
