"""A private Docker engine (dockerd 20.10) per test run, on a unix socket, without any bridge.

Each :class:`Dockerd` gets fresh directories ``<state_root>/dockerd-<pid>-<rand>/`` (data root,
exec root, pidfile, socket, log) so concurrent runs on one machine never share an engine. The
daemon starts its own containerd below its exec root (dockerd 20.10 does when given none).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .procs import (
    HarnessError,
    ManagedProcess,
    mounts_under,
    new_run_dir,
    pid_alive,
    remove_tree,
    state_root,
    unmount_under,
    wait_for,
)

__all__ = [
    "DOCKERD_PATH",
    "Dockerd",
    "DockerdError",
    "detect_storage_driver",
    "docker_cli",
    "docker_run",
    "unix_http",
]

#: the engine binary (Debian's docker.io); ``$R2D_HARNESS_DOCKERD`` overrides
DOCKERD_PATH = os.environ.get("R2D_HARNESS_DOCKERD") or "/usr/sbin/dockerd"

#: flags that keep the engine off every network but loopback (no bridge, no NAT rules)
NETWORK_FLAGS = ["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"]


class DockerdError(HarnessError):
    """The private engine could not start (the message carries its log tail)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unix_http(
    socket_path: str | os.PathLike[str],
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request to a unix-socket server (the engine API); returns (status, body).

    Stdlib only, so the harness needs no Docker SDK and readiness checks cost ~1 ms.
    """
    conn = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@functools.lru_cache(maxsize=8)
def _overlay_works_on(device: int, probe_base: str) -> bool:
    probe = Path(tempfile.mkdtemp(prefix="ovl-probe-", dir=probe_base))
    try:
        for sub in ("lower", "upper", "work", "merged"):
            (probe / sub).mkdir()
        opts = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
        res = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(probe / "merged")],
            capture_output=True,
        )
        return res.returncode == 0
    finally:
        unmount_under(probe)
        shutil.rmtree(probe, ignore_errors=True)


def detect_storage_driver(data_parent: str | os.PathLike[str] | None = None) -> str:
    """``overlay2`` if an overlay mount works where the data roots live, else ``vfs``.

    overlay2 fails where the state directory itself sits on overlayfs (inside a container) or on a
    filesystem without d_type; vfs always works but copies whole layers (slower, more disk).
    ``$R2D_HARNESS_STORAGE_DRIVER`` forces a choice.
    """
    forced = os.environ.get("R2D_HARNESS_STORAGE_DRIVER")
    if forced:
        return forced
    base = Path(data_parent or state_root())
    base.mkdir(parents=True, exist_ok=True)
    return "overlay2" if _overlay_works_on(base.stat().st_dev, str(base)) else "vfs"


def docker_cli() -> str:
    """Path of the docker CLI (``/usr/local/bin/docker`` from the host image, or Debian's)."""
    for candidate in (shutil.which("docker"), "/usr/local/bin/docker", "/usr/bin/docker"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise HarnessError("no docker CLI found: install docker.io (scripts/install-system.sh)")


def docker_run(
    host: str,
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 600,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``docker <args>`` against the engine at ``host`` (``DOCKER_HOST`` in its env only)."""
    full_env = dict(os.environ if env is None else env)
    full_env["DOCKER_HOST"] = host
    # a stray DOCKER_CONTEXT or config would redirect the CLI to another engine
    full_env.pop("DOCKER_CONTEXT", None)
    res = subprocess.run(
        [docker_cli(), *args],
        env=full_env,
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise HarnessError(
            f"docker {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-2000:]}"
            f"{res.stderr[-4000:]}"
        )
    return res


class Dockerd:
    """A private dockerd; ``host`` is known before ``start()`` (tests start it late on purpose).

    Usage::

        with Dockerd() as d:            # start() ... stop()
            env = d.env()               # os.environ + DOCKER_HOST, for subprocesses
            d.docker("images")

    By default (``seed=True``) the engine starts with every image of ``images.IMAGES`` already in
    it, hard-linked from the cache (~1 s; the first use on a machine builds them, ~70 s). Pass
    ``seed=False`` for an engine without any image.

    Directory layout (the exec root is short, ``x``: containerd's sockets live below it and unix
    socket paths must stay under 108 bytes)::

        <dir>/docker.sock  dockerd.pid  dockerd.log  daemon.json  data/  x/
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        storage_driver: str | None = None,
        dockerd_path: str = DOCKERD_PATH,
        start_timeout: float = 30.0,
        stop_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
        seed: bool = True,
    ) -> None:
        self.dir = Path(directory) if directory else new_run_dir("dockerd", create=False)
        self.socket_path = self.dir / "docker.sock"
        if len(str(self.socket_path)) >= 100:
            raise DockerdError(
                f"socket path {self.socket_path} is too long for a unix socket (>= 100 bytes): "
                "set R2D_HARNESS_STATE to a shorter directory"
            )
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "x"
        self.pidfile = self.dir / "dockerd.pid"
        self.log_path = self.dir / "dockerd.log"
        self.config_file = self.dir / "daemon.json"
        self.dockerd_path = dockerd_path
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args)
        #: start with every harness image already present (see images.seed_data_root)
        self.seed = seed
        self._storage_driver = storage_driver
        self.process: ManagedProcess | None = None
        #: seconds the last start() took until /_ping answered
        self.startup_seconds: float | None = None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``unix:///...sock``: the value for ``DOCKER_HOST`` / ``DockerEngine.host``."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.running() else None

    @property
    def storage_driver(self) -> str:
        if self._storage_driver is None:
            self._storage_driver = detect_storage_driver(self.dir.parent)
        return self._storage_driver

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) with ``DOCKER_HOST`` pointing here."""
        env = dict(os.environ if base is None else base)
        env["DOCKER_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        return env

    # -- lifecycle -------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        return [
            self.dockerd_path,
            "--config-file",
            str(self.config_file),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.host,
            "--storage-driver",
            self.storage_driver,
            *NETWORK_FLAGS,
            *self.extra_args,
        ]

    def start(self) -> Dockerd:
        """Start the daemon and wait for ``GET /_ping``; raises :class:`DockerdError` on failure."""
        if self.process and self.process.running():
            return self
        if not os.access(self.dockerd_path, os.X_OK):
            raise DockerdError(
                f"{self.dockerd_path} not found: install docker.io (scripts/install-system.sh)"
            )
        if os.geteuid() != 0:
            raise DockerdError("a private dockerd needs root")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.seed and not self.data_root.exists():
            from .images import seed_data_root  # images.py builds on this module

            seed_data_root(self.data_root, self.storage_driver)
        self.data_root.mkdir(exist_ok=True)
        self.exec_root.mkdir(exist_ok=True)
        # our own (empty) daemon.json: the host's /etc/docker/daemon.json must not apply here
        self.config_file.write_text("{}\n")
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        # As docs/howto/limits.md advises: BuildKit stops a RUN step's output for good at 2 MiB by
        # default (losing its end, where errors are); the service bounds logs itself (head + tail
        # with a marker), so lift that cap (dockerd 20.10 reads -1 as -1 bytes: a large number).
        # The speed cap (200 KiB/s, clips and resumes) stays: lifted, a flood of lines makes the
        # buildx client abort with "rpc error: code = Canceled" after the step.
        env.setdefault("BUILDKIT_STEP_LOG_MAX_SIZE", str(1 << 30))
        self.process = ManagedProcess(
            "dockerd", self.argv(), self.log_path, env=env, stop_timeout=self.stop_timeout
        )
        t0 = time.monotonic()
        self.process.start()

        def ready() -> bool:
            if not self.process or not self.process.running():
                raise DockerdError(
                    f"dockerd exited with status {self.process and self.process.returncode} "
                    f"(storage driver {self.storage_driver}); last lines of {self.log_path}:\n"
                    f"{self.process and self.process.log_tail()}"
                )
            return self.ping()

        try:
            wait_for(
                ready,
                self.start_timeout,
                f"dockerd on {self.host}",
                interval=0.02,
                log_tail=self.process.log_tail,
            )
        except TimeoutError as e:
            self.stop()
            raise DockerdError(str(e)) from None
        except DockerdError:
            self.stop(remove=False)
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def ping(self, timeout: float = 2.0) -> bool:
        """True if ``GET /_ping`` answers ``OK``."""
        try:
            status, body = unix_http(self.socket_path, "GET", "/_ping", timeout=timeout)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """An engine API call; returns the decoded JSON body (raises HarnessError on >= 400)."""
        status, data = unix_http(self.socket_path, method, path, body, timeout=timeout)
        if status >= 400:
            raise HarnessError(f"{method} {path} -> {status}: {data[:500]!r}")
        return json.loads(data) if data.strip() else None

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float | None = 600,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine."""
        return docker_run(self.host, args, check=check, timeout=timeout, input=input)

    def stop(self, remove: bool = True) -> None:
        """SIGTERM the daemon by PID, wait, unmount what it left (``netns/default``), remove dirs.

        With ``remove=False`` the data root stays (a later ``start()`` finds its images again).
        """
        if self.process is not None:
            self.process.stop()
        # dockerd's own containerd exits with it; wait for its pidfile's process, never kill it
        # by name: a SIGKILLed dockerd can leave containerd behind, and then we report that.
        cpid = self._containerd_pid()
        if cpid is not None:
            deadline = time.monotonic() + 10
            while pid_alive(cpid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(cpid):
                os.kill(cpid, signal.SIGTERM)
        if not self.dir.exists():
            return
        left = unmount_under(self.dir)
        if left:
            raise HarnessError(f"dockerd stopped but these stay mounted: {left}")
        if remove:
            remove_tree(self.dir)

    def _containerd_pid(self) -> int | None:
        """The pid of the containerd this engine started (checked against its command line)."""
        try:
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.exec_root).encode() in cmdline else None

    def mounts(self) -> list[str]:
        """Mount points below this engine's directories (for tests of the cleanup)."""
        return mounts_under(self.dir) if self.dir.exists() else []

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Dockerd {self.host} pid={self.pid}>"
