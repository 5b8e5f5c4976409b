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

from tests.harness.registry import REGISTRY_BINARY, RegistryServer

__all__ = [
    "registry_anonymous",
    "registry_htpasswd",
    "registry_token",
    "require_registry_binary",
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


def _server(mode: str, **kwargs: object) -> Iterator[RegistryServer]:
    require_registry_binary()
    server = RegistryServer(mode, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def registry_anonymous() -> Iterator[RegistryServer]:
    yield from _server("anonymous")


@pytest.fixture(scope="module")
def registry_htpasswd() -> Iterator[RegistryServer]:
    yield from _server("htpasswd")


@pytest.fixture(scope="module")
def registry_token() -> Iterator[RegistryServer]:
    yield from _server("token")
