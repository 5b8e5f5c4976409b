"""Benchmark: listing 1,000 tags with labels from a real docker-registry (not a test).

``await bench_list()`` starts a registry, pushes ``repos * tags`` small images (config blobs
carrying labels) through the registry API, then lists every tag with its labels:

* cold, first ever: a new client, no snapshot (catalog, tag lists, manifest and config per tag),
  as after the registry was filled by others or by an older version of the service;
* revalidated in full: digest caches warm, ``listing_ttl`` passed: catalog, tag lists and one
  conditional GET (``If-None-Match``: the digest; 304) per tag, every tag;
* warm: within ``listing_ttl`` (no request at all);
* cold in a new process that reads the listing snapshot the previous one wrote
  (:mod:`r2d_core.registry.snapshot`), with the default full revalidation, then the background
  verification of what the snapshot said;
* revalidated with ``revalidate_batch=64`` (an option: only 64 tags re-checked, so partial).

The first two also run over httpx's own connection pool (``http_pool="httpx"``, the client before
the aiohttp pool). Each timed row is the best of ``runs``; its note gives the client's and the
registry's CPU seconds (user+sys) for that run, and the machine's load average is a row of its
own: on 2 shared cores the registry's CPU is most of a cold listing.

Returns rows ``{"benchmark", "value", "unit", "target", "note"}``. Run alone with
``python -m tests.bench_registry [repos] [tags]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from r2d_core.registry import RegistryClient
from r2d_core.registry.snapshot import read_snapshot, write_snapshot
from tests.harness.registry import RegistryServer

__all__ = ["bench_list"]

#: what the service lists (its image prefix); the snapshot's repository "r2d" is not in it
PREFIX = "r2d-bench"


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


def _cpu(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (this process when None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Run:
    """The best (fastest) of several timed runs, with its request count and CPU split."""

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self.best = float("inf")
        self.requests = 0
        self.note = ""

    async def time(self, requests: list[httpx.Request], work: Callable[[], Awaitable[Any]]) -> Any:
        requests.clear()
        cpu0, reg0 = _cpu(None), _cpu(self.server.pid)
        started = time.perf_counter()
        result = await work()
        took = time.perf_counter() - started
        cpu1, reg1 = _cpu(None), _cpu(self.server.pid)
        if took < self.best:
            self.best, self.requests = took, len(requests)
            self.note = f"CPU s: client {cpu1 - cpu0:.2f}, registry {reg1 - reg0:.2f}"
        return result


async def bench_list(repos: int = 100, tags: int = 10, runs: int = 3) -> list[dict[str, Any]]:
    """Populate a fresh registry and time listing all ``repos * tags`` tags with labels."""
    total = repos * tags
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float, unit: str, target: str = "-", note: str = "") -> None:
        rows.append(
            {
                "benchmark": name,
                "value": round(value, 1),
                "unit": unit,
                "target": target,
                "note": note,
            }
        )

    def timed(name: str, run: _Run, target: str, expected: str) -> None:
        row(name, run.best * 1000, "ms", target, run.note)
        row(name, run.requests, "requests", expected)

    row("registry: load average (1 min) before", os.getloadavg()[0], "", "-", "2 cores, shared")
    with RegistryServer("anonymous", access_log=False) as server:
        started = time.perf_counter()
        await _populate(server, repos, tags)
        row(f"registry: push {total} images (setup)", time.perf_counter() - started, "s")

        requests: list[httpx.Request] = []

        async def count(request: httpx.Request) -> None:
            requests.append(request)

        def client(**kwargs: Any) -> RegistryClient:
            kwargs.setdefault("listing_ttl", 3600)
            return RegistryClient(server.url, event_hooks={"request": [count]}, **kwargs)

        # the snapshot's repository exists from the start (an empty snapshot), so that every
        # run reads the same catalog: its pages of 100 names count like any other request
        async with client() as c:
            await write_snapshot(c, "r2d")
        pages = -(-(repos + 1) // 100)
        expected_cold = (
            f"{pages + repos + 2 * total} (catalog pages + tag lists + manifest + config per tag)"
        )
        expected_full = (
            f"{pages + repos + total} (catalog pages + tag lists + 1 conditional GET per tag)"
        )
        images: list[Any] = []
        for pool in ("aiohttp", "httpx"):
            label = "" if pool == "aiohttp" else " [httpx pool, before]"
            cold, full, warm = _Run(server), _Run(server), _Run(server)
            for _ in range(runs):
                async with client(http_pool=pool) as c:
                    listed = await cold.time(requests, lambda c=c: c.list_images(PREFIX))
                    if len(listed) != total or any(not i.labels for i in listed):
                        raise RuntimeError(f"listed {len(listed)} images, expected {total}")
                    images = images or listed
                    if listed != images:
                        raise RuntimeError("the two pools list differently")
                    c.listing_ttl = 0
                    for _ in range(runs):
                        if await full.time(requests, lambda c=c: c.list_images(PREFIX)) != images:
                            raise RuntimeError("the revalidated listing differs")
                    c.listing_ttl = 3600
                    for _ in range(runs):
                        await warm.time(requests, lambda c=c: c.list_images(PREFIX))
                    if pool == "aiohttp":
                        await write_snapshot(c, "r2d")
            name = f"registry: list {total} tags, cold, first ever (no snapshot){label}"
            timed(name, cold, "< 1000", expected_cold)
            name = f"registry: list {total} tags, revalidated in full (TTL passed){label}"
            timed(name, full, "< 500", expected_full)
            if pool == "aiohttp":
                timed(f"registry: list {total} tags, warm (within TTL)", warm, "< 50", "0")

        # what a restarted service does (the snapshot in the registry, full revalidation by
        # default), then the background check of what the snapshot said of each image
        snap, verify, batch = _Run(server), _Run(server), _Run(server)
        for _ in range(runs):
            async with client() as c:

                async def from_snapshot(c: RegistryClient = c) -> list[Any]:
                    await read_snapshot(c, "r2d")
                    return await c.list_images(PREFIX)

                if await snap.time(requests, from_snapshot) != images:
                    raise RuntimeError("the listing from the snapshot differs")
                checked, corrected = await verify.time(requests, c.verify_imported)
                if (checked, corrected) != (total, 0):
                    raise RuntimeError(f"verification: {checked} checked, {corrected} corrected")
            async with client(revalidate_batch=64) as c:
                await read_snapshot(c, "r2d")
                await c.list_images(PREFIX)
                c.listing_ttl = 0
                if await batch.time(requests, lambda c=c: c.list_images(PREFIX)) != images:
                    raise RuntimeError("the batched listing differs")
        name = f"registry: list {total} tags, cold, new process (snapshot, full revalidation)"
        timed(name, snap, "< 1000", f"{pages + 2 + repos + total} (+ snapshot manifest and blob)")
        name = f"registry: verify the snapshot's {total} summaries (background, 4 at a time)"
        timed(name, verify, "-", f"{2 * total} (manifest by digest + config)")
        name = f"registry: list {total} tags, revalidated, batch 64 (partial: 64 re-checked)"
        timed(name, batch, "< 500", f"{pages + repos + 64} (catalog pages + tag lists + 64)")
    row("registry: load average (1 min) after", os.getloadavg()[0], "", "-", "2 cores, shared")
    return rows


def main(argv: list[str]) -> None:  # pragma: no cover - manual use
    repos = int(argv[0]) if argv else 100
    tags = int(argv[1]) if len(argv) > 1 else 10
    for r in asyncio.run(bench_list(repos, tags)):
        print(
            f"{r['benchmark']:<80} {r['value']:>8} {r['unit']:<9} target {r['target']:<8} "
            f"{r['note']}"
        )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
