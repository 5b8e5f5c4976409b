"""Benchmarks: ``nox -s bench`` (or ``python -m tests.bench [names...]``) prints a table.

Targets are printed next to each measurement; nothing here fails a build. Everything runs against
the real parts of the test harness (private dockerd, git daemon, JupyterHub + proxy, registry).

How a build is measured (``perf``, the figure users see; details in :mod:`tests.bench_perf`):
``POST api/builds`` through the Hub's proxy with an API token, until the event stream's ``done``,
for the LocalProcessBuilder and the DockerBuilder (two Hubs side by side), with the bare
``jupyter-repo2docker`` CLI building the same git URL (it clones too, as our fetch stage does)
interleaved in the same rounds, in rotating order; 5 rounds; the BuildKit cache pruned and the
previous image removed before every build; medians and round-paired ratios; the Docker builder's
steps (create, start, first line, last line, exit, done) from ``docker events`` and the log's
arrival times. ``build`` times ``BuildManager`` directly (no HTTP, no proxy) and is kept for
comparison with older tables. ``coldstart``: service restart to first answer with 1,000 images and
200 finished build containers on the engine. The machine is shared (2 cores, other engineers'
tests): the bare CLI itself varies by ~15 % within minutes; read ratios, paired ones first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
from traitlets.config import Config

from r2d_core.builders import DockerBuilder, LocalProcessBuilder
from r2d_core.manager import BuildManager

Row = dict[str, Any]
ROWS: list[Row] = []
LOOPBACK_GIT = [r"^git://127\.0\.0\.1:\d+/"]


def row(benchmark: str, value: float | str, unit: str, target: str = "", note: str = "") -> None:
    ROWS.append(
        {"benchmark": benchmark, "value": value, "unit": unit, "target": target, "note": note}
    )
    print(
        f"  {benchmark}: {value} {unit} {('(target ' + target + ')') if target else ''} {note}",
        flush=True,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def print_table() -> None:
    headers = ["benchmark", "value", "unit", "target", "note"]
    table = [[str(r.get(h, "")) for h in headers] for r in ROWS]
    widths = [
        max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(headers)
    ]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print("\n" + line)
    print("-|-".join("-" * w for w in widths))
    for t in table:
        print(" | ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))


# ---- build overhead -------------------------------------------------------------------------------
def manager_config(docker_host: str, builder: str) -> Config:
    from tests.harness import REPO2DOCKER_IMAGE, repo2docker_config

    c = Config()
    c.DockerEngine.host = docker_host
    c.BuildManager.allowed_repo_patterns = LOOPBACK_GIT
    c.BuildManager.allowed_networks = ["127.0.0.0/8"]
    c.BuildManager.builder_class = DockerBuilder if builder == "docker" else LocalProcessBuilder
    c.Builder.repo2docker_config = repo2docker_config(network="none")
    c.DockerBuilder.image = REPO2DOCKER_IMAGE
    c.DockerBuilder.network_mode = "host"
    return c


def prune(env: dict[str, str]) -> None:
    subprocess.run(["docker", "builder", "prune", "-af"], env=env, check=False, capture_output=True)


async def bench_build(ctx: dict[str, Any], runs: int = 5) -> None:
    """Median build time through the BuildManager vs the bare CLI, per builder."""
    from tests.harness import bare_cli_argv, repo2docker_config

    git = ctx["git"]
    env = {**os.environ, "DOCKER_HOST": ctx["docker_host"]}
    url = git.url("quick")
    sha = git.repos["quick"].branches["main"]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(repo2docker_config(network="none"))
        config_file = f.name
    cli_times = []
    for _i in range(runs):
        prune(env)
        image = f"bench-cli-{secrets.token_hex(3)}:{sha}"
        t0 = time.perf_counter()
        subprocess.run(
            bare_cli_argv(config_file, image, sha, url),
            env=env,
            check=True,
            capture_output=True,
            cwd=tempfile.gettempdir(),
        )
        cli_times.append(time.perf_counter() - t0)
        subprocess.run(["docker", "rmi", "-f", image], env=env, capture_output=True, check=False)
    cli_median = statistics.median(cli_times)
    row(
        "bare repo2docker CLI build (quick repo)",
        round(cli_median, 3),
        "s",
        "",
        f"median of {runs}",
    )

    for builder, target in (("local", 1.02), ("docker", 1.04)):
        manager = BuildManager(config=manager_config(ctx["docker_host"], builder))
        await manager.start()
        times = []
        try:
            for _i in range(runs):
                prune(env)
                t0 = time.perf_counter()
                result = await manager.submit(
                    repo=url, ref=sha, owner="bench", name=f"quick-{builder}", force=True
                )
                assert result.build is not None
                async for _ in result.build.log.follow():
                    pass
                times.append(time.perf_counter() - t0)
                assert result.build.state.value == "built", result.build.error
        finally:
            await manager.stop()
        median = statistics.median(times)
        row(
            f"BuildManager build, {builder} builder", round(median, 3), "s", "", f"median of {runs}"
        )
        row(
            f"ratio {builder} builder / bare CLI",
            round(median / cli_median, 3),
            "x",
            f"<= {target}",
            "tljh-repo2docker 1.06, BinderHub 1.27",
        )
    os.unlink(config_file)


async def bench_repeat(ctx: dict[str, Any], count: int = 50) -> None:
    """A request for an already-built ref: ref resolution + lookup, no container started."""
    git = ctx["git"]
    env = {**os.environ, "DOCKER_HOST": ctx["docker_host"]}
    manager = BuildManager(config=manager_config(ctx["docker_host"], "local"))
    await manager.start()
    try:
        first = await manager.submit(
            repo=git.url("hello"), ref="main", owner="bench", name="repeat"
        )
        if first.build is not None:
            async for _ in first.build.log.follow():
                pass
        containers_before = subprocess.run(
            ["docker", "ps", "-aq"], env=env, capture_output=True, text=True
        ).stdout
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            result = await manager.submit(
                repo=git.url("hello"), ref="main", owner="bench", name="repeat"
            )
            times.append((time.perf_counter() - t0) * 1000)
            assert result.skipped
        containers_after = subprocess.run(
            ["docker", "ps", "-aq"], env=env, capture_output=True, text=True
        ).stdout
    finally:
        await manager.stop()
    row(
        "repeat request for a built ref (p50)",
        round(statistics.median(times), 2),
        "ms",
        "< 30",
        "BinderHub 57 ms, tljh-repo2docker rebuilds (~1 s)",
    )
    row("repeat request for a built ref (p95)", round(percentile(times, 95), 2), "ms", "< 30")
    row(
        "containers started by repeat requests",
        len(containers_after.split()) - len(containers_before.split()),
        "",
        "0",
    )


# ---- the service behind the Hub --------------------------------------------------------------------
def service_rss(hub_pid: int) -> int:
    """RSS in bytes of the service process the Hub started (found among its children)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        if b"r2d_tornado.app" in cmd and f"PPid:\t{hub_pid}\n" in status:
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("service process not found")


