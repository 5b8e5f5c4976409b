"""Local images for the tests, made without pulling, cached across runs as ``docker save`` tarballs.

Four images (names are constants of this module):

* :data:`BUSYBOX_IMAGE` — a busybox-static rootfs, ``docker import``-ed (0.3 s to build). The
  fixture repositories' Dockerfiles start ``FROM`` it.
* :data:`DEBIAN_IMAGE` — ``debootstrap --variant=minbase bookworm``, imported. repo2docker's
  buildpacks use it as ``base_image`` in tests: with ``--network none`` apt cannot resolve, so a
  ``requirements.txt`` repository fails inside the build, offline, with nothing pulled.
* :data:`REPO2DOCKER_IMAGE` — :data:`DEBIAN_IMAGE` plus python3, git, a venv ``/opt/repo2docker``
  with ``jupyter-repo2docker`` and the host's docker CLI + buildx plugin. It is made in a container
  on top of :data:`DEBIAN_IMAGE` and committed, so it shares the Debian layer: both are saved into
  one tarball that loads in a few seconds.
* :data:`SINGLEUSER_IMAGE` — :data:`DEBIAN_IMAGE` plus a venv ``/opt/jupyter`` with
  ``jupyterhub`` (:data:`SINGLEUSER_JUPYTERHUB`) and ``jupyter_server``, running
  ``jupyterhub-singleuser`` as ``jovyan`` (uid 1000): what DockerSpawner starts, and the base of
  fixture repositories whose built image must really launch (~75 s to build).

Loading is slow on this machine's disk (creating ~15,000 files takes ~14 s), so the cache also keeps
a *seed*: the ``image/`` and graph-driver directories of an engine that loaded the tarballs once.
``Dockerd()`` (``seed=True``) hard-links the seed's layer files into its fresh data root before
starting (~1-2 s). That is safe because the engine never writes to a committed layer's files:
containers and builds write to their own upper directories, and deleting an image only unlinks.

The tarballs live in ``$R2D_HARNESS_CACHE`` (default ``/var/tmp/r2d-harness/cache``) under
:data:`HARNESS_IMAGES_VERSION`; bump that when a recipe changes. A file lock per tarball keeps two
concurrent runs from building the same one twice (the second waits, then loads).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .dockerd import Dockerd, docker_cli, docker_run
from .procs import HarnessError, pid_alive, remove_tree, state_root, tail

__all__ = [
    "BUSYBOX_IMAGE",
    "DEBIAN_IMAGE",
    "HARNESS_IMAGES_VERSION",
    "IMAGES",
    "REPO2DOCKER_IMAGE",
    "REPO2DOCKER_VERSION",
    "SINGLEUSER_IMAGE",
    "cache_dir",
    "debian_mirror",
    "ensure_images",
    "repo2docker_config",
    "seed_data_root",
]

REPO2DOCKER_VERSION = "2026.4.0"
BUSYBOX_IMAGE = "r2d-test/busybox:latest"
DEBIAN_IMAGE = "r2d-test/debian:bookworm"
REPO2DOCKER_IMAGE = f"r2d-test/repo2docker:{REPO2DOCKER_VERSION}"
#: the jupyterhub the single-user image carries (the Hub's own version: the API must match)
SINGLEUSER_JUPYTERHUB = "6.1.1"
SINGLEUSER_IMAGE = f"r2d-test/singleuser:jh{SINGLEUSER_JUPYTERHUB}"
#: short names accepted by :func:`ensure_images` → image references
IMAGES = {
    "busybox": BUSYBOX_IMAGE,
    "debian": DEBIAN_IMAGE,
    "repo2docker": REPO2DOCKER_IMAGE,
    "singleuser": SINGLEUSER_IMAGE,
}
#: part of the cache path: change it whenever an image recipe below changes
HARNESS_IMAGES_VERSION = f"2-r2d{REPO2DOCKER_VERSION}"

#: the tarball ("bundle") each image is saved in; debian and repo2docker share one (shared layer)
_BUNDLE_OF = {
    "busybox": "busybox",
    "debian": "debian",
    "repo2docker": "debian",
    "singleuser": "singleuser",
}

DOCKER_BUILDX = "/usr/libexec/docker/cli-plugins/docker-buildx"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
R2D_PATH = "/opt/repo2docker/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    """``$R2D_HARNESS_CACHE`` (or ``<state_root>/cache``) / :data:`HARNESS_IMAGES_VERSION`."""
    base = Path(os.environ.get("R2D_HARNESS_CACHE") or state_root() / "cache")
    return base / HARNESS_IMAGES_VERSION


def repo2docker_config(network: str = "none") -> str:
    """The text of a repo2docker config file for tests.

    * only the Local and Git content providers: the others (Dataverse first) try to reach the
      internet for every URL and fail offline;
    * ``docker buildx build --network <network>``: the engine has no bridge, so BuildKit's default
      network does not exist (``none`` for offline builds, ``host`` to reach loopback servers);
    * :data:`DEBIAN_IMAGE` as the buildpacks' base, so nothing is ever pulled.
    """
    return "\n".join(
        [
            "# repo2docker config for tests (tests/harness/images.py)",
            "from repo2docker import contentproviders",
            "c.Repo2Docker.content_providers = [contentproviders.Local, contentproviders.Git]",
            f"c.DockerEngine.extra_buildx_build_args = ['--network', {network!r}]",
            f"c.Repo2Docker.base_image = {DEBIAN_IMAGE!r}",
            "",
        ]
    )


def bare_cli_argv(config_file: str, image: str, sha: str, url: str) -> list[str]:
    """The bare ``repo2docker`` CLI building ``url`` at ``sha`` as the service's builds do (same
    config file, JSON logs, no run, the same user): what the benches compare the service with."""
    return [
        sys.executable, "-m", "repo2docker", "--config", config_file, "--json-logs", "--no-run",
        "--user-id", "1000", "--user-name", "jovyan", "--image-name", image, "--ref", sha, url,
    ]  # fmt: skip


def debian_mirror() -> str:
    """The Debian mirror apt uses here (``$R2D_HARNESS_DEBIAN_MIRROR`` overrides)."""
    forced = os.environ.get("R2D_HARNESS_DEBIAN_MIRROR")
    if forced:
        return forced
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    for text in texts:
        # deb822 stanzas ("URIs:" + "Suites:") and one-line "deb URI SUITE" entries
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                return uris.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m.group(1)
    return "http://deb.debian.org/debian"


# -- helpers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (concurrent test runs build once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(argv: list[str], log: Path, what: str, **kwargs: object) -> None:
    """Run a build step, output appended to ``log``; raise with the log's tail on failure."""
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        res = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, **kwargs)  # type: ignore
    if res.returncode != 0:
        raise HarnessError(f"{what} failed ({res.returncode}); last lines of {log}:\n{tail(log)}")


