"""Prometheus metrics of the build manager (module level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BUILDS",
    "BUILDS_IN_PROGRESS",
    "BUILD_DURATION",
    "ENGINE_FREE_BYTES",
    "LIFECYCLE_DELETED",
    "LIFECYCLE_RECLAIMED_BYTES",
    "LIFECYCLE_REFUSED",
    "QUEUE_LENGTH",
    "SUBMISSIONS",
]

BUILDS = Counter("r2d_builds_total", "Finished builds by outcome", ["outcome"])
SUBMISSIONS = Counter(
    "r2d_build_requests_total", "Build requests by result (queued, joined, skipped)", ["result"]
)
BUILD_DURATION = Histogram(
    "r2d_build_duration_seconds",
    "Duration of finished builds, from start to end, by outcome",
    ["outcome"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600, float("inf")),
)
QUEUE_LENGTH = Gauge("r2d_build_queue_length", "Builds waiting for a free slot")
BUILDS_IN_PROGRESS = Gauge("r2d_builds_in_progress", "Builds running now")

# ---- image lifecycle policy (r2d_core/lifecycle.py) ---------------------------------------------
LIFECYCLE_DELETED = Counter(
    "r2d_lifecycle_deleted_total",
    "Objects the lifecycle policy deleted, by kind (image, build_container, build, "
    "dangling_image, build_cache) and reason (keep_versions, unused, build_history, "
    "max_build_age, orphaned, dangling, cache_size)",
    ["kind", "reason"],
)
LIFECYCLE_RECLAIMED_BYTES = Counter(
    "r2d_lifecycle_reclaimed_bytes_total",
    "Bytes the lifecycle policy freed as the engine reports them, by kind",
    ["kind"],
)
LIFECYCLE_REFUSED = Counter(
    "r2d_lifecycle_refused_total",
    "Build requests refused by a lifecycle limit (max_images_per_owner, max_bytes_per_owner, "
    "min_free_bytes, min_free_percent)",
    ["limit"],
)
ENGINE_FREE_BYTES = Gauge(
    "r2d_engine_free_bytes",
    "Free bytes of the Docker engine's data root at the last disk guard check",
)
