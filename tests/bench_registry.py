"""Benchmark: listing 1,000 tags with labels from a real docker-registry (not a test).

``await bench_list()`` starts a registry, pushes ``repos * tags`` small images (config blobs
carrying labels) through the registry API, then lists every tag with its labels three ways:

* cold: a new client, nothing cached (catalog, tag lists, manifest and config per tag);
* revalidated: digest caches warm, ``listing_ttl`` passed (catalog, tag lists, one HEAD per tag);
* warm: within ``listing_ttl`` (no request at all);
* cold in a new process that reads the listing snapshot the previous one wrote
  (:mod:`r2d_core.registry.snapshot`), and revalidated with ``revalidate_batch=64`` (what the
  service is configured with by default).

Returns rows ``{"benchmark", "value", "unit", "target"}``. Run alone with
``python -m tests.bench_registry [repos] [tags]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx

from r2d_core.registry import RegistryClient
from r2d_core.registry.snapshot import read_snapshot, write_snapshot
from tests.harness.registry import RegistryServer

__all__ = ["bench_list"]


async def _populate(server: RegistryServer, repos: int, tags: int) -> None:
    async with server.pusher(concurrency=16) as pusher:

        async def one(r: int, t: int) -> None:
            repository = f"r2d-bench{r:03d}-repo"
            await pusher.push_image(
                repository,
                f"{t:040x}",
                labels={
                    "repo2docker.repo": f"https://git.example.org/bench/{r}.git",
                    "repo2docker.ref": f"{t:040x}",
                    "r2d.owner": f"bench{r:03d}",
                },
            )

        await asyncio.gather(*(one(r, t) for r in range(repos) for t in range(tags)))


async def bench_list(repos: int = 100, tags: int = 10, runs: int = 3) -> list[dict[str, Any]]:
    """Populate a fresh registry and time listing all ``repos * tags`` tags with labels."""
    total = repos * tags
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float, unit: str, target: str) -> None:
        rows.append({"benchmark": name, "value": round(value, 1), "unit": unit, "target": target})

    with RegistryServer("anonymous", access_log=False) as server:
        started = time.perf_counter()
        await _populate(server, repos, tags)
        row(f"registry: push {total} images (setup)", time.perf_counter() - started, "s", "-")

        requests: list[httpx.Request] = []

        async def count(request: httpx.Request) -> None:
            requests.append(request)

        async with RegistryClient(
            server.url, listing_ttl=3600, event_hooks={"request": [count]}
        ) as client:
            started = time.perf_counter()
            images = await client.list_images()
            cold = time.perf_counter() - started
            if len(images) != total or any(not i.labels for i in images):
                raise RuntimeError(f"listed {len(images)} images, expected {total} with labels")
            row(f"registry: list {total} tags, cold", cold * 1000, "ms", "-")
            row(f"registry: list {total} tags, cold", len(requests), "requests", "-")

            best = float("inf")
            for _ in range(runs):
                requests.clear()
                client.listing_ttl = 0
                started = time.perf_counter()
                assert await client.list_images() == images
                best = min(best, time.perf_counter() - started)
            row(f"registry: list {total} tags, revalidated (TTL passed)", best * 1000, "ms", "-")
            row(
                f"registry: list {total} tags, revalidated (TTL passed)",
                len(requests),
                "requests",
                f"{1 + repos + total} (catalog + tag lists + 1 conditional GET per tag)",
            )

            client.listing_ttl = 3600
            best = float("inf")
            for _ in range(runs):
                requests.clear()
                started = time.perf_counter()
                assert await client.list_images() == images
                best = min(best, time.perf_counter() - started)
            row(f"registry: list {total} tags, warm (within TTL)", best * 1000, "ms", "< 50")
            row(f"registry: list {total} tags, warm (within TTL)", len(requests), "requests", "0")
            await write_snapshot(client, "r2d")

        # what the service does (c.Registry.revalidate_batch = 64, listing snapshot): a new
        # process reads the snapshot the last one wrote, then lists
        best_cold, best_reval = float("inf"), float("inf")
        cold_requests = reval_requests = 0
        for _ in range(runs):
            async with RegistryClient(
                server.url, listing_ttl=3600, revalidate_batch=64, event_hooks={"request": [count]}
            ) as client:
                requests.clear()
                started = time.perf_counter()
                await read_snapshot(client, "r2d")
                listed = await client.list_images()
                best_cold = min(best_cold, time.perf_counter() - started)
                cold_requests = len(requests)
                if listed != images:
                    raise RuntimeError("the listing from the snapshot differs")
                client.listing_ttl = 0
                requests.clear()
                started = time.perf_counter()
                assert await client.list_images() == images
                best_reval = min(best_reval, time.perf_counter() - started)
                reval_requests = len(requests)
        name = f"registry: list {total} tags, cold, new process (snapshot in the registry)"
        row(name, best_cold * 1000, "ms", "< 1000")
        row(
            name,
            cold_requests,
            "requests",
            f"~{3 + repos + 64} (catalog + snapshot + tag lists + 64 re-checks)",
        )
        name = f"registry: list {total} tags, revalidated (batch 64, conditional GET)"
        row(name, best_reval * 1000, "ms", "< 500")
        row(name, reval_requests, "requests", f"{1 + repos + 64} (catalog + tag lists + 64)")
    return rows


def main(argv: list[str]) -> None:  # pragma: no cover - manual use
    repos = int(argv[0]) if argv else 100
    tags = int(argv[1]) if len(argv) > 1 else 10
    for r in asyncio.run(bench_list(repos, tags)):
        print(f"{r['benchmark']:<58} {r['value']:>10} {r['unit']:<9} target {r['target']}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
