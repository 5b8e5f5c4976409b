"""Session fixtures over the real-component harness (``tests/harness``); the logic lives there.

``DOCKER_HOST`` is never put into ``os.environ``: tests hand ``docker_host`` (or ``r2d_env`` for
subprocesses) to whatever must talk to the private engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    DOCKERD_PATH,
    Dockerd,
    DockerdError,
    GitServer,
    cleanup_stale_runs,
    ensure_images,
    repo2docker_config,
)

__all__: list[str] = []

# The engine never pulls a builder image from anywhere but a loopback registry a test names
# (DockerBuilder.pull_policy; services and subprocesses inherit this)
os.environ.setdefault("R2D_BUILDER_PULL_POLICY", "never")


def _engine_unavailable(reason: str) -> None:
    # On CI (CI=true) a missing engine is a broken setup and must fail loudly; on a developer's
    # machine without dockerd or root the docker tests are skipped with the reason.
    if os.environ.get("CI"):
        pytest.fail(f"private dockerd unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"private dockerd unavailable: {reason}")


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A private dockerd 20.10 started with every harness image already in it (seeded)."""
    if not os.access(DOCKERD_PATH, os.X_OK):
        _engine_unavailable(f"{DOCKERD_PATH} not found (run scripts/install-system.sh)")
    if os.geteuid() != 0:
        _engine_unavailable("the tests start their own dockerd, which needs root")
    cleanup_stale_runs()
    engine = Dockerd(seed=True)
    t0 = time.monotonic()
    try:
        engine.start()
    except DockerdError as e:
        _engine_unavailable(str(e))
    print(f"\nharness: dockerd {engine.host} up in {time.monotonic() - t0:.1f}s")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def docker_host(dockerd: Dockerd) -> str:
    """``unix:///...sock`` of the private engine (for ``DockerEngine.host`` / subprocess envs)."""
    return dockerd.host


@pytest.fixture(scope="session")
def local_images(dockerd: Dockerd) -> dict[str, str]:
    """``{"busybox": ..., "debian": ..., "repo2docker": ...}``, all present in the engine."""
    return ensure_images(dockerd.host, progress=print)


@pytest.fixture(scope="session")
def git_server() -> Iterator[GitServer]:
    """``git daemon`` on 127.0.0.1 serving the fixture repositories (hello, fails, slow, ...)."""
    server = GitServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def repo2docker_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo2docker config file for offline builds (``--network none``, local base image)."""
    path = tmp_path_factory.mktemp("r2d-config") / "repo2docker_config.py"
    path.write_text(repo2docker_config(network="none"))
    return path


@pytest.fixture(scope="session")
def r2d_env(dockerd: Dockerd) -> dict[str, str]:
    """``os.environ`` plus ``DOCKER_HOST`` of the private engine: the env for a repo2docker CLI."""
    return dockerd.env()