async def follow_events(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    on_log: Callable[[dict[str, Any], int], None] | None = None,
) -> tuple[list[int], dict[str, Any] | None]:
    ids: list[int] = []
    done = None
    async with client.stream("GET", url, headers=headers, timeout=None) as response:
        event = None
        current_id = -1
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                current_id = int(line[4:])
                ids.append(current_id)
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "log" and on_log is not None:
                on_log(json.loads(line[6:]), current_id)
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
    return ids, done


async def bench_service(ctx: dict[str, Any]) -> None:
    from tests.service_support import make_hub, service_config

    # 500 followers on one token: the per-caller cap on event streams (default 20, 429 past it)
    # would refuse 480 of them; this bench measures fan-out, so the cap is lifted here
    hub = make_hub(
        ctx["docker_host"],
        service_config=service_config() + "\nc.R2DService.max_streams_per_user = 0",
    )
    hub.config.roles = [
        {
            "name": "bench-all",
            "users": ["benchuser"],
            "scopes": [
                "access:services!service=r2d",
                "custom:repo2docker:build",
                "custom:repo2docker:delete",
            ],
        },
    ]
    hub.start()
    try:
        hub.wait_for_service()
        token = hub.token_for("benchuser")
        headers = {"Authorization": f"token {token}"}
        git = ctx["git"]
        limits = httpx.Limits(max_connections=700, max_keepalive_connections=700)
        async with httpx.AsyncClient(
            base_url=hub.service_url, headers=headers, timeout=60, limits=limits
        ) as client:
            hub_pid = hub.proc.pid if hub.proc else 0
            await asyncio.sleep(1)
            row(
                "service RSS, idle",
                round(service_rss(hub_pid) / 2**20, 1),
                "MiB",
                "< 100",
                "peers idle at 123-127 MiB",
            )

            # live log latency, one follower: line appended in the service -> received over SSE
            # through the proxy (the CLI's own batching comes before that and is not counted)
            r = await client.post("api/builds", json={"repo": git.url("slow"), "name": "latency"})
            build = r.json()
            latencies: list[float] = []

            def on_log(data: dict[str, Any], _id: int) -> None:
                latencies.append((time.time() - data["time"]) * 1000)

            async def cancel_after(seconds: float, build_id: str) -> None:
                await asyncio.sleep(seconds)
                await client.delete(f"api/builds/{build_id}")

            await asyncio.gather(
                follow_events(client, f"api/builds/{build['id']}/logs", headers, on_log),
                cancel_after(12, build["id"]),
            )
            live = latencies[5:] or latencies  # the first lines are a replay, not live
            row(
                "log latency added by the service + proxy (p50)",
                round(statistics.median(live), 2),
                "ms",
                "",
            )
            row(
                "log latency added by the service + proxy (p95)",
                round(percentile(live, 95), 2),
                "ms",
                "<= 5",
                "BinderHub ~2 ms w/o auth/proxy; tljh-repo2docker ~1.8 s",
            )

            # 500 followers of one build: memory, and every line to every follower
            r = await client.post("api/builds", json={"repo": git.url("slow"), "name": "followers"})
            build = r.json()
            followers = 500
            results: list[Any] = []

            async def many() -> None:
                tasks = [
                    asyncio.create_task(
                        follow_events(client, f"api/builds/{build['id']}/logs", headers)
                    )
                    for _ in range(followers)
                ]
                await asyncio.sleep(8)
                row(
                    f"service RSS, {followers} log followers",
                    round(service_rss(hub_pid) / 2**20, 1),
                    "MiB",
                    "< 150",
                )
                results.extend(await asyncio.gather(*tasks))

            await asyncio.gather(many(), cancel_after(10, build["id"]))
            total = (await client.get(f"api/builds/{build['id']}")).json()["log_lines"]
            complete = sum(
                1 for ids, done in results if ids == list(range(total)) and done is not None
            )
            row(
                f"followers that got every line, in order ({total} lines)",
                f"{complete}/{followers}",
                "",
                f"{followers}/{followers}",
            )

            # GET api/images with 1000 images
            await make_images(ctx, 1000)
            times = []
            await client.get("api/images")
            for _ in range(200):
                t0 = time.perf_counter()
                r = await client.get("api/images")
                times.append((time.perf_counter() - t0) * 1000)
            count = len(r.json()["images"])
            row(
                f"GET api/images through the proxy ({count} images) p50",
                round(statistics.median(times), 1),
                "ms",
                "< 30",
            )
            row(
                f"GET api/images through the proxy ({count} images) p99",
                round(percentile(times, 99), 1),
                "ms",
                "< 100",
            )
    finally:
        hub.cleanup()