def _import_dir(host: str, rootfs: Path, image: str, changes: list[str], log: Path) -> None:
    """``tar -C rootfs . | docker import`` (device nodes and /proc, /sys contents left out)."""
    args = [docker_cli(), "import"]
    for change in changes:
        args += ["-c", change]
    env = dict(os.environ, DOCKER_HOST=host)
    excludes = ["--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*"]
    with open(log, "ab") as err:
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", *excludes, "-C", str(rootfs), "-cf", "-", "."],
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert tar.stdout is not None
        try:
            _run_logged(
                [*args, "-", image], log, f"docker import {image}", stdin=tar.stdout, env=env
            )
        finally:
            tar.stdout.close()
            tar.wait()
    if tar.returncode != 0:
        raise HarnessError(f"tar of {rootfs} failed; last lines of {log}:\n{tail(log)}")


def _scratch_dir(name: str) -> Path:
    # inside the cache directory: same filesystem, and removed right after the build
    path = cache_dir() / f"scratch-{name}-{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


def _remove_stale_scratch() -> None:
    """Remove build scratch directories of builds that died (debootstrap may have left mounts)."""
    for path in cache_dir().glob("scratch-*"):
        pid = path.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_tree(path)


def _present(host: str) -> set[str]:
    out = docker_run(host, ["images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout
    return set(out.split())


def _save(host: str, images: list[str], dest: Path) -> None:
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    try:
        docker_run(host, ["save", "-o", str(tmp), *images])
        os.replace(tmp, dest)  # atomic: a reader never sees half a tarball
    finally:
        tmp.unlink(missing_ok=True)


# -- recipes --------------------------------------------------------------------------------------


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a PT_INTERP header (needs no loader or libraries)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only: that is what Debian ships
            return False
        order = "little" if head[5] == 1 else "big"
        phoff = int.from_bytes(head[32:40], order)
        phentsize = int.from_bytes(head[54:56], order)
        phnum = int.from_bytes(head[56:58], order)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], order) != 3  # PT_INTERP
        for i in range(phnum)
    )


