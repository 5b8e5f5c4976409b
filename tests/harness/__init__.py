"""Real components for tests and the demo: a private dockerd, local images, a git daemon.

Plain classes and functions (no pytest), so ``python -m tests.harness.demo`` can use them too;
``tests/conftest.py`` wraps them in thin session fixtures. Quick tour::

    from tests.harness import Dockerd, GitServer, ensure_images, repo2docker_config

    with Dockerd() as engine, GitServer() as git:    # seed=True: images already in it
        ensure_images(engine.host)                 # no-op when seeded; loads/builds otherwise
        env = engine.env()                         # os.environ + DOCKER_HOST, for subprocesses
        url = git.url("hello")                     # git://127.0.0.1:PORT/hello
        sha = git.repos["hello"].tags["v1"]

Nothing here sets ``DOCKER_HOST`` in ``os.environ``: callers pass the engine explicitly.
"""

from __future__ import annotations

from .dockerd import DOCKERD_PATH, Dockerd, DockerdError, detect_storage_driver, docker_run
from .gitserver import (
    FAIL_EXIT_CODE,
    FAIL_LINES,
    FIXTURES,
    HELLO_LINES,
    QUICK_LINES,
    QUICK_SECONDS,
    SLOW_SECONDS,
    FixtureRepo,
    GitServer,
)
from .images import (
    BUSYBOX_IMAGE,
    DEBIAN_IMAGE,
    HARNESS_IMAGES_VERSION,
    IMAGES,
    REPO2DOCKER_IMAGE,
    REPO2DOCKER_VERSION,
    SINGLEUSER_IMAGE,
    bare_cli_argv,
    cache_dir,
    ensure_images,
    repo2docker_config,
    seed_data_root,
)
from .procs import (
    HarnessError,
    ManagedProcess,
    async_wait_for,
    cleanup_stale_runs,
    free_port,
    new_run_dir,
    state_root,
    wait_for,
)

__all__ = [
    "BUSYBOX_IMAGE",
    "DEBIAN_IMAGE",
    "DOCKERD_PATH",
    "FAIL_EXIT_CODE",
    "FAIL_LINES",
    "FIXTURES",
    "HARNESS_IMAGES_VERSION",
    "HELLO_LINES",
    "IMAGES",
    "QUICK_LINES",
    "QUICK_SECONDS",
    "REPO2DOCKER_IMAGE",
    "REPO2DOCKER_VERSION",
    "SINGLEUSER_IMAGE",
    "SLOW_SECONDS",
    "Dockerd",
    "DockerdError",
    "FixtureRepo",
    "GitServer",
    "HarnessError",
    "ManagedProcess",
    "async_wait_for",
    "bare_cli_argv",
    "cache_dir",
    "cleanup_stale_runs",
    "detect_storage_driver",
    "docker_run",
    "ensure_images",
    "free_port",
    "new_run_dir",
    "repo2docker_config",
    "seed_data_root",
    "state_root",
    "wait_for",
]