async def make_images(ctx: dict[str, Any], count: int) -> None:
    """``count`` labelled images named as the manager would, in one ``docker load`` (fast): a
    docker-save archive whose images share one tiny layer and differ by their config's labels."""
    import hashlib
    import io
    import tarfile

    from r2d_core.engine import DockerEngine
    from r2d_core.models import LABEL_PREFIX, iso

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        add(layer, "hello.txt", b"hello\n")
    layer_tar = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()

    manager = BuildManager(config=manager_config(ctx["docker_host"], "local"))
    archive = io.BytesIO()
    manifest = []
    with tarfile.open(fileobj=archive, mode="w") as tar:
        add(tar, "layer/layer.tar", layer_tar)
        for i in range(count):
            owner, name, sha = f"user{i % 50}", f"img{i}", secrets.token_hex(20)
            labels = {
                f"{LABEL_PREFIX}{k}": v
                for k, v in {
                    "owner": owner,
                    "name": name,
                    "sha": sha,
                    "repo": "https://example.org/r",
                    "ref": "main",
                    "build-id": secrets.token_hex(6),
                    "created": iso(time.time()) or "",
                }.items()
            }
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Labels": labels},
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                }
            ).encode()
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            add(tar, config_name, config)
            manifest.append(
                {
                    "Config": config_name,
                    "RepoTags": [manager.image_for(owner, name, sha)],
                    "Layers": ["layer/layer.tar"],
                }
            )
        add(tar, "manifest.json", json.dumps(manifest).encode())
    engine = DockerEngine(host=ctx["docker_host"])
    try:
        async with engine.client._query(
            "images/load",
            method="POST",
            data=archive.getvalue(),
            headers={"Content-Type": "application/x-tar"},
            params={"quiet": "1"},
        ) as response:
            await response.read()
    finally:
        await engine.close()


