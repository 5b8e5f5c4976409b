"""Fixtures for the registry tests: real ``docker-registry`` servers in each auth mode.

Loaded by the registry test modules with ``from tests.registry_fixtures import *``. Servers are
shared per module (start ~0.1 s, but pushes add up); every test works under its own repository
names (:func:`unique`), so tests do not see each other's images unless they read the whole catalog,
and those start a registry of their own.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from traitlets.config import Config

from tests.harness.registry import REGISTRY_BINARY, RegistryServer

__all__ = [
    "registry_anonymous",
    "registry_config",
    "registry_each",
    "registry_htpasswd",
    "registry_token",
    "require_registry_binary",
    "serve_registry",
    "unique",
]


def require_registry_binary() -> None:
    # CI installs it (scripts/install-system.sh): there a missing binary is a broken setup and
    # fails; a developer's machine without it skips with the fix
    if not os.access(REGISTRY_BINARY, os.X_OK):
        message = f"{REGISTRY_BINARY} is missing: run scripts/install-system.sh"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def unique(owner: str = "alice") -> str:
    """A fresh repository name ``r2d-<owner>-<random>`` (the token issuer's tables know owners)."""
    return f"r2d-{owner}-t{secrets.token_hex(4)}"


def registry_config(
    docker_host: str,
    registry: RegistryServer,
    *,
    via: int | None = None,
    builder: str = "local",
    **manager: object,
) -> Config:
    """:func:`tests.test_manager.make_config` for a manager whose images go to ``registry``
    (``via``: the port of a proxy in front of it), with the service's account for the registry's
    auth mode and the registry listing's cache off; ``manager``: BuildManager traits."""
    from tests.test_manager import make_config

    c = make_config(docker_host, builder, **manager)
    host = f"127.0.0.1:{via}" if via else registry.host
    c.BuildManager.image_prefix = f"{host}/r2d-"
    c.Registry.url = f"http://{host}" if via else registry.url
    c.Registry.listing_ttl = 0
    if registry.mode == "htpasswd":
        c.Registry.username = "alice"
        c.Registry.password = registry.users["alice"]
    elif registry.mode == "token":
        # the service's registry account: push/pull/delete everywhere, and the catalog
        c.Registry.username = "admin"
        c.Registry.password = registry.users["admin"]
    return c


def serve_registry(mode: str, **kwargs: object) -> Iterator[RegistryServer]:
    """A started registry in ``mode`` for a fixture to yield from (skips without the binary)."""
    require_registry_binary()
    server = RegistryServer(mode, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def registry_anonymous() -> Iterator[RegistryServer]:
    yield from serve_registry("anonymous")


@pytest.fixture(scope="module")
def registry_htpasswd() -> Iterator[RegistryServer]:
    yield from serve_registry("htpasswd")


@pytest.fixture(scope="module")
def registry_token() -> Iterator[RegistryServer]:
    yield from serve_registry("token")


@pytest.fixture(params=["anonymous", "htpasswd", "token"])
def registry_each(request: pytest.FixtureRequest) -> RegistryServer:
    """Each of the module's three registries in turn (the test runs once per auth mode)."""
    return request.getfixturevalue(f"registry_{request.param}")
