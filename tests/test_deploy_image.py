"""The service's container image (``deploy/Dockerfile``), built and run for real.

The image is built from the local Debian test image (nothing pulled) on the private dockerd, with
the wheel of this checkout, and cached as a ``docker save`` tarball keyed by everything that goes
into it. The test then runs it on that engine with the engine's socket mounted and host network
(loopback only), registers it with a real JupyterHub as an *external* service on its own port —
the Hub and the service share nothing but HTTP — and drives a build through the Hub's proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from r2d_core import __version__
from tests.harness import DEBIAN_IMAGE, Dockerd, HarnessError, cache_dir, docker_run
from tests.harness.dockerd import docker_cli
from tests.harness.images import DOCKER_BUILDX, HOST_CA_BUNDLE, file_lock
from tests.service_support import SERVICE, Callers, make_hub, service_config, wait_build

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
#: a local stand-in for docker:*-cli and docker/buildx-bin: the host's docker CLI at
#: /usr/local/bin/docker and buildx plugin at /buildx, the paths the Dockerfile copies from
DOCKER_CLI_IMAGE = "r2d-test/docker-cli:host"
SERVICE_IMAGE_REPO = "r2d-test/repo2docker-service"
#: the unprivileged user the Dockerfile creates (its R2D_UID default)
SERVICE_UID = 10001
#: cached image tarballs kept besides the newest (older ones are removed)
KEEP_CACHED = 2

__all__: list[str] = []


# -- building the image --------------------------------------------------------------------------


def build_wheel(dest: Path) -> Path:
    """The wheel of this checkout (hatchling's builds are reproducible: same tree, same bytes)."""
    dest.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dest,
            ROOT,
        ],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise HarnessError(f"pip wheel failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    wheels = sorted(dest.glob("repo2docker_service-*.whl"))
    if len(wheels) != 1:
        raise HarnessError(f"expected one wheel in {dest}, found {wheels}")
    return wheels[0]


def image_key(wheel: Path) -> str:
    """Hash of everything the image is made of that can change between runs."""
    digest = hashlib.sha256()
    for part in (DOCKERFILE, ENTRYPOINT, wheel):
        digest.update(part.name.encode() + b"\0" + part.read_bytes() + b"\0")
    # the base image (its recipe version) and the binaries copied in
    digest.update(cache_dir().name.encode())
    for binary in (docker_cli(), DOCKER_BUILDX):
        stat = os.stat(binary)
        digest.update(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _revision() -> str:
    res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def _import_docker_cli_image(host: str) -> None:
    """``docker import`` a rootfs holding only the host's docker CLI and buildx plugin."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for src, dest in ((docker_cli(), "usr/local/bin/docker"), (DOCKER_BUILDX, "buildx")):
            info = tar.gettarinfo(os.path.realpath(src), arcname=dest)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(src, "rb") as fh:
                tar.addfile(info, fh)
    _docker_bytes(host, ["import", "-", DOCKER_CLI_IMAGE], buf.getvalue(), timeout=300)


def _docker_bytes(host: str, args: list[str], data: bytes, timeout: float) -> None:
    res = subprocess.run(
        [docker_cli(), *args],
        input=data,
        capture_output=True,
        env={**os.environ, "DOCKER_HOST": host},
        timeout=timeout,
    )
    if res.returncode != 0:
        raise HarnessError(f"docker {' '.join(args)} failed: {res.stderr.decode()[-2000:]}")


def ensure_service_image(host: str, say: Callable[[str], None] = print) -> str:
    """Build (or load from the cache) the service image on the engine at ``host``; its name."""
    workdir = Path(tempfile.mkdtemp(prefix="r2d-deploy-"))
    try:
        wheel = build_wheel(workdir / "dist")
        key = image_key(wheel)
        image = f"{SERVICE_IMAGE_REPO}:{key}"
        present = docker_run(host, ["image", "inspect", image], check=False).returncode == 0
        if present:
            return image
        cache = cache_dir()
        tarball = cache / f"deploy-{key}.tar"
        with file_lock(cache / "deploy.lock"):
            if tarball.exists():
                t0 = time.monotonic()
                docker_run(host, ["load", "-q", "-i", str(tarball)])
                say(f"deploy: loaded {image} from the cache in {time.monotonic() - t0:.1f}s")
                return image
            t0 = time.monotonic()
            _build(host, workdir, wheel, image)
            say(f"deploy: built {image} in {time.monotonic() - t0:.1f}s")
            tmp = tarball.with_name(f"{tarball.name}.tmp-{os.getpid()}")
            docker_run(host, ["save", "-o", str(tmp), image])
            os.replace(tmp, tarball)
            old = sorted(cache.glob("deploy-*.tar"), key=lambda p: p.stat().st_mtime)
            for stale in old[: -(KEEP_CACHED + 1)]:
                stale.unlink(missing_ok=True)
        return image
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build(host: str, workdir: Path, wheel: Path, image: str) -> None:
    # the build context a checkout would give: dist/<wheel> and deploy/entrypoint.sh
    (workdir / "deploy").mkdir()
    shutil.copy2(ENTRYPOINT, workdir / "deploy" / "entrypoint.sh")
    _import_docker_cli_image(host)
    log = workdir / "build.log"
    argv = [
        docker_cli(),
        "buildx",
        "build",
        # the engine has no bridge: BuildKit's RUN steps use the host's network (apt, pip)
        "--network",
        "host",
        "--progress",
        "plain",
        "--secret",
        f"id=pip_cert,src={HOST_CA_BUNDLE}",
        "--build-arg",
        f"BASE_IMAGE={DEBIAN_IMAGE}",
        "--build-arg",
        f"DOCKER_CLI_IMAGE={DOCKER_CLI_IMAGE}",
        "--build-arg",
        f"BUILDX_IMAGE={DOCKER_CLI_IMAGE}",
        "--build-arg",
        f"VERSION={__version__}",
        "--build-arg",
        f"REVISION={_revision()}",
        "--build-arg",
        f"CREATED={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        "--build-arg",
        "SOURCE=file://" + str(ROOT),
        "-f",
        str(DOCKERFILE),
        "-t",
        image,
        str(workdir),
    ]
    env = {**os.environ, "DOCKER_HOST": host}
    env.pop("DOCKER_CONTEXT", None)
    with open(log, "wb") as fh:
        res = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=1200)
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise HarnessError(f"docker buildx build of {image} failed ({res.returncode}):\n{tail}")


# -- running it ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_image(dockerd: Dockerd, local_images: dict[str, str]) -> str:
    return ensure_service_image(dockerd.host)


def _inspect(host: str, what: str, fmt: str) -> str:
    return docker_run(host, ["inspect", "-f", fmt, what]).stdout.strip()


def test_image_labels_and_user(docker_host, service_image):
    labels = docker_run(
        docker_host, ["image", "inspect", "-f", "{{json .Config.Labels}}", service_image]
    ).stdout
    labels = json.loads(labels)
    assert labels["org.opencontainers.image.title"] == "repo2docker-service"
    assert labels["org.opencontainers.image.version"] == __version__
    # the commit it was built from: HEAD, or an earlier one when the cached image is reused (the
    # cache key is the content: an older commit with the same wheel made the same image)
    revision = labels["org.opencontainers.image.revision"]
    assert re.fullmatch(r"[0-9a-f]{40}", revision), revision
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", revision, "HEAD"], cwd=ROOT)
    assert ancestor.returncode == 0, f"{revision} is not HEAD or one of its ancestors"
    assert labels["org.opencontainers.image.licenses"] == "BSD-3-Clause"
    assert labels["org.opencontainers.image.base.name"] == DEBIAN_IMAGE
    assert time.strptime(labels["org.opencontainers.image.created"], "%Y-%m-%dT%H:%M:%SZ")
    # numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd
    assert (
        _inspect(docker_host, service_image, "{{.Config.User}}") == f"{SERVICE_UID}:{SERVICE_UID}"
    )
    assert _inspect(docker_host, service_image, "{{json .Config.Healthcheck.Test}}") == (
        '["CMD","r2d-entrypoint","healthcheck"]'
    )


def test_tools_inside_the_image(docker_host, service_image):
    script = "jupyter-repo2docker --version; docker --version; docker buildx version; r2d-service --version"
    res = docker_run(
        docker_host,
        ["run", "--rm", "--network", "none", service_image, "sh", "-c", script],
    )
    assert "2026.4.0" in res.stdout, res.stdout
    assert "github.com/docker/buildx" in res.stdout, res.stdout
    assert __version__ in res.stdout.splitlines()[-1], res.stdout


def test_entrypoint_refuses_to_start_without_token(docker_host, service_image):
    res = docker_run(
        docker_host, ["run", "--rm", "--network", "none", service_image], check=False, timeout=60
    )
    assert res.returncode == 64, (res.returncode, res.stdout, res.stderr)
    assert "JUPYTERHUB_API_TOKEN" in res.stderr and "api_token of the 'repo2docker' service" in (
        res.stderr
    )
    res = docker_run(
        docker_host,
        [
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "JUPYTERHUB_API_TOKEN_FILE=/run/secrets/missing",
            service_image,
        ],
        check=False,
        timeout=60,
    )
    assert res.returncode == 64 and "mount the secret there" in res.stderr, res.stderr


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid
    raise AssertionError(f"no Uid line for {pid}")


async def test_service_container_behind_an_external_hub(
    dockerd, docker_host, service_image, git_server, tmp_path
):
    """Build through the Hub's proxy with the service running in its container."""
    from tests.harness.hub import login

    socket_path = dockerd.socket_path
    st = os.stat(socket_path)
    # dockerd gives its socket to the "docker" group (0660): the unprivileged user joins that group
    assert st.st_mode & 0o060 == 0o060, (
        f"{socket_path} is not group read-writable: {oct(st.st_mode)}"
    )

    # the Hub's ports and tokens are known before it starts: the container starts first, since a
    # Hub waits ~30 s for an external service that does not answer yet
    hub = make_hub(docker_host, mode="external")
    name = f"r2d-deploy-test-{secrets.token_hex(4)}"
    config = tmp_path / "r2d_service_config.py"
    config.write_text(service_config())
    token_file = tmp_path / "hub-token"
    token_file.write_text(hub.service_token)
    os.chown(token_file, SERVICE_UID, SERVICE_UID)
    token_file.chmod(0o400)
    callers = Callers(hub)
    try:
        t0 = time.monotonic()
        docker_run(
            docker_host,
            [
                "run",
                "-d",
                "--name",
                name,
                # loopback only: the engine has no bridge, and the Hub is on 127.0.0.1
                "--network",
                "host",
                "--read-only",
                # a read-only root, as the Kubernetes recipe runs it: /tmp (build scratch) and
                # $HOME (the docker CLI's ~/.docker) are the only writable places it needs
                "--tmpfs",
                "/tmp:mode=1777",
                "--tmpfs",
                f"/home/r2d:uid={SERVICE_UID},gid={SERVICE_UID},mode=0700",
                "--group-add",
                str(st.st_gid),
                "-v",
                f"{socket_path}:/var/run/docker.sock",
                "-v",
                f"{config}:/etc/repo2docker-service/r2d_service_config.py:ro",
                "-v",
                f"{token_file}:/run/secrets/hub-token:ro",
                "-e",
                "JUPYTERHUB_API_TOKEN_FILE=/run/secrets/hub-token",
                "-e",
                f"JUPYTERHUB_SERVICE_NAME={SERVICE}",
                "-e",
                f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.hub_port}/hub/api",
                "-e",
                f"JUPYTERHUB_SERVICE_URL=http://127.0.0.1:{hub.config.service_port}",
                "--health-interval",
                "1s",
                "--health-retries",
                "30",
                service_image,
            ],
        )
        hub.start()

        def logs() -> str:
            res = docker_run(docker_host, ["logs", "--tail", "40", name], check=False)
            return res.stdout + res.stderr

        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                assert _inspect(docker_host, name, "{{.State.Running}}") == "true", logs()
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{hub.service_url}health")
                    if r.status_code == 200:
                        break
                assert time.monotonic() < deadline, f"service not up through the proxy:\n{logs()}"
                await asyncio.sleep(0.2)
        print(f"\ncontainer up behind the Hub in {time.monotonic() - t0:.1f}s")

        # every process of the container runs as the unprivileged user
        init = int(_inspect(docker_host, name, "{{.State.Pid}}"))
        service_pids = _children(init)
        assert service_pids, "tini has no child"
        cmdline = Path(f"/proc/{service_pids[0]}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b"r2d-service" in cmdline, cmdline
        assert {_uid(p) for p in [init, *service_pids]} == {SERVICE_UID}

        # a user's token, through the proxy
        alice = await callers.token("alice")
        r = await alice.request(
            "POST",
            "api/builds",
            json={"repo": git_server.url("hello"), "ref": "v1", "name": "deployed", "force": True},
        )
        assert r.status_code == 202, r.text
        t0 = time.monotonic()
        done = await wait_build(alice, r.json()["id"])
        print(f"build in the container: {time.monotonic() - t0:.1f}s")
        assert done["state"] == "built", (json.dumps(done, indent=1), logs())
        r = await alice.request("GET", "api/images")
        assert r.status_code == 200, r.text
        mine = [i for i in r.json()["images"] if (i["owner"], i["name"]) == ("alice", "deployed")]
        assert len(mine) == 1, r.json()
        assert mine[0]["sha"] == git_server.repos["hello"].tags["v1"]
        # the image is in the engine whose socket was mounted
        docker_run(docker_host, ["image", "inspect", mine[0]["image"]])

        # a browser login: the OAuth variables the entry point derived from the service name work
        browser = await login(hub, "bob")
        r = await browser.get(f"{hub.service_url}api/images")
        await browser.aclose()
        assert r.status_code == 200, r.text

        # Docker's health check (r2d-entrypoint healthcheck) sees the service healthy
        t0 = time.monotonic()
        deadline = time.monotonic() + 30
        while _inspect(docker_host, name, "{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() < deadline, _inspect(
                docker_host, name, "{{json .State.Health}}"
            )
            await asyncio.sleep(0.5)

        print(f"healthy after {time.monotonic() - t0:.1f}s more")
        # docker stop (SIGTERM through tini) ends it promptly and cleanly
        t0 = time.monotonic()
        docker_run(docker_host, ["stop", "-t", "20", name])
        assert time.monotonic() - t0 < 10
        print(f"stopped in {time.monotonic() - t0:.1f}s")
        assert _inspect(docker_host, name, "{{.State.ExitCode}}") == "0", logs()
    finally:
        await callers.aclose()
        docker_run(docker_host, ["rm", "-f", name], check=False)
        hub.cleanup()
