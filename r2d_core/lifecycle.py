"""The image lifecycle policy: what the service deletes on its own, and what it refuses to build.

A service that runs for months must bound what accumulates on the Docker engine and in the
registry. :class:`LifecyclePolicy` (``c.LifecyclePolicy.*``) holds every rule; all of them are off
by default except three that only remove what nobody can use (untagged images carrying our
labels, build containers this service has forgotten, and registry records of failed builds
beyond the ``build_history`` newest of an image, which no restore could show):

* **keep_versions** — the newest N versions of each image (owner, name) stay; when a build of a
  new version succeeds (after its push), older ones are deleted locally and from the registry.
* **max_unused_days** — a version unused for D days is deleted (see :func:`last_used`).
* **keep_failed_records**, **max_failed_record_days** — records in the registry of builds that
  left no image there (failed, timed out, cancelled, not pushed) are bounded per image, by count
  and by age (:mod:`r2d_core.record_retention`).
* **max_images_per_owner**, **max_bytes_per_owner** — a build that would add an image beyond the
  owner's limit is refused (409 :class:`~r2d_core.errors.QuotaExceeded`) before it is queued.
* **min_free_bytes**, **min_free_percent** — the disk guard: with less free space in the engine's
  data root, new builds are refused (503 :class:`~r2d_core.errors.InsufficientStorage`).
* pruning — stale build containers, our dangling images and the BuildKit cache beyond
  **build_cache_max_bytes**, every **prune_interval** seconds and (the cache) after each build.

State stays in memory and in Docker (the service is stateless): "last requested" times live in
memory only, and after a restart an image's creation time is the floor. Every deletion is logged
(what, whose, why) and counted in ``r2d_lifecycle_deleted_total{kind,reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from traitlets import Any as AnyTrait
from traitlets import Callable

from . import metrics, pruning, record_retention
from .diskspace import DiskSpace, estimate_space, statvfs_space
from .errors import InsufficientStorage, NotFound, QuotaExceeded, R2DError
from .lifecycle_config import LifecycleSettings
from .models import Build, ImageGroup, ImageVersion
from .sizes import format_bytes

if TYPE_CHECKING:
    from .manager import BuildManager

__all__ = ["LifecyclePolicy", "last_used", "newest_first", "unused_versions", "versions_beyond"]

DAY = 86400.0


# ---- pure rules ----------------------------------------------------------------------------------
def newest_first(versions: Iterable[ImageVersion]) -> list[ImageVersion]:
    return sorted(versions, key=lambda v: v.created or 0.0, reverse=True)


def versions_beyond(versions: Sequence[ImageVersion], keep: int) -> list[ImageVersion]:
    """The versions ``keep_versions=keep`` drops: all but the ``keep`` newest (by creation time).
    ``keep`` 0 keeps everything."""
    if keep <= 0:
        return []
    return newest_first(versions)[keep:]


def last_used(version: ImageVersion, requested: Mapping[str, float]) -> float:
    """When ``version`` was last used, as far as the service can tell: the latest of its creation
    (build) time and the last time this process saw it requested (built, joined, answered as
    "exists already") or running in a container. Spawns that pull it straight from the engine or
    the registry are not seen, except through the containers they run."""
    return max(version.created or 0.0, requested.get(version.reference, 0.0))


def unused_versions(
    versions: Iterable[ImageVersion], requested: Mapping[str, float], *, now: float, days: float
) -> list[ImageVersion]:
    """Versions whose :func:`last_used` is more than ``days`` before ``now`` (0 days: none)."""
    if days <= 0:
        return []
    cutoff = now - days * DAY
    return [v for v in versions if last_used(v, requested) < cutoff]


class LifecyclePolicy(LifecycleSettings):
    """Retention, quotas, the disk guard and pruning (``c.LifecyclePolicy.*``; the settings are
    in :mod:`r2d_core.lifecycle_config`)."""

    #: the clock (``time.time``); tests move it to make images old
    now = Callable(time.time)

    #: the :class:`~r2d_core.manager.BuildManager` whose images and builds this policy governs
    manager = AnyTrait()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._requested: dict[str, float] = {}
        self._pending: set[asyncio.Task[list[str]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._space: DiskSpace | None = None
        self._space_at = -float("inf")
        self._auto_path: str | None = None
        self._auto_resolved = False
        self._unmeasurable = ""
        self._stopped = False

    @property
    def _m(self) -> BuildManager:
        return self.manager  # type: ignore[no-any-return]

    # ---- start and stop -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.prune_interval > 0 and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._periodic())
        self.log.info("Lifecycle policy: %s", self.describe())

    async def stop(self) -> None:
        self._stopped = True
        for pending in list(self._pending):
            pending.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def limits(self) -> dict[str, int | float]:
        """The per-owner limits and retention callers may plan with (0: none), for ``GET api/``."""
        return {
            "keep_versions": self.keep_versions,
            # days an image version may go unused (not built, requested or run) before the
            # policy deletes it, and days a finished build (and its log) is remembered
            "max_unused_days": self.max_unused_days,
            "max_build_age_days": self.max_build_age_days,
            "max_images_per_owner": self.max_images_per_owner,
            "max_bytes_per_owner": self.max_bytes_per_owner,
            # how long a failed build's record (and log) stays readable in the registry
            "keep_failed_records": self.keep_failed_records,
            "max_failed_record_days": self.max_failed_record_days,
        }

    def describe(self) -> str:
        """The active rules in one line (logged at start)."""
        rules = []
        if self.keep_versions:
            rules.append(f"keep {self.keep_versions} versions per image")
        if self.max_unused_days:
            rules.append(f"drop versions unused for {self.max_unused_days:g} days")
        if self.keep_failed_records:
            rules.append(f"keep {self.keep_failed_records} failed builds' records per image")
        if self.max_failed_record_days:
            rules.append(f"drop failed builds' records after {self.max_failed_record_days:g} days")
        if self.max_images_per_owner:
            rules.append(f"at most {self.max_images_per_owner} images per owner")
        if self.max_bytes_per_owner:
            rules.append(f"at most {format_bytes(self.max_bytes_per_owner)} per owner")
        if self.min_free_bytes or self.min_free_percent:
            rules.append("disk guard on")
        if self.build_cache_max_bytes:
            rules.append(f"build cache at most {format_bytes(self.build_cache_max_bytes)}")
        if self.prune_interval > 0:
            rules.append(f"periodic task every {self.prune_interval:g}s")
        return ", ".join(rules) or "nothing deleted or refused automatically"

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                await self.run_once()
            except Exception:  # the loop must outlive any one failure; the next run tries again
                self.log.exception("Lifecycle: the periodic task failed")

    # ---- usage ----------------------------------------------------------------------------------
    def touch(self, reference: str) -> None:
        """Note that ``reference`` was requested now (built, joined or answered as existing)."""
        self._requested[reference] = self.now()

    # ---- checks before queueing -----------------------------------------------------------------
    async def check_submit(self, owner: str, image: str) -> None:
        """Refuse a new build of ``image`` for ``owner`` that would exceed a limit (raises
        :class:`QuotaExceeded` or :class:`InsufficientStorage`; else returns)."""
        await self.check_disk()
        # last, and with no await between its count and the manager's enqueue: two requests at
        # once cannot both take the owner's last free place
        await self.check_quota(owner, image)

    async def check_quota(self, owner: str, image: str) -> None:
        if not (self.max_images_per_owner or self.max_bytes_per_owner):
            return
        groups = await self._m.list_images([owner])
        versions = [v for g in groups for v in g.versions]
        known = {v.reference for v in versions}
        if image in known:
            return  # a rebuild or push of a version the owner has: nothing is added
        pending = {
            b.image
            for b in self._m.list_builds([owner])
            if not b.done and b.image not in known and b.image != image
        }
        count = len(versions) + len(pending)
        repository = image.rsplit(":", 1)[0]
        group = next((g for g in groups if g.repository == repository), None)
        if self.keep_versions and group is not None and len(group.versions) >= self.keep_versions:
            count -= 1  # this build's success removes the oldest version of that image
        limit = self.max_images_per_owner
        if limit and count + 1 > limit:
            metrics.LIFECYCLE_REFUSED.labels("max_images_per_owner").inc()
            building = f", {len(pending)} of them being built" if pending else ""
            raise QuotaExceeded(
                f"{owner} has {count} of {limit} images{building} "
                "(c.LifecyclePolicy.max_images_per_owner; every version counts); "
                "delete one first",
                limit="max_images_per_owner",
                owner=owner,
                count=count,
                maximum=limit,
            )
        used = sum(v.size or 0 for v in versions)
        limit_bytes = self.max_bytes_per_owner
        if limit_bytes and used >= limit_bytes:
            metrics.LIFECYCLE_REFUSED.labels("max_bytes_per_owner").inc()
            raise QuotaExceeded(
                f"{owner}'s images take {format_bytes(used)} of {format_bytes(limit_bytes)} "
                "(c.LifecyclePolicy.max_bytes_per_owner); delete some first",
                limit="max_bytes_per_owner",
                owner=owner,
                bytes=used,
                maximum=limit_bytes,
            )

    async def check_disk(self) -> None:
        if not (self.min_free_bytes or self.min_free_percent):
            return
        space = await self.disk_space()
        if space is None:
            return
        need, limit = self._needed(space)
        if space.free >= need:
            return
        # what is ours to drop anyway may be enough: prune, then measure again once
        await self._prune_for_space()
        space = await self.disk_space(fresh=True) or space
        need, limit = self._needed(space)
        if space.free >= need:
            return
        metrics.LIFECYCLE_REFUSED.labels(limit).inc()
        raise InsufficientStorage(
            f"the Docker engine's data root has {format_bytes(space.free)} free, less than the "
            f"{format_bytes(need)} c.LifecyclePolicy.{limit} demands; new builds are refused "
            "until an administrator frees space (delete images, prune the engine)",
            limit=limit,
            free_bytes=space.free,
            min_free_bytes=need,
        )

    def _needed(self, space: DiskSpace) -> tuple[int, str]:
        by_percent = (
            int(space.total * self.min_free_percent / 100)
            if self.min_free_percent and space.total
            else 0
        )
        if by_percent > self.min_free_bytes:
            return by_percent, "min_free_percent"
        return self.min_free_bytes, "min_free_bytes"

    async def _prune_for_space(self) -> None:
        with contextlib.suppress(R2DError):
            if self.prune_dangling_images:
                await self.prune_dangling()
            if self.build_cache_max_bytes:
                await self.prune_build_cache()

    async def disk_space(self, fresh: bool = False) -> DiskSpace | None:
        """Free space of the engine's data root, or None when it cannot be measured here."""
        if not fresh and time.monotonic() - self._space_at < self.disk_check_ttl:
            return self._space
        # an explicit path, else an explicit size (the estimate), else the engine's own root if
        # this process can see it
        path = self.data_root_path
        if not path and not self.data_root_size:
            path = await self._auto_data_root() or ""
        space: DiskSpace | None = None
        problem = ""
        if path:
            try:
                space = await asyncio.to_thread(statvfs_space, path)
            except OSError as e:  # a wrong data_root_path must not turn build requests into 500s
                problem = f"statvfs {path} failed ({e.strerror or e}): fix c.LifecyclePolicy.data_root_path"
        elif self.data_root_size:
            space = estimate_space(self.data_root_size, await self._m.engine.disk_usage())
        else:
            problem = (
                "no local DockerRootDir: set c.LifecyclePolicy.data_root_path to where it is "
                "mounted, or c.LifecyclePolicy.data_root_size for an estimate"
            )
        if problem and problem != self._unmeasurable:
            self._unmeasurable = problem  # warned once per cause, not at every request
            self.log.warning(
                "Lifecycle: the disk guard cannot measure the engine's data root (%s); builds are "
                "not refused for lack of space meanwhile",
                problem,
            )
        if space is not None:
            metrics.ENGINE_FREE_BYTES.set(space.free)
        self._space, self._space_at = space, time.monotonic()
        return space

    async def _auto_data_root(self) -> str | None:
        if not self._auto_resolved:
            root = (await self._m.engine.info()).get("DockerRootDir") or ""
            local = bool(root) and self._m.engine.socket_path is not None
            local = local and await asyncio.to_thread(os.path.isdir, root)
            self._auto_path = root if local else None
            self._auto_resolved = True
            self.log.info(
                "Lifecycle: disk guard measures %s",
                f"statvfs {root}" if local else "nothing local (engine's data root not visible)",
            )
        return self._auto_path

    # ---- after a build --------------------------------------------------------------------------
    def build_done(self, build: Build) -> None:
        """``build`` ended built: apply :meth:`after_build` in a task (the manager's hook must
        not block); :meth:`settle` waits for such tasks."""
        task = asyncio.create_task(self.after_build(build))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Wait until the work started by finished builds is done."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def after_build(self, build: Build) -> list[str]:
        """Apply the rules a successful build triggers: ``keep_versions`` for its image, the build
        cache limit. Returns what it did, one line each; never raises (a lifecycle failure does
        not concern the build, which is done already)."""
        self.touch(build.image)
        lines: list[str] = []
        try:
            if self.keep_versions:
                async with self._lock:
                    group = await self._group(build.owner, build.name)
                    if group is not None:
                        lines += await self._retain(group, keep=build.image)
            if self.build_cache_max_bytes:
                await self.prune_build_cache()
        except R2DError as e:
            self.log.warning("Lifecycle: after build %s: %s", build.id, e)
        return lines

    async def _group(self, owner: str, name: str) -> ImageGroup | None:
        groups = await self._m.list_images([owner])
        return next((g for g in groups if g.name == name), None)

    async def _retain(self, group: ImageGroup, keep: str | None = None) -> list[str]:
        lines = []
        drop = [
            v for v in versions_beyond(group.versions, self.keep_versions) if v.reference != keep
        ]
        if not drop:
            return lines
        protected = await self._protected()
        for version in drop:
            why = (
                f"keep_versions={self.keep_versions}: {len(group.versions)} versions of "
                f"{group.owner}'s image {group.name!r}, this is not among the newest"
            )
            if await self._delete(version, "keep_versions", why, protected, lines):
                lines.append(
                    f"Deleted older version {version.reference} "
                    f"(c.LifecyclePolicy.keep_versions = {self.keep_versions})"
                )
        return lines

    async def _protected(self) -> dict[str, str]:
        """Images not to delete now, with why: builds in progress, and images containers use."""
        protected = {
            b.image: f"build {b.id} is in progress" for b in self._m.list_builds() if not b.done
        }
        with contextlib.suppress(R2DError):
            by_image = await self._m.engine.containers_by_image()
            for version in await self._index():
                for container in by_image.get(version.image_id or "", []):
                    name = (container.get("Names") or ["?"])[0].lstrip("/")
                    protected.setdefault(version.reference, f"container {name} uses it")
                    if container.get("State") == "running":
                        self.touch(version.reference)  # running is using
        return protected

    async def _index(self) -> list[ImageVersion]:
        return [v for g in await self._m.list_images() for v in g.versions]

    async def _delete(
        self,
        version: ImageVersion,
        reason: str,
        why: str,
        protected: Mapping[str, str],
        lines: list[str] | None = None,
    ) -> bool:
        """Delete one version locally and in the registry; failures are logged (and added to
        ``lines``, a build's log), never raised."""
        if version.reference in protected:
            self.log.info(
                "Lifecycle: keeping %s (%s) although %s",
                version.reference,
                protected[version.reference],
                why,
            )
            return False
        try:
            result = await self._m.delete_image(version.owner, version.name, version.tag)
        except NotFound:
            return False  # gone already
        for error in result["errors"]:
            where = "from the registry" if error["where"] == "registry" else "locally"
            if lines is not None:
                lines.append(f"Could not delete {error['image']} {where}: {error['message']}")
            self.log.warning(
                "Lifecycle: could not delete %s %s (%s): %s",
                error["image"],
                where,
                reason,
                error["message"],
            )
        if version.reference not in result["deleted"]:
            return False
        where = " and ".join(
            w
            for w, present in (("locally", version.local), ("in the registry", version.pushed))
            if present
        )
        self.log.info(
            "Lifecycle: deleted %s's image %s %s (%s)", version.owner, version.reference, where, why
        )
        self._requested.pop(version.reference, None)
        metrics.LIFECYCLE_DELETED.labels("image", reason).inc()
        if version.size and version.local:
            metrics.LIFECYCLE_RECLAIMED_BYTES.labels("image").inc(version.size)
        return True

    # ---- the periodic task ----------------------------------------------------------------------
    async def run_once(self, owners: Iterable[str] | None = None) -> dict[str, int]:
        """One pass of every rule; returns how many objects each step deleted. ``owners`` limits
        it to those owners' images and builds (the BuildKit cache is the engine's, not an
        owner's). A step whose peer is unreachable is skipped (logged); the others still run."""
        owner_set = set(owners) if owners is not None else None
        report: dict[str, int] = {}
        steps = (
            ("keep_versions", self.enforce_retention),
            ("unused", self.drop_unused),
            ("build_containers", self.prune_build_containers),
            ("dangling_images", self.prune_dangling),
            ("failed_records", self.prune_failed_records),
        )
        for name, step in steps:
            try:
                report[name] = await step(owner_set)
            except R2DError as e:
                self.log.warning("Lifecycle: %s skipped: %s", name.replace("_", " "), e)
                report[name] = 0
        try:
            report["build_cache"] = await self.prune_build_cache()
        except R2DError as e:
            self.log.warning("Lifecycle: build cache skipped: %s", e)
            report["build_cache"] = 0
        # "last requested" of images that are gone is not needed any more (bounds the dict)
        with contextlib.suppress(R2DError):
            known = {v.reference for v in await self._index()}
            for reference in [r for r in self._requested if r not in known]:
                del self._requested[reference]
        return report

    async def enforce_retention(self, owners: Iterable[str] | None = None) -> int:
        """Apply ``keep_versions`` to every image (of ``owners``)."""
        if not self.keep_versions:
            return 0
        async with self._lock:
            deleted = 0
            for group in await self._m.list_images(owners):
                deleted += len(await self._retain(group))
            return deleted

    async def drop_unused(self, owners: Iterable[str] | None = None) -> int:
        """Delete versions (of ``owners``) unused for ``max_unused_days``."""
        if not self.max_unused_days:
            return 0
        async with self._lock:
            protected = await self._protected()  # also marks images running containers use
            now = self.now()
            deleted = 0
            for group in await self._m.list_images(owners):
                for version in unused_versions(
                    group.versions, self._requested, now=now, days=self.max_unused_days
                ):
                    idle = (now - last_used(version, self._requested)) / DAY
                    why = (
                        f"unused for {idle:.1f} days, more than c.LifecyclePolicy.max_unused_days"
                        f" = {self.max_unused_days:g}"
                    )
                    deleted += await self._delete(version, "unused", why, protected)
            return deleted

    async def prune_build_containers(self, owners: Iterable[str] | None = None) -> int:
        """Forget finished builds beyond ``max_build_age_days`` and ``build_history`` (removing
        their containers), and remove exited build containers this service no longer knows."""
        return await pruning.prune_build_containers(
            self._m,
            self.log,
            now=self.now(),
            max_age=self.max_build_age_days * DAY,
            owners=owners,
        )

    async def prune_failed_records(
        self, owners: Iterable[str] | None = None, repositories: Iterable[str] | None = None
    ) -> int:
        """Apply ``keep_failed_records`` and ``max_failed_record_days`` to the registry's records
        of builds that left no image (of ``owners``; in ``repositories``, else in all of ours)."""
        archive = self._m.archive
        if not archive.registry.configured or not (
            self.keep_failed_records or self.max_failed_record_days
        ):
            return 0
        if repositories is None:
            repositories = await archive.registry.client().catalog(archive.registry_prefix())
        return await record_retention.prune_records(
            archive.store(),
            self.log,
            repositories,
            keep=self.keep_failed_records,
            max_days=self.max_failed_record_days,
            now=self.now(),
            owners=owners,
        )

    def record_stored(self, repository: str, build: Build) -> None:
        """A record of a build that left no image was stored in ``repository``: bound that
        image's records now, in a task (a look at its tag list; more only when over the count)."""
        if not self.keep_failed_records or self._stopped:
            return

        async def prune() -> list[str]:
            try:
                await record_retention.prune_records(
                    self._m.archive.store(),
                    self.log,
                    [repository],
                    keep=self.keep_failed_records,
                    max_days=0,
                    now=self.now(),
                )
            except R2DError as e:
                self.log.warning("Lifecycle: after build %s: records: %s", build.id, e)
            return []

        task = asyncio.create_task(prune())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def prune_dangling(self, owners: Iterable[str] | None = None) -> int:
        """Remove untagged images with our labels (of ``owners``; none a container uses)."""
        if not self.prune_dangling_images:
            return 0
        return await pruning.prune_dangling_images(self._m.engine, self.log, owners=owners)

    async def prune_build_cache(self) -> int:
        """Shrink the BuildKit cache to ``build_cache_max_bytes``; returns cache records dropped."""
        if not self.build_cache_max_bytes:
            return 0
        return await pruning.prune_build_cache(
            self._m.engine, self.log, limit=self.build_cache_max_bytes
        )
