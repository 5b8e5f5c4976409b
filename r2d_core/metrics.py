"""Prometheus metrics of the build manager (module level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BUILDS",
    "BUILDS_IN_PROGRESS",
    "BUILD_DURATION",
    "LOG_BYTES",
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
LOG_BYTES = Gauge(
    "r2d_log_bytes",
    "Memory the build logs hold (what BuildManager.max_total_log_bytes bounds)",
)
