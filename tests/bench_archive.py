"""Benchmark: restoring 200 build records and their logs from a real docker-registry (not a test).

``await bench_restore()`` starts a registry, stores ``records`` build records (each with a log of
``lines`` lines) across ``repos`` repositories through :class:`~r2d_core.registry.artifacts.
ArtifactStore`, then times what a service on a fresh engine does before it answers:
:meth:`~r2d_core.archive.BuildArchive.restore` (catalog, tag lists, artifact manifests, record and
log blobs, decoding). Run alone with ``python -m tests.bench_archive [records] [repos]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from types import SimpleNamespace
from typing import Any

from r2d_core.archive import BuildArchive
from r2d_core.logs import LogBudget, LogBuffer
from r2d_core.models import Build, BuildState, iso
from r2d_core.records import encode_log, encode_record
from r2d_core.registry import RegistryAuth, RegistryClient
from r2d_core.registry.artifacts import ArtifactStore
from tests.harness.registry import RegistryServer

__all__ = ["bench_restore"]


class _Registry:
    """What BuildArchive reads of r2d_core.registry.config.Registry: a configured client."""

    configured = True

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    @property
    def timeout(self) -> float:  # the restore's deadline is a multiple of it
        return self._client.timeout

    def client(self) -> RegistryClient:
        return self._client


def _build(i: int, repos: int, lines: int, host: str) -> tuple[str, Build]:
    repository = f"r2d-bench{i % repos:03d}-img"
    log = LogBuffer(4 * 1024 * 1024)
    for n in range(lines):
        log.append(
            "building", f"#{n} [2/4] RUN step {n} of build {i}: some output of typical length"
        )
    log.close()
    build = Build(
        id=f"{i:012x}",
        owner=f"bench{i % repos:03d}",
        name="img",
        repo=f"https://git.example.org/bench/{i}.git",
        ref="main",
        sha=f"{i:040x}",
        image=f"{host}/{repository}:{i:040x}",
        push=True,
        state=BuildState.FAILED,
        created=1_700_000_000 + i,
        log=log,
    )
    return repository, build


async def bench_restore(
    records: int = 200, repos: int = 20, lines: int = 200
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float, unit: str, target: str) -> None:
        rows.append({"benchmark": name, "value": round(value, 2), "unit": unit, "target": target})

    with RegistryServer("anonymous", access_log=False) as server:
        async with RegistryClient(server.url, auth=RegistryAuth()) as client:
            store = ArtifactStore(client)
            started = time.perf_counter()
            sem = asyncio.Semaphore(16)

            async def put(i: int) -> None:
                repository, build = _build(i, repos, lines, server.host)
                async with sem:
                    await store.push(
                        repository,
                        build_id=build.id,
                        owner=build.owner,
                        created=iso(build.created) or "",
                        record=encode_record(build),
                        log=encode_log(build.log),
                        image_tag=None,
                    )

            await asyncio.gather(*(put(i) for i in range(records)))
            row(
                f"archive: store {records} records (setup)", time.perf_counter() - started, "s", "-"
            )
        best = float("inf")
        requests = 0
        for _ in range(3):
            # a new client each time: nothing cached, as in a service that just started
            async with RegistryClient(server.url, auth=RegistryAuth()) as client:
                settings = SimpleNamespace(
                    build_history=records, max_log_bytes=4 * 1024 * 1024, log_budget=LogBudget(0)
                )
                archive = BuildArchive(
                    settings=settings,  # type: ignore[arg-type]
                    registry=_Registry(client),  # type: ignore[arg-type]
                    location=lambda image: None,
                    registry_prefix=lambda: "",
                    log=None,
                )
                t0 = time.perf_counter()
                builds = await archive.restore(set())
                best = min(best, time.perf_counter() - t0)
                requests = int(archive.last_restore["requests"])
                if len(builds) != records or any(b.log.total != lines for b in builds):
                    raise RuntimeError(f"restored {len(builds)} builds, expected {records}")
        row(
            f"archive: restore {records} records + logs ({lines} lines) on start",
            best * 1000,
            "ms",
            "< 2000",
        )
        row(
            f"archive: restore {records} records + logs on start",
            requests,
            "requests",
            f"{1 + repos + records} (catalog + tag lists + 1 manifest per build, record and log "
            "embedded)",
        )
    return rows


def main(argv: list[str]) -> None:  # pragma: no cover - manual use
    records = int(argv[0]) if argv else 200
    repos = int(argv[1]) if len(argv) > 1 else 20
    for r in asyncio.run(bench_restore(records, repos)):
        print(f"{r['benchmark']:<62} {r['value']:>10} {r['unit']:<9} target {r['target']}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
