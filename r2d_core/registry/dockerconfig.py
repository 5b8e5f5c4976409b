"""Registry credentials from a Docker ``config.json``, looked up the way the Docker CLI does.

Order: ``credHelpers[host]`` (a ``docker-credential-NAME`` program), then ``credsStore`` (one program
for every host), then the inline ``auths`` entry (``auth`` = base64 ``user:password``, or
``username``/``password``). Keys of ``auths`` may be bare hosts or URLs (``https://host/v1/``);
Docker Hub's key is ``https://index.docker.io/v1/`` whichever of its host names is asked for.

Why not oras-py's helpers (``oras.auth.utils.load_configs`` and the provider's ``_load_auth``): they
ignore ``$DOCKER_CONFIG``, consult ``auths`` before ``credHelpers`` (Docker does the opposite),
match keys only verbatim (a ``https://host`` key is missed), run helpers without a timeout, and
hand an identity token (``Username: <token>``) on as a password.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from typing import Any

from ..errors import Unavailable

__all__ = ["credentials_from_docker_config", "default_docker_config_path", "normalize_host"]

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: what a credential helper answers as Username when Secret is an identity (refresh) token
_IDENTITY_TOKEN_USER = "<token>"  # nosec B105  # the protocol marker, no password


def default_docker_config_path() -> str:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (the Docker CLI's rule)."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(directory, "config.json")


def normalize_host(key: str) -> str:
    """``https://Host:5000/v1/`` → ``host:5000``; every Docker Hub alias → ``docker.io``."""
    host = key.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB_HOSTS else host


def credentials_from_docker_config(
    host: str, config_path: str | None = None, *, helper_timeout: float = 10.0
) -> tuple[str, str] | None:
    """``(username, password)`` for ``host`` (``registry.example.org[:port]``), or None.

    None when the file does not exist or has nothing for the host. Raises
    :class:`~r2d_core.errors.Unavailable` when the file is unreadable or a configured helper is
    missing or fails: those are setup errors somebody has to fix, not "no credentials".
    """
    path = config_path or default_docker_config_path()
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # no detail of the content: the file holds secrets
        raise Unavailable(
            f"cannot read the Docker config {path} ({type(e).__name__}): fix or remove it, or set "
            "c.Registry.username and c.Registry.password"
        ) from None
    if not isinstance(config, dict):
        raise Unavailable(f"the Docker config {path} is not a JSON object: fix or remove it")
    wanted = normalize_host(host)
    server = DOCKER_HUB_KEY if wanted == "docker.io" else wanted

    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if normalize_host(key) == wanted and isinstance(helper, str) and helper:
                return _from_helper(helper, server, path, helper_timeout)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, server, path, helper_timeout)
        if found:
            return found
    auths = config.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if normalize_host(key) == wanted and isinstance(entry, dict):
                found = _from_entry(entry, key, path)
                if found:
                    return found
    return None


def _from_entry(entry: dict[str, Any], key: str, path: str) -> tuple[str, str] | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise Unavailable(
                f"the 'auth' of {key!r} in the Docker config {path} is not base64 of "
                "'user:password': run `docker login` again"
            )
        return username, password
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return username, password
    if entry.get("identitytoken"):
        log.warning(
            "The Docker config %s holds an identity token for %s, which this service cannot use:"
            " set c.Registry.username and c.Registry.password instead",
            path,
            key,
        )
    return None


def _from_helper(name: str, server: str, path: str, timeout: float) -> tuple[str, str] | None:
    program = f"docker-credential-{name}"
    try:
        # argv list, no shell; the helper name comes from the admin's Docker config
        proc = subprocess.run(  # nosec B603
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise Unavailable(
            f"the Docker config {path} names the credential helper {program}, which is not on "
            "PATH: install it, or set c.Registry.username and c.Registry.password"
        ) from None
    except subprocess.TimeoutExpired:
        raise Unavailable(
            f"the credential helper {program} did not answer within {timeout:g}s"
        ) from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip() + proc.stdout.decode(
            errors="replace"
        )
        if "credentials not found" in message.lower():
            return None
        raise Unavailable(
            f"the credential helper {program} failed (exit {proc.returncode}) for {server}: "
            "run it by hand to see why, or set c.Registry.username and c.Registry.password"
        )
    try:
        data = json.loads(proc.stdout)
        username, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        raise Unavailable(
            f"the credential helper {program} answered something other than JSON"
        ) from None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    if username == _IDENTITY_TOKEN_USER:
        log.warning(
            "The credential helper %s holds an identity token for %s, which this service cannot"
            " use: set c.Registry.username and c.Registry.password instead",
            program,
            server,
        )
        return None
    return username, secret