async def bench_registry(ctx: dict[str, Any]) -> None:
    """Listing 1,000 tags across 100 repositories with labels (see tests/bench_registry.py)."""
    from tests.bench_registry import bench_list

    for r in await bench_list(repos=100, tags=10):
        row(r["benchmark"], r["value"], r["unit"], r.get("target", ""), r.get("note", ""))


async def bench_archive(ctx: dict[str, Any]) -> None:
    """Restoring 200 build records and their logs on start (see tests/bench_archive.py)."""
    from tests.bench_archive import bench_restore

    for r in await bench_restore(records=200, repos=20):
        row(r["benchmark"], r["value"], r["unit"], r.get("target", ""))


async def bench_fetch(ctx: dict[str, Any], runs: int = 10) -> None:
    """The fetch stage (URL model, allow-list, address check, pinned git, checkout) against a
    bare ``git clone`` + ``git checkout`` of the same repository: what the checks cost."""
    from r2d_core.fetch import Fetcher
    from r2d_core.netpolicy import NetPolicy

    git = ctx["git"]
    url = git.url("hello")
    sha = git.repos["hello"].head
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    bare, ours = [], []
    for _i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run(
                ["git", "clone", "-q", "--no-checkout", url, f"{tmp}/b"], env=env, check=True
            )
            subprocess.run(["git", "-C", f"{tmp}/b", "checkout", "-q", sha], env=env, check=True)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f = Fetcher([r"^git://127\.0\.0\.1:\d+/"], NetPolicy(["127.0.0.0/8"]), f"{tmp}/h")
            f.fetch(f.check(url, "repository"), f"{tmp}/o", sha)
            ours.append(time.perf_counter() - t0)
    row(
        "bare git clone + checkout (hello)",
        round(statistics.median(bare), 3),
        "s",
        "",
        f"median of {runs}",
    )
    row("fetch stage (hello)", round(statistics.median(ours), 3), "s", "", f"median of {runs}")
    row(
        "ratio fetch stage / bare git",
        round(statistics.median(ours) / statistics.median(bare), 2),
        "x",
        "<= 2",
        "5 git processes instead of 2",
    )


async def bench_refs(ctx: dict[str, Any]) -> None:
    """Ref lookups: a large real advertisement parsed, and hostile servers refused (loop lag)."""
    from r2d_core.netpolicy import NetPolicy
    from r2d_core.refs import parse_pkt_lines, resolve_ref
    from tests.harness.hostile import HostileGitServer, HostileHTTPServer

    data = bytearray(b"001e# service=git-upload-pack\n0000")
    for i in range(60_000):
        line = f"{i:040x} refs/heads/branch-{i}\n".encode()
        data += f"{len(line) + 4:04x}".encode() + line
    data += b"0000"
    start = time.perf_counter()
    refs = parse_pkt_lines(bytes(data))
    took = time.perf_counter() - start
    assert len(refs) == 60_000
    row(
        "parse 60k-ref advertisement", round(took * 1000, 1), "ms", "< 200", f"{len(data) >> 10} kB"
    )

    loop = asyncio.get_running_loop()
    policy = NetPolicy(["127.0.0.0/8"])
    for label, server in (
        ("0004 flood (http)", HostileHTTPServer("flood")),
        ("0004 flood (git://)", HostileGitServer("flood")),
    ):
        lags = [0.0]
        done = asyncio.Event()

        async def tick(done: asyncio.Event, lags: list[float]) -> None:
            while not done.is_set():
                t0 = loop.time()
                await asyncio.sleep(0.005)
                lags.append(loop.time() - t0 - 0.005)

        with server:
            ticker = asyncio.create_task(tick(done, lags))
            start = time.perf_counter()
            with contextlib.suppress(Exception):
                await resolve_ref(server.url("repo"), "main", policy=policy, timeout=30)
            took = time.perf_counter() - start
            done.set()
            await ticker
        row(f"refuse {label}", round(took * 1000), "ms", "< 1000")
        row(f"loop lag during {label}", round(max(lags) * 1000), "ms", "< 100")


