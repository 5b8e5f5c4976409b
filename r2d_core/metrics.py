"""Prometheus metrics of the build manager, in a registry of their own.

:data:`REGISTRY` holds only this service's metrics: inside the Hub (TLJH plugin) the process-wide
default registry also holds JupyterHub's ``jupyterhub_*`` metrics, which ``GET metrics`` must not
serve (they are the Hub's, behind the Hub's own ``/hub/metrics``). Every metric here must be
created with ``registry=REGISTRY``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "BUILDS",
    "BUILDS_IN_PROGRESS",
    "BUILD_DURATION",
    "ENGINE_FREE_BYTES",
    "LIFECYCLE_DELETED",
    "LIFECYCLE_RECLAIMED_BYTES",
    "LIFECYCLE_REFUSED",
    "LOG_BYTES",
    "METRICS_SCOPE",
    "QUEUE_LENGTH",
    "REGISTRY",
    "SUBMISSIONS",
]

#: the scope ``GET metrics`` requires: JupyterHub's own, the one its ``/hub/metrics`` requires,
#: so one Prometheus token (and the Hub's admin role) covers the Hub and this service
METRICS_SCOPE = "read:metrics"

REGISTRY = CollectorRegistry(auto_describe=True)

BUILDS = Counter("r2d_builds_total", "Finished builds by outcome", ["outcome"], registry=REGISTRY)
SUBMISSIONS = Counter(
    "r2d_build_requests_total",
    "Build requests by result (queued, joined, skipped)",
    ["result"],
    registry=REGISTRY,
)
BUILD_DURATION = Histogram(
    "r2d_build_duration_seconds",
    "Duration of finished builds, from start to end, by outcome",
    ["outcome"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600, float("inf")),
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge("r2d_build_queue_length", "Builds waiting for a free slot", registry=REGISTRY)
BUILDS_IN_PROGRESS = Gauge("r2d_builds_in_progress", "Builds running now", registry=REGISTRY)

# ---- image lifecycle policy (r2d_core/lifecycle.py) ---------------------------------------------
LIFECYCLE_DELETED = Counter(
    "r2d_lifecycle_deleted_total",
    "Objects the lifecycle policy deleted, by kind (image, build_container, build, "
    "dangling_image, build_cache, build_record) and reason (keep_versions, unused, "
    "build_history, max_build_age, orphaned, dangling, cache_size, keep_failed_records, "
    "max_failed_record_days; image_deleted: build records deleted with a whole image)",
    ["kind", "reason"],
    registry=REGISTRY,
)
IMAGE_DELETES = Counter(
    "r2d_image_deletes_total",
    "Image versions deleted at a user's request (DELETE api/images/...), by what the request "
    "named (version: one tag, image: all its versions) and result (deleted, failed)",
    ["target", "result"],
    registry=REGISTRY,
)
LIFECYCLE_RECLAIMED_BYTES = Counter(
    "r2d_lifecycle_reclaimed_bytes_total",
    "Bytes the lifecycle policy freed as the engine reports them, by kind",
    ["kind"],
    registry=REGISTRY,
)
LIFECYCLE_REFUSED = Counter(
    "r2d_lifecycle_refused_total",
    "Build requests refused by a lifecycle limit (max_images_per_owner, max_bytes_per_owner, "
    "min_free_bytes, min_free_percent)",
    ["limit"],
    registry=REGISTRY,
)
ENGINE_FREE_BYTES = Gauge(
    "r2d_engine_free_bytes",
    "Free bytes of the Docker engine's data root at the last disk guard check",
    registry=REGISTRY,
)
LOG_BYTES = Gauge(
    "r2d_log_bytes",
    "Memory the build logs hold (what BuildManager.max_total_log_bytes bounds)",
    registry=REGISTRY,
)
