"""Benchmark: the service's memory while 1,000 builds' worth of logs pass through it (not a test).

``await bench_log_retention(ctx)`` runs the real service behind a real Hub whose repo2docker command
is a stand-in printing a build-sized log (``LINES`` lines of ~100 characters, ~1 MB, no BuildKit in
between), submits 1,000 builds through the API (each followed to its end over the event stream,
through the Hub's proxy), with retention on (``build_history`` 200, ``max_total_log_bytes`` 64 MiB),
and samples the service's RSS every 100 builds: flat after warm-up is the target.

``synthetic()`` does the same with LogBuffers and one LogBudget only (no service), with and without
the global budget, to show what the budget saves.

Returns rows ``{"benchmark", "value", "unit", "target", "note"}``. Run alone with
``python -m tests.bench logs``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import deque
from typing import Any

import httpx

__all__ = ["bench_log_retention", "synthetic"]

BUILDS = 1000
LINES = 8000
HISTORY = 200
TOTAL_LOG_BYTES = 64 * 1024 * 1024
# the stand-in: LINES lines of ~100 characters, then a failure (no image: the build ends failed)
STAND_IN = (
    f"seq 1 {LINES} | sed 's/$/ {'x' * 90}/'; echo 'stand-in for repo2docker: no image'; exit 1"
)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _service_pid(hub: Any) -> int:
    from tests.harness.hub import _children_of

    for pid in _children_of(hub.proc.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"r2d_tornado.app" in f.read():
                return pid
    raise RuntimeError("service process not found")


async def _follow(client: httpx.AsyncClient, build_id: str, headers: dict[str, str]) -> int:
    """Follow a build's event stream to ``done``; returns the bytes received."""
    received = 0
    async with client.stream(
        "GET", f"api/builds/{build_id}/logs", headers=headers, timeout=120
    ) as response:
        async for chunk in response.aiter_bytes():
            received += len(chunk)
    return received


async def bench_log_retention(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from tests.service_support import make_hub

    git = ctx["git"]
    if "bench-logs" not in git.repos:
        git.add_repo("bench-logs", {"README.md": "logs benchmark\n"})
    hub = make_hub(ctx["docker_host"])
    hub.config.service_config += "\n" + "\n".join(
        [
            f"c.LocalProcessBuilder.command = {['sh', '-c', STAND_IN, 'sh']!r}",
            f"c.BuildManager.build_history = {HISTORY}",
            f"c.BuildManager.max_total_log_bytes = {TOTAL_LOG_BYTES}",
            "c.BuildManager.max_queued_builds_per_owner = 100",
            "c.BuildManager.max_builds_per_owner = 4",
        ]
    )
    rows: list[dict[str, Any]] = []
    hub.start()
    try:
        hub.wait_for_service()
        token = await asyncio.to_thread(hub.token_for, "alice")
        headers = {"Authorization": f"token {token}"}
        pid = _service_pid(hub)
        samples: list[tuple[int, int]] = [(0, _rss(pid))]
        done = 0
        received = 0
        next_index = 0
        t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=hub.service_url, timeout=60) as client:

            async def worker() -> None:
                nonlocal done, received, next_index
                while next_index < BUILDS:
                    i = next_index
                    next_index += 1
                    r = await client.post(
                        "api/builds",
                        headers=headers,
                        json={"repo": git.url("bench-logs"), "name": f"logs{i}"},
                    )
                    r.raise_for_status()
                    got = await _follow(client, r.json()["id"], headers)
                    received += got  # (not "received += await ...": that loses updates)
                    done += 1
                    if done % 100 == 0:
                        samples.append((done, _rss(pid)))

            await asyncio.gather(*(worker() for _ in range(8)))
        elapsed = time.monotonic() - t0
        curve = ", ".join(f"{n}: {rss / 2**20:.0f}" for n, rss in samples)
        start = dict(samples)[HISTORY] if HISTORY in dict(samples) else samples[1][1]
        end = samples[-1][1]
        rows += [
            {
                "benchmark": f"logs: service RSS after warm-up (build {HISTORY})",
                "value": f"{start / 2**20:.0f}",
                "unit": "MiB",
                "note": f"{BUILDS} builds x {LINES} lines in {elapsed:.0f}s, "
                f"{received / 1e9:.1f} GB of events; RSS MiB by build: {curve}",
            },
            {
                "benchmark": f"logs: service RSS at build {BUILDS}",
                "value": f"{end / 2**20:.0f}",
                "unit": "MiB",
                "target": f"flat: <= warm-up + 10% ({start * 1.1 / 2**20:.0f})",
                "note": f"history {HISTORY}, max_total_log_bytes "
                f"{TOTAL_LOG_BYTES // 2**20} MiB, max_log_bytes 4 MiB",
            },
        ]
    finally:
        hub.cleanup()
    rows += synthetic()
    return rows


def synthetic(builds: int = 400, lines: int = 2000) -> list[dict[str, Any]]:
    """LogBuffers of 400 builds with history 200, with and without the global budget (memory
    traced by tracemalloc, which is slow: fewer builds than the service run)."""
    import tracemalloc

    from r2d_core.logs import LogBudget, LogBuffer

    rows = []
    for label, total in (("with", TOTAL_LOG_BYTES), ("without", 0)):
        gc.collect()
        tracemalloc.start()
        budget = LogBudget(total, compact_bytes=512 * 1024, minimum_bytes=32 * 1024)
        history: deque[LogBuffer] = deque(maxlen=HISTORY)
        text = " " + "x" * 90
        peak_at_end = 0
        for b in range(builds):
            log = LogBuffer(4 * 1024 * 1024, budget=budget)
            for i in range(lines):
                log.append("building", f"{i}{text}")
            log.close()
            history.append(log)
            if b == builds - 1:
                peak_at_end = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        rows.append(
            {
                "benchmark": f"logs: synthetic, {label} the global budget",
                "value": f"{peak_at_end / 2**20:.0f}",
                "unit": "MiB",
                "target": f"<= {TOTAL_LOG_BYTES // 2**20 * 1.1:.0f}" if total else "",
                "note": f"traced memory after {builds} builds x {lines} lines, history {HISTORY} "
                f"(budget charge {budget.used / 2**20:.0f} MiB, {budget.compactions} compactions)",
            }
        )
        del history, log, budget
    return rows


if __name__ == "__main__":
    for r in synthetic(*(int(a) for a in sys.argv[1:3])):
        print(r)
