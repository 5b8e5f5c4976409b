"""The build archive: records and logs of pushed builds kept in the registry (issue 13).

In the z2jh recipe the Docker engine is a sidecar on an ``emptyDir``: when the pod moves, every
image, build container and log is gone, only the registry survives. So when a build that was to
push ends — ``built``, ``failed`` (a time limit included) or ``cancelled`` — :class:`BuildArchive`
stores its record and log as an OCI artifact next to its image
(:mod:`r2d_core.registry.artifacts`), in a task (the build is done already; nothing waits for the
registry). A registry that fails then leaves the build as it ended with ``record_error`` saying
why, and the upload is retried with backoff until it succeeds (for as long as the service runs).

The service is stateless, so a record still waiting for its retry must survive a stop from state
that exists anyway:

* on a graceful stop, :meth:`BuildArchive.stop` tries every pending and in-flight upload once
  more, within ``c.BuildManager.record_flush_timeout`` seconds;
* on start, a build container found again that had ended before this process started (its labels
  say it was to push) is checked against the records the restore found in the registry: if its
  record is missing, it is uploaded then (:meth:`BuildArchive.ended_before_start`). Only builds
  whose containers are still there (``DockerBuilder``) can be caught up this way.

On start, :meth:`BuildArchive.restore` reads the newest ``build_history`` records and their logs
back, so a service on a fresh engine lists its builds (same ids) and replays their logs.

Builds that did not push (no registry, or ``push`` not requested) keep what the engine holds:
their build containers and labels, as before.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import NotFound, R2DError, Unavailable
from .logs import LogBudget
from .models import DONE_STATES, Build, BuildState, iso
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
#: uploads at once (hundreds of builds found again after a restart must not flood the registry)
_UPLOADS_AT_ONCE = 4


class ArchiveSettings(Protocol):
    build_history: int
    max_log_bytes: int
    log_budget: LogBudget
    record_flush_timeout: float


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
        self._stopping = False  # no more retry loop (the service is stopping)
        self._closed = False  # no more uploads at all (stopped)
        self._uploads = asyncio.Semaphore(_UPLOADS_AT_ONCE)
        #: requests made by the last restore, and its duration (for the bench and the log)
        self.last_restore: dict[str, float] = {}
        #: (repository, build id) of the records the registry held at the last restore's scan
        #: (None: not yet); by repository, so that a copy of a build's id planted in another
        #: repository does not pass for its record
        self.stored_ids: set[tuple[str, str]] | None = None
        #: builds that ended before this process started (found again in their containers)
        self._ended_before: set[str] = set()
        #: such builds waiting for the restore's scan to tell whether their record is there
        self._unchecked: dict[str, Build] = {}
        #: called with (repository, build) after a record without image was stored (lifecycle)
        self.on_unattached: Callable[[str, Build], None] | None = None

    def store(self) -> ArtifactStore:
        client = self.registry.client()
        return ArtifactStore(client, concurrency=client.max_concurrency)

    def wanted(self, build: Build) -> bool:
        """Whether ``build``'s record belongs in the registry: it was to push and it ended
        (built, failed, timed out or cancelled)."""
        return (
            self.registry.configured
            and build.push
            and build.state in DONE_STATES
            and self.location(build.image) is not None
        )

    @staticmethod
    def attached(build: Build) -> bool:
        """Whether ``build``'s record goes with an image in the registry (``subject``)."""
        return build.state == BuildState.BUILT and build.push_error is None

    # ---- storing -----------------------------------------------------------------------------
    def ended_before_start(self, build_id: str) -> None:
        """A build found again had ended before this process started: the process before may
        have stored its record already, so :meth:`build_done` stores it only if the registry
        lacks it (known from the restore's scan, no extra request)."""
        if len(self._ended_before) < 10 * max(1, self.settings.build_history):
            self._ended_before.add(build_id)

    def build_done(self, build: Build) -> None:
        """``build`` ended: store its record and log in a task (never blocks the caller)."""
        ended_before = build.id in self._ended_before
        self._ended_before.discard(build.id)
        if self._closed or not self.wanted(build):
            return
        if ended_before:
            if self.stored_ids is None:
                # the registry's records are not known yet: decided when the restore has read them
                self._unchecked[build.id] = build
                while len(self._unchecked) > max(1, self.settings.build_history):
                    self._unchecked.pop(next(iter(self._unchecked)))
                return
            if self._is_stored(build):
                return
            self.log.info(
                "Build %s ended before this service started and its record is not in the "
                "registry: storing it now",
                build.id,
            )
        self._start_upload(build)

    def _is_stored(self, build: Build) -> bool:
        location = self.location(build.image)
        return (
            self.stored_ids is not None
            and location is not None
            and (location[0], build.id) in self.stored_ids
        )

    def _start_upload(self, build: Build) -> None:
        task = asyncio.create_task(self._upload(build))
        self._tasks[task] = build.image
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    def _catch_up(self) -> None:
        """The restore has read which records the registry holds: store the missing ones of the
        builds that ended before this process started."""
        unchecked, self._unchecked = self._unchecked, {}
        missing = [b for b in unchecked.values() if not self._is_stored(b)]
        if missing:
            self.log.info(
                "%d build(s) ended before this service started without their record in the "
                "registry: storing them now",
                len(missing),
            )
        for build in missing:
            self._start_upload(build)

    async def _upload(self, build: Build) -> bool:
        location = self.location(build.image)
        if location is None:
            return True
        repository, tag = location
        try:
            async with self._uploads:
                await self.store().push(
                    repository,
                    build_id=build.id,
                    owner=build.owner,
                    created=iso(build.created) or "",
                    record=encode_record(build),
                    log=encode_log(build.log),
                    image_tag=tag if self.attached(build) else None,
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
        if not self.attached(build) and self.on_unattached is not None:
            try:
                self.on_unattached(repository, build)
            except Exception:
                self.log.exception("Handling the stored record of build %s failed", build.id)
        return True

    def _retry_later(self, build: Build) -> None:
        self.pending[build.id] = build
        while len(self.pending) > max(1, self.settings.build_history):
            self.pending.pop(next(iter(self.pending)))  # bounded: the oldest is given up
        if self._retry_task is None or self._retry_task.done():
            if not self._stopping:
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

    async def forget_repository(self, repository: str) -> None:
        """Every version of the image in ``repository`` is being deleted: let the uploads into it
        end first and retry none of them (so no record comes back after the delete)."""
        mine = {ref for ref in self._tasks.values() if self._repository_of(ref) == repository}
        waiting = [*self.pending.values(), *self._unchecked.values()]
        mine |= {b.image for b in waiting if self._repository_of(b.image) == repository}
        for image in mine:
            await self.forget_image(image)

    def _repository_of(self, image: str) -> str | None:
        location = self.location(image)
        return location[0] if location is not None else None

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
        for build_id, build in list(self._unchecked.items()):
            if build.image == image:
                del self._unchecked[build_id]

    def stopping(self) -> None:
        """The service is stopping: no more retry loop; builds that end now (cancelled by the
        stop) are still stored by :meth:`stop`."""
        self._stopping = True
        if self._retry_task is not None:
            self._retry_task.cancel()

    async def stop(self) -> None:
        """Flush: wait for the uploads in flight and try every pending one once more, within
        ``record_flush_timeout`` seconds; what is still not stored then is lost (logged)."""
        self.stopping()
        deadline = max(0.0, getattr(self.settings, "record_flush_timeout", 10.0))

        async def flush() -> None:
            await self.idle()
            await asyncio.gather(*(self._upload(b) for b in list(self.pending.values())))

        try:
            await asyncio.wait_for(flush(), deadline)
        except asyncio.TimeoutError:
            pass
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self.pending:
            self.log.warning(
                "Stopping with %d build record(s) not stored in the registry (%s); a service "
                "started on the same engine stores those whose build containers remain",
                len(self.pending),
                ", ".join(sorted(self.pending)),
            )

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
        everything = await store.find(repositories)
        self.stored_ids = {(r.repository, r.build_id) for r in everything}
        self._catch_up()
        found = self._believable([r for r in everything if r.build_id not in known])
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