def _build_busybox(host: str, log: Path) -> list[str]:
    root = _scratch_dir("busybox")
    try:
        busybox = "/bin/busybox"
        if not os.path.exists(busybox) or not _is_static_elf(busybox):
            raise HarnessError(
                f"{busybox} missing or not statically linked: install busybox-static "
                "(scripts/install-system.sh)"
            )
        for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        shutil.copy2(busybox, root / "bin/busybox")
        applets = subprocess.run(
            [busybox, "--list-full"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            link = root / applet
            # "busybox" itself would replace the binary with a link to itself
            if link.name == "busybox" or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
        (root / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        )
        (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        _import_dir(host, root, BUSYBOX_IMAGE, ['CMD ["/bin/sh"]'], log)
    finally:
        remove_tree(root)
    return [BUSYBOX_IMAGE]


_R2D_SETUP = f"""set -eux
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates
python3 -m venv /opt/repo2docker
PIP_CERT=/tmp/host-ca.crt /opt/repo2docker/bin/pip install --no-cache-dir \\
    --disable-pip-version-check jupyter-repo2docker=={REPO2DOCKER_VERSION}
install -D -m 755 /tmp/docker /usr/local/bin/docker
install -D -m 755 /tmp/docker-buildx {DOCKER_BUILDX}
mkdir -p /srv
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/host-ca.crt /tmp/docker /tmp/docker-buildx /root/.cache
"""


def _build_debian_and_repo2docker(host: str, log: Path) -> list[str]:
    for tool in ("debootstrap", "tar"):
        if not shutil.which(tool):
            raise HarnessError(f"{tool} not found: run scripts/install-system.sh")
    if not os.access(DOCKER_BUILDX, os.X_OK):
        raise HarnessError(f"{DOCKER_BUILDX} missing: run scripts/install-system.sh")
    root = _scratch_dir("debian") / "rootfs"
    try:
        _run_logged(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()],
            log,
            "debootstrap",
        )
        # downloaded packages and lists are not part of an image
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / sub).glob("*"):
                if entry.is_file():
                    entry.unlink()
        _import_dir(
            host,
            root,
            DEBIAN_IMAGE,
            [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["bash"]',
            ],
            log,
        )
    finally:
        remove_tree(root.parent)

    # repo2docker image: run the setup in a container on top of the Debian image (host network for
    # apt/pip: it is a client only; the engine has no bridge) and commit it as one more layer.
    name = f"r2d-harness-build-{secrets.token_hex(4)}"
    env = dict(os.environ, DOCKER_HOST=host)
    docker = docker_cli()
    _run_logged(
        [
            docker,
            "create",
            "--name",
            name,
            "--network",
            "host",
            DEBIAN_IMAGE,
            "sh",
            "-c",
            _R2D_SETUP,
        ],
        log,
        "docker create (repo2docker image)",
        env=env,
    )
    try:
        copies = {HOST_CA_BUNDLE: "host-ca.crt", docker: "docker", DOCKER_BUILDX: "docker-buildx"}
        for src, dest in copies.items():
            _run_logged(
                [docker, "cp", "-L", src, f"{name}:/tmp/{dest}"], log, f"docker cp {src}", env=env
            )
        _run_logged([docker, "start", "-a", name], log, "repo2docker image setup", env=env)
        _run_logged(
            [
                docker,
                "commit",
                "-c",
                f"ENV PATH={R2D_PATH}",
                "-c",
                "WORKDIR /srv",
                "-c",
                'CMD ["jupyter-repo2docker", "--help"]',
                name,
                REPO2DOCKER_IMAGE,
            ],
            log,
            "docker commit (repo2docker image)",
            env=env,
        )
    finally:
        docker_run(host, ["rm", "-f", name], check=False)
    # prove the image does its job before caching it
    for cmd, expect in (
        (["jupyter-repo2docker", "--version"], REPO2DOCKER_VERSION),
        (["docker", "buildx", "version"], "github.com/docker/buildx"),
    ):
        res = docker_run(
            host, ["run", "--rm", "--network", "none", REPO2DOCKER_IMAGE, *cmd], check=False
        )
        if res.returncode != 0 or expect not in res.stdout + res.stderr:
            raise HarnessError(
                f"{REPO2DOCKER_IMAGE}: {' '.join(cmd)} gave {res.returncode}: "
                f"{res.stdout[-1000:]}{res.stderr[-1000:]}"
            )
    return [DEBIAN_IMAGE, REPO2DOCKER_IMAGE]


_SINGLEUSER_SETUP = f"""set -eux
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
python3 -m venv /opt/jupyter
PIP_CERT=/tmp/host-ca.crt /opt/jupyter/bin/pip install --no-cache-dir \\
    --disable-pip-version-check jupyterhub=={SINGLEUSER_JUPYTERHUB} jupyter_server
useradd --create-home --uid 1000 --shell /bin/bash jovyan
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/host-ca.crt /root/.cache
"""


def _build_singleuser(host: str, log: Path) -> list[str]:
    """A single-user server image: set up in a container on the Debian image, committed."""
    ensure_images(host, ["debian"])
    name = f"r2d-harness-build-{secrets.token_hex(4)}"
    env = dict(os.environ, DOCKER_HOST=host)
    docker = docker_cli()
    create = [docker, "create", "--name", name, "--network", "host"]
    _run_logged(
        [*create, DEBIAN_IMAGE, "sh", "-c", _SINGLEUSER_SETUP],
        log,
        "docker create (single-user image)",
        env=env,
    )
    try:
        _run_logged(
            [docker, "cp", "-L", HOST_CA_BUNDLE, f"{name}:/tmp/host-ca.crt"],
            log,
            "docker cp (CA bundle)",
            env=env,
        )
        _run_logged([docker, "start", "-a", name], log, "single-user image setup", env=env)
        changes = [
            "ENV PATH=/opt/jupyter/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "USER jovyan",
            "WORKDIR /home/jovyan",
            'CMD ["jupyterhub-singleuser"]',
        ]
        _run_logged(
            [docker, "commit", *(a for c in changes for a in ("-c", c)), name, SINGLEUSER_IMAGE],
            log,
            "docker commit (single-user image)",
            env=env,
        )
    finally:
        docker_run(host, ["rm", "-f", name], check=False)
    res = docker_run(
        host,
        [
            "run",
            "--rm",
            "--network",
            "none",
            SINGLEUSER_IMAGE,
            "jupyterhub-singleuser",
            "--version",
        ],
        check=False,
    )
    if res.returncode != 0:
        raise HarnessError(
            f"{SINGLEUSER_IMAGE} does not run: {res.stdout[-1000:]}{res.stderr[-1000:]}"
        )
    return [SINGLEUSER_IMAGE]


_RECIPES: dict[str, Callable[[str, Path], list[str]]] = {
    "busybox": _build_busybox,
    "debian": _build_debian_and_repo2docker,
    "singleuser": _build_singleuser,
}


def ensure_images(
    docker_host: str,
    which: Iterable[str] = ("busybox", "debian", "repo2docker"),
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Make the named images (keys of :data:`IMAGES`) exist in the engine at ``docker_host``.

    Images already there are left alone; the others are ``docker load``-ed from the cache, which is
    built first if its tarball is missing (minutes once per machine, ~1-3 s per engine after).
    Returns ``{short name: image reference}``.
    """
    wanted = list(dict.fromkeys(which))
    unknown = [w for w in wanted if w not in IMAGES]
    if unknown:
        raise ValueError(f"unknown image(s) {unknown}; choose from {sorted(IMAGES)}")
    say = progress or (lambda _msg: None)
    _remove_stale_scratch()
    present = _present(docker_host)
    bundles = list(dict.fromkeys(_BUNDLE_OF[w] for w in wanted if IMAGES[w] not in present))
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for bundle in bundles:
        tarball = cache / f"{bundle}.tar"
        if not tarball.exists():
            with file_lock(cache / f"{bundle}.lock"):
                if not tarball.exists():
                    log = cache / f"{bundle}.build.log"
                    log.write_text(f"building {bundle} images at {time.ctime()}\n")
                    say(f"building the {bundle} test image(s) (once per machine); log: {log}")
                    t0 = time.monotonic()
                    built = _RECIPES[bundle](docker_host, log)
                    _save(docker_host, built, tarball)
                    say(f"built {built} in {time.monotonic() - t0:.1f}s")
                    continue
        docker_run(docker_host, ["load", "-q", "-i", str(tarball)])
    missing = [IMAGES[w] for w in wanted if IMAGES[w] not in _present(docker_host)]
    if missing:
        raise HarnessError(f"images {missing} still missing after loading from {cache}")
    return {w: IMAGES[w] for w in wanted}


def _copy_tree(src: Path, dest: Path, link: bool) -> None:
    # cp keeps what dockerd relies on: ownership, modes, xattrs (overlay "opaque" directories),
    # whiteout device nodes and relative symlinks; --link shares file inodes instead of copying
    argv = ["cp", "-a", *(["--link"] if link else []), str(src), str(dest)]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed: {res.stderr[-2000:]}")


def _build_seed(seed: Path, driver: str, say: Callable[[str], None]) -> None:
    """Load every image into a throw-away engine, stop it, keep its image store as the seed."""
    engine = Dockerd(storage_driver=driver, seed=False)
    staging = seed.with_name(f"{seed.name}.tmp-{os.getpid()}")
    try:
        say(f"preparing the image seed for {driver} (once per cache version)")
        t0 = time.monotonic()
        engine.start()
        ensure_images(engine.host, IMAGES, progress=say)
        engine.stop(remove=False)
        staging.mkdir(parents=True)
        for sub in ("image", driver):
            os.rename(engine.data_root / sub, staging / sub)
        os.rename(staging, seed)
        say(f"seed ready in {time.monotonic() - t0:.1f}s")
    finally:
        engine.stop(remove=True)
        if staging.exists():
            remove_tree(staging)


def seed_data_root(
    data_root: str | os.PathLike[str],
    storage_driver: str,
    *,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Fill an empty, not yet used data root with every image of :data:`IMAGES`.

    The seed is built once per cache version and storage driver (under a file lock); its layer
    files are hard-linked when the data root is on the same filesystem, else copied.
    """
    say = progress or (lambda _msg: None)
    data_root = Path(data_root)
    seed = cache_dir() / f"seed-{storage_driver}"
    if not seed.is_dir():
        with file_lock(cache_dir() / f"seed-{storage_driver}.lock"):
            if not seed.is_dir():
                _build_seed(seed, storage_driver, say)
    data_root.mkdir(parents=True, exist_ok=True)
    if any((data_root / sub).exists() for sub in ("image", storage_driver)):
        raise HarnessError(f"{data_root} already holds an image store; seed only fresh engines")
    same_fs = os.stat(seed).st_dev == os.stat(data_root).st_dev
    # metadata (small, rewritten by the engine) is copied; layer contents are shared
    _copy_tree(seed / "image", data_root / "image", link=False)
    _copy_tree(seed / storage_driver, data_root / storage_driver, link=same_fs)
