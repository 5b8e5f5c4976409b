"""Pruning what builds leave on the Docker engine: build containers, untagged images, BuildKit
cache. Each function deletes only what carries this service's labels (the build cache, which is
the engine's, excepted), logs every deletion and counts it in ``r2d_lifecycle_deleted_total``.
:class:`~r2d_core.lifecycle.LifecyclePolicy` decides when they run and with which limits."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import metrics
from .diskspace import build_cache_size
from .errors import Conflict, NotFound
from .models import LABEL_PREFIX
from .sizes import format_bytes

if TYPE_CHECKING:
    from .engine import DockerEngine
    from .manager import BuildManager

__all__ = ["ORPHAN_GRACE", "prune_build_cache", "prune_build_containers", "prune_dangling_images"]

#: an exited build container this service does not know is removed only after this long, so a
#: container another process is still reading (a service restarting) is never taken from it
ORPHAN_GRACE = 3600.0


async def prune_build_containers(
    manager: BuildManager,
    log: logging.Logger,
    *,
    now: float,
    max_age: float = 0.0,
    owners: Iterable[str] | None = None,
) -> int:
    """Forget ``manager``'s finished builds beyond its ``build_history`` or older than ``max_age``
    seconds (0: no age limit), removing their containers, and remove exited build containers it
    does not know (after :data:`ORPHAN_GRACE`); only ``owners``' when given."""
    owner_set = set(owners) if owners is not None else None
    deleted = 0
    done = [b for b in manager.list_builds() if b.done]  # newest first
    for index, build in enumerate(done):
        if owner_set is not None and build.owner not in owner_set:
            continue
        reason = ""
        if index >= manager.build_history:
            reason = "build_history"
        elif max_age and (build.finished or build.created) < now - max_age:
            reason = "max_build_age"
        if reason:
            await manager.forget_build(build)
            # DockerBuilder builds live in containers (with their logs); local ones only in memory
            in_container = manager.builder.kind == "docker"
            log.info(
                "Lifecycle: forgot %s's build %s of %s%s (%s)",
                build.owner,
                build.id,
                build.image,
                " and removed its container" if in_container else "",
                reason,
            )
            metrics.LIFECYCLE_DELETED.labels(
                "build_container" if in_container else "build", reason
            ).inc()
            deleted += 1
    known = {b.id for b in manager.list_builds()}
    for summary in await manager.engine.list_build_containers():
        labels = summary.get("Labels") or {}
        build_id = labels.get(f"{LABEL_PREFIX}build-id", "")
        owner = labels.get(f"{LABEL_PREFIX}owner", "")
        if summary.get("State") == "running" or build_id in known:
            continue
        if owner_set is not None and owner not in owner_set:
            continue
        if now - float(summary.get("Created") or 0) < ORPHAN_GRACE:
            continue
        await manager.engine.remove_container(summary["Id"])
        log.info(
            "Lifecycle: removed build container %s of %s's build %s, which this service no "
            "longer remembers (orphaned)",
            summary["Id"][:12],
            owner or "?",
            build_id,
        )
        metrics.LIFECYCLE_DELETED.labels("build_container", "orphaned").inc()
        deleted += 1
    return deleted


async def prune_dangling_images(
    engine: DockerEngine, log: logging.Logger, *, owners: Iterable[str] | None = None
) -> int:
    """Remove untagged images carrying our labels (only ``owners``' when given); an image a
    container uses stays. Images without our labels are never even listed."""
    owner_set = set(owners) if owners is not None else None
    deleted = 0
    for image in await engine.list_dangling_images():
        labels = image.get("Labels") or {}
        owner = labels.get(f"{LABEL_PREFIX}owner", "")
        if owner_set is not None and owner not in owner_set:
            continue
        try:
            await engine.remove_image(image["Id"])
        except (Conflict, NotFound):
            continue  # a container uses it, or it went meanwhile
        log.info(
            "Lifecycle: removed untagged image %s of %s's %r (dangling)",
            image["Id"][7:19],
            owner,
            labels.get(f"{LABEL_PREFIX}name", "?"),
        )
        metrics.LIFECYCLE_DELETED.labels("dangling_image", "dangling").inc()
        metrics.LIFECYCLE_RECLAIMED_BYTES.labels("dangling_image").inc(int(image.get("Size") or 0))
        deleted += 1
    return deleted


async def prune_build_cache(engine: DockerEngine, log: logging.Logger, *, limit: int) -> int:
    """Shrink the engine's BuildKit cache to ``limit`` bytes (least recently used first);
    returns how many cache records went."""
    size = build_cache_size(await engine.disk_usage())
    if size <= limit:
        return 0
    result = await engine.prune_build_cache(limit)
    dropped = len(result.get("CachesDeleted") or [])
    reclaimed = int(result.get("SpaceReclaimed") or 0)
    log.info(
        "Lifecycle: build cache was %s, more than c.LifecyclePolicy.build_cache_max_bytes = "
        "%s: pruned %d records, %s freed",
        format_bytes(size),
        format_bytes(limit),
        dropped,
        format_bytes(reclaimed),
    )
    metrics.LIFECYCLE_DELETED.labels("build_cache", "cache_size").inc(dropped)
    metrics.LIFECYCLE_RECLAIMED_BYTES.labels("build_cache").inc(reclaimed)
    return dropped