async def bench_logs(ctx: dict[str, Any]) -> None:
    """Service RSS while 1,000 builds' logs pass through (see tests/bench_logs.py)."""
    from tests.bench_logs import bench_log_retention

    for r in await bench_log_retention(ctx):
        row(r["benchmark"], r["value"], r["unit"], r.get("target", ""), r.get("note", ""))


# ---- main -----------------------------------------------------------------------------------------
# ---- fair scheduling ---------------------------------------------------------------------------
async def bench_fair(ctx: dict[str, Any]) -> None:
    """How soon another owner's first build starts while one owner has their maximum waiting."""
    from r2d_core.models import Build
    from r2d_core.scheduler import Scheduler

    c = manager_config(ctx["docker_host"], "local")
    c.BuildManager.max_concurrent_builds = 1
    c.BuildManager.max_builds_per_owner = 1
    m = BuildManager(config=c)
    await m.start()
    git = ctx["git"]
    try:
        repo = git.url("quick")
        cap = m.max_queued_builds_per_owner
        hog = [
            (await m.submit(repo=repo, owner="hog", name=f"fair{i}", force=True)).build
            for i in range(cap + 1)
        ]
        other = (await m.submit(repo=repo, owner="other", name="fair", force=True)).build
        position = m.queue_position(other)
        async for _ in other.log.follow():
            pass
        wait = other.started - hog[0].finished
        row(
            "fair queue: other owner's first build starts after the slot frees",
            f"{wait * 1000:.0f}",
            "ms",
            "immediately (< 100 ms)",
            f"hog: 1 running + {cap} waiting; other's queue position {position}",
        )
        for build in hog:
            if not build.done:
                await m.cancel(build.id, wait=30)
    finally:
        await m.stop()

    class Limits:
        max_concurrent_builds = 20
        max_builds_per_owner = 2
        max_queued_builds = 10_000
        max_queued_builds_per_owner = 100

    scheduler = Scheduler(Limits())
    for owner in range(50):
        for n in range(100):
            scheduler.enqueue(
                Build(
                    id=f"{owner}-{n}",
                    owner=f"o{owner}",
                    name=f"i{n}",
                    repo="r",
                    ref="HEAD",
                    sha="0" * 40,
                    image=f"r2d-o{owner}-i{n}:x",
                )
            )
    t0 = time.perf_counter()
    started = scheduler.startable()
    decide = time.perf_counter() - t0
    t0 = time.perf_counter()
    scheduler.queue_position(scheduler.waiting[-1])
    position = time.perf_counter() - t0
    row(
        "scheduler: start 20 of 5,000 waiting (50 owners)",
        f"{decide * 1000:.2f}",
        "ms",
        "< 10 ms",
        f"{len(started)} started, one per owner first",
    )
    row("scheduler: queue position among 5,000 waiting", f"{position * 1000:.2f}", "ms", "< 10 ms")


async def bench_perf(ctx: dict[str, Any]) -> None:
    """End to end through the Hub, both builders, bare CLI interleaved (tests/bench_perf.py)."""
    from tests import bench_perf as perf

    await perf.bench_perf(ctx, row)


async def bench_coldstart(ctx: dict[str, Any]) -> None:
    """Service restart to first answer with 1,000 images and 200 build containers."""
    from tests import bench_perf as perf

    await perf.bench_coldstart(ctx, row, make_images)


BENCHES = {
    "perf": bench_perf,
    "coldstart": bench_coldstart,
    "refs": bench_refs,
    "build": bench_build,
    "fetch": bench_fetch,
    "repeat": bench_repeat,
    "service": bench_service,
    "registry": bench_registry,
    "archive": bench_archive,
    "fair": bench_fair,
    "logs": bench_logs,
}


async def run(names: list[str]) -> None:
    from tests.harness import Dockerd, GitServer, ensure_images

    dockerd = Dockerd().start()
    git = GitServer().start()
    try:
        ensure_images(dockerd.host)
        ctx = {"docker_host": dockerd.host, "git": git}
        for name in names:
            print(f"[{name}]", flush=True)
            await BENCHES[name](ctx)
    finally:
        git.stop()
        dockerd.stop()


def main() -> None:
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHES)}")
    asyncio.run(run([n for n in names if n in BENCHES]))
    print_table()


if __name__ == "__main__":
    main()
