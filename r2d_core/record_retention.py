"""Retention of the build records that no image holds: those of builds that failed, timed out,
were cancelled, or built without their push (issue 13).

A record of a pushed build is attached to its image (OCI ``subject``) and goes with its version
(:meth:`~r2d_core.registry.artifacts.ArtifactStore.delete_for_image`). The others have no image
to go with; without a bound, every failed build would leave a record in the registry forever.
So, per image (owner, name: one repository), the policy keeps the newest
``c.LifecyclePolicy.keep_failed_records`` of them and drops those older than
``c.LifecyclePolicy.max_failed_record_days``; deleting a whole image deletes all of them.

:func:`records_to_drop` is the pure rule; :func:`prune_records` and :func:`delete_image_records`
apply it through an :class:`~r2d_core.registry.artifacts.ArtifactStore`. Every deletion is logged
and counted in ``r2d_lifecycle_deleted_total{kind="build_record"}`` (with the rule as ``reason``,
or ``image_deleted`` when they went with a whole image a user deleted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from . import metrics
from .errors import NotFound, R2DError
from .models import parse_time
from .registry.artifacts import ArtifactStore, StoredRecord

__all__ = ["delete_image_records", "prune_records", "records_to_drop"]

DAY = 86400.0


def _created(record: StoredRecord) -> float | None:
    return parse_time(record.created)


def records_to_drop(
    records: Sequence[StoredRecord], *, keep: int, max_age: float, now: float
) -> list[tuple[StoredRecord, str]]:
    """(record, reason) for the unattached records of one image that the rules drop: all but the
    newest ``keep`` (0: no count limit), and those created more than ``max_age`` seconds before
    ``now`` (0: no age limit). A record with no readable time sorts as the oldest and is never
    dropped for its age. Attached records (with a subject) are not this rule's."""
    unattached = [r for r in records if r.subject is None]
    unattached.sort(key=lambda r: _created(r) or 0.0, reverse=True)
    drop: dict[str, tuple[StoredRecord, str]] = {}
    if keep > 0:
        for record in unattached[keep:]:
            drop[record.digest] = (record, "keep_failed_records")
    if max_age > 0:
        for record in unattached:
            created = _created(record)
            if created is not None and created < now - max_age and record.digest not in drop:
                drop[record.digest] = (record, "max_failed_record_days")
    return list(drop.values())


async def _delete(
    store: ArtifactStore, record: StoredRecord, reason: str, why: str, log: logging.Logger
) -> bool:
    try:
        await store.delete_artifact(record.repository, record.digest)
    except R2DError as e:
        log.warning(
            "Lifecycle: could not delete the build record %s in %s (%s): %s",
            record.build_id,
            record.repository,
            reason,
            e,
        )
        return False
    log.info(
        "Lifecycle: deleted %s's build record %s (and its log) in %s (%s)",
        record.owner or "?",
        record.build_id,
        record.repository,
        why,
    )
    metrics.LIFECYCLE_DELETED.labels("build_record", reason).inc()
    return True


async def _exists(store: ArtifactStore, repository: str, digest: str) -> bool:
    try:
        await store.client.digest(repository, digest)
    except NotFound:
        return False
    return True


async def prune_records(
    store: ArtifactStore,
    log: logging.Logger,
    repositories: Iterable[str],
    *,
    keep: int,
    max_days: float,
    now: float,
    owners: Iterable[str] | None = None,
) -> int:
    """Apply :func:`records_to_drop` to the unattached records in ``repositories`` (only
    ``owners``' when given: the owner the record's manifest names); returns how many went.

    With only the count rule, a repository is read no further than its tag list unless it has
    more than ``keep`` records (a cheap check after every failed build)."""
    if keep <= 0 and max_days <= 0:
        return 0
    owner_set = set(owners) if owners is not None else None
    more_than = keep if max_days <= 0 else 0
    found = await store.find(sorted(set(repositories)), more_than=more_than)
    by_repository: dict[str, list[StoredRecord]] = {}
    for record in found:
        if owner_set is None or record.owner in owner_set:
            by_repository.setdefault(record.repository, []).append(record)
    deleted = 0
    for repository, records in sorted(by_repository.items()):
        for record, reason in records_to_drop(records, keep=keep, max_age=max_days * DAY, now=now):
            if reason == "keep_failed_records":
                why = (
                    f"c.LifecyclePolicy.keep_failed_records = {keep}: {repository} has more "
                    "records of builds that left no image"
                )
            else:
                why = f"older than c.LifecyclePolicy.max_failed_record_days = {max_days:g}"
            deleted += await _delete(store, record, reason, why, log)
    return deleted


async def delete_image_records(
    store: ArtifactStore,
    log: logging.Logger,
    repositories: Iterable[str],
    *,
    everything: bool,
) -> int:
    """An image was deleted (all its versions): delete its records in ``repositories`` — those
    of builds that left no image, and with ``everything`` (every version went) any record still
    attached to a manifest that is gone (a version deleted by other means; one a build pushed
    meanwhile keeps its record). Returns how many went; failures are logged."""
    deleted = 0
    for record in await store.find(sorted(set(repositories))):
        if record.subject is not None:
            if not everything or await _exists(store, record.repository, record.subject):
                continue
        try:
            if record.subject is not None:
                # and the gone manifest's referrers fallback index (``sha256-<hex>``)
                await store.delete_for_image(record.repository, record.subject)
            await store.delete_artifact(record.repository, record.digest)
        except R2DError as e:
            log.warning(
                "Could not delete the build record %s in %s with its image: %s",
                record.build_id,
                record.repository,
                e,
            )
            continue
        log.info(
            "Deleted %s's build record %s (and its log) in %s with the image",
            record.owner or "?",
            record.build_id,
            record.repository,
        )
        metrics.LIFECYCLE_DELETED.labels("build_record", "image_deleted").inc()
        deleted += 1
    return deleted
