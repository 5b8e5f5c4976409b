"""The settings of :class:`~r2d_core.lifecycle.LifecyclePolicy`: every ``c.LifecyclePolicy.*``
trait (retention, quotas, the disk guard, pruning).

A pure move out of ``lifecycle.py``: :class:`LifecycleSettings` is the base class the policy
inherits its traits from, so ``c.LifecyclePolicy.*`` settings apply as before (traitlets reads the
sections of a class and of its bases); the configuration reference lists them under
``LifecyclePolicy``.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import Bool, Float, Int, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .sizes import ByteSize, env_bool, env_value, parse_bytes

__all__ = ["LifecycleSettings"]


class LifecycleSettings(LoggingConfigurable):
    """The settings (traits) of the image lifecycle policy, configured as ``c.LifecyclePolicy.*``."""

    # ---- retention ------------------------------------------------------------------------------
    keep_versions = Int(
        config=True,
        help="""Versions kept per image (owner, name), newest first by build time; when a build of
        a new version succeeds (and after its push), older versions are deleted locally and from
        the registry. Default 0 (keep all); env ``R2D_KEEP_VERSIONS``.""",
    )

    @default("keep_versions")
    def _default_keep_versions(self) -> int:
        return env_value("R2D_KEEP_VERSIONS", int, 0)

    max_unused_days = Float(
        config=True,
        help="""Delete versions unused for this many days: not built, requested (a build request
        answered with it, or joining its build) or running in a container on the engine since.
        "Last requested" is kept in memory; after a restart the image's build time is the floor,
        so a restart can only make an image look *older*, never keep one forever. Checked every
        ``prune_interval``. Default 0 (off); env ``R2D_MAX_UNUSED_DAYS``.""",
    )

    @default("max_unused_days")
    def _default_max_unused_days(self) -> float:
        return env_value("R2D_MAX_UNUSED_DAYS", float, 0.0)

    keep_failed_records = Int(
        config=True,
        help="""Build records (and logs) kept in the registry per image (owner, name) for builds
        that left no image there: failed, timed out, cancelled, or built without their push
        (records of pushed versions go with their version). Older ones, newest first by build
        time, are deleted after each such build and every ``prune_interval``. Default
        ``c.BuildManager.build_history`` (200: no more than a restore could ever show); 0 keeps
        all; env ``R2D_KEEP_FAILED_RECORDS``.""",
    )

    @default("keep_failed_records")
    def _default_keep_failed_records(self) -> int:
        manager = getattr(self, "manager", None)
        return env_value("R2D_KEEP_FAILED_RECORDS", int, getattr(manager, "build_history", 200))

    max_failed_record_days = Float(
        config=True,
        help="""Delete those records (builds that left no image in the registry) once they are
        older than this many days, by build time; checked every ``prune_interval``. Default
        ``max_unused_days`` (the same idea: what nobody used for that long goes; 0 = off);
        env ``R2D_MAX_FAILED_RECORD_DAYS``.""",
    )

    @default("max_failed_record_days")
    def _default_max_failed_record_days(self) -> float:
        return env_value("R2D_MAX_FAILED_RECORD_DAYS", float, self.max_unused_days)

    @validate("keep_failed_records", "max_failed_record_days")
    def _check_not_negative(self, proposal: Any) -> Any:
        if proposal["value"] < 0:
            raise TraitError(
                f"LifecyclePolicy.{proposal['trait'].name} must be 0 (no limit) or more, "
                f"not {proposal['value']}"
            )
        return proposal["value"]

    # ---- quotas ---------------------------------------------------------------------------------
    max_images_per_owner = Int(
        config=True,
        help="""Images one owner may have; every built version counts (each is a separate image
        in Docker and the registry), and so do their builds in progress. A build that would add
        one more is refused with 409 before it is queued. With ``keep_versions``, a new version
        of an image at its limit replaces the oldest and adds nothing. Default 0 (no limit); env
        ``R2D_MAX_IMAGES_PER_OWNER``.""",
    )

    @default("max_images_per_owner")
    def _default_max_images(self) -> int:
        return env_value("R2D_MAX_IMAGES_PER_OWNER", int, 0)

    max_bytes_per_owner = ByteSize(
        config=True,
        help="""Bytes one owner's images may take (e.g. ``"20G"``), as Docker reports image sizes
        (layers shared with other images count for each), registry-only versions by their
        registry size. A new build is refused with 409 while the owner is at or over it (its
        size is not known before it is built). Default 0 (no limit); env
        ``R2D_MAX_BYTES_PER_OWNER``.""",
    )

    @default("max_bytes_per_owner")
    def _default_max_bytes(self) -> int:
        return env_value("R2D_MAX_BYTES_PER_OWNER", parse_bytes, 0)

    # ---- disk guard -----------------------------------------------------------------------------
    min_free_bytes = ByteSize(
        config=True,
        help="""The disk guard: new builds are refused (503, naming the free space) while the
        engine's data root has less free space than this (e.g. ``"10G"``; like conda-store's
        ``storage_threshold``). Requests answered with an existing image still work. Default 0
        (off); env ``R2D_MIN_FREE_BYTES``.""",
    )

    @default("min_free_bytes")
    def _default_min_free_bytes(self) -> int:
        return env_value("R2D_MIN_FREE_BYTES", parse_bytes, 0)

    min_free_percent = Float(
        config=True,
        help="""The disk guard as a share of the data root's size (e.g. 10 for 10 %); with
        ``min_free_bytes`` too, the larger demand holds. Needs the total size: a local path
        (``data_root_path``) or ``data_root_size``. Default 0 (off); env
        ``R2D_MIN_FREE_PERCENT``.""",
    )

    @default("min_free_percent")
    def _default_min_free_percent(self) -> float:
        return env_value("R2D_MIN_FREE_PERCENT", float, 0.0)

    @validate("min_free_percent")
    def _check_percent(self, proposal: Any) -> float:
        if not 0 <= proposal["value"] < 100:
            raise TraitError(f"min_free_percent must be from 0 to 100, not {proposal['value']}")
        return proposal["value"]

    data_root_path = Unicode(
        config=True,
        help="""A path on the filesystem of the engine's data root, as this process sees it
        (e.g. ``/var/lib/docker``, or where it is mounted into the service's container); its free
        space is measured with ``statvfs``. Default empty: with ``data_root_size`` set, an
        estimate; else the engine's ``DockerRootDir`` when the engine is reached through a local
        unix socket and that directory exists here (a service on the engine's host, as with
        TLJH); else the disk guard cannot measure (a warning says so) and refuses nothing.
        Env ``R2D_DATA_ROOT_PATH``.""",
    )

    @default("data_root_path")
    def _default_data_root_path(self) -> str:
        return os.environ.get("R2D_DATA_ROOT_PATH", "")

    data_root_size = ByteSize(
        config=True,
        help="""The size of the engine's data root, for a service that cannot see that filesystem
        (e.g. z2jh, the engine on a node): free space is then estimated as this minus what the
        engine's ``/system/df`` reports (images, containers, volumes, build cache). The estimate
        misses whatever else fills that disk (logs, other programs); ``data_root_path`` wins when
        both are set. Default 0 (no estimate);
        env ``R2D_DATA_ROOT_SIZE``.""",
    )

    @default("data_root_size")
    def _default_data_root_size(self) -> int:
        return env_value("R2D_DATA_ROOT_SIZE", parse_bytes, 0)

    disk_check_ttl = Float(
        30.0,
        config=True,
        help="""Seconds a free-space measurement is reused by the disk guard (``/system/df``
        is costly on a large engine). Default 30; env ``R2D_DISK_CHECK_TTL``.""",
    )

    @default("disk_check_ttl")
    def _default_disk_check_ttl(self) -> float:
        return env_value("R2D_DISK_CHECK_TTL", float, 30.0)

    # ---- pruning --------------------------------------------------------------------------------
    prune_interval = Float(
        config=True,
        help="""Seconds between runs of the periodic lifecycle task (retention, unused versions,
        stale build containers, dangling images, build cache); the first run comes one interval
        after the start. 0 turns the periodic task off (the build-time checks stay). Default 3600;
        env ``R2D_PRUNE_INTERVAL``.""",
    )

    @default("prune_interval")
    def _default_prune_interval(self) -> float:
        return env_value("R2D_PRUNE_INTERVAL", float, 3600.0)

    max_build_age_days = Float(
        config=True,
        help="""Finished builds older than this many days are forgotten and their build containers
        (which hold their logs) removed, even within ``BuildManager.build_history``. Default 0
        (only ``build_history`` bounds them); env ``R2D_MAX_BUILD_AGE_DAYS``.""",
    )

    @default("max_build_age_days")
    def _default_max_build_age(self) -> float:
        return env_value("R2D_MAX_BUILD_AGE_DAYS", float, 0.0)

    prune_dangling_images = Bool(
        config=True,
        help="""Remove untagged images that carry this service's labels (never anybody else's
        images on the engine; never one a container uses). Harmless, so on by default; env
        ``R2D_PRUNE_DANGLING_IMAGES=0`` turns it off.""",
    )

    @default("prune_dangling_images")
    def _default_prune_dangling(self) -> bool:
        return env_value("R2D_PRUNE_DANGLING_IMAGES", env_bool, True)

    build_cache_max_bytes = ByteSize(
        config=True,
        help="""Keep at most this much BuildKit cache (e.g. ``"20G"``): beyond it, the engine drops
        its least recently used cache (``POST /build/prune?keep-storage=N``), after each build and
        every ``prune_interval``. The cache belongs to the whole engine, so this also prunes
        cache of builds not made by this service. Default 0 (off); env
        ``R2D_BUILD_CACHE_MAX_BYTES``.""",
    )

    @default("build_cache_max_bytes")
    def _default_build_cache_max(self) -> int:
        return env_value("R2D_BUILD_CACHE_MAX_BYTES", parse_bytes, 0)
