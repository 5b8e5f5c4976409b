"""The registry as the service is configured to use it (traitlets), and its shared client."""

from __future__ import annotations

import os
import time
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import LoggingConfigurable

from ..errors import InvalidRequest
from ..netpolicy import parse_networks
from ..sizes import env_choice
from .auth import RegistryAuth
from .client import RegistryClient, reference_host, validate_registry_url
from .dockerconfig import credentials_from_docker_config, default_docker_config_path

__all__ = ["Registry"]

#: Registry.http_pool's values, the default first
_HTTP_POOLS = ("aiohttp", "httpx")


def _checked_url(value: str, where: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        return validate_registry_url(value)
    except InvalidRequest as e:
        raise TraitError(f"{where}: {e}") from None


def _checked_timeout(value: float, where: str) -> float:
    if value <= 0:
        raise TraitError(f"{where} must be a positive number of seconds, e.g. 10")
    return value


class Registry(LoggingConfigurable):
    """Where built images are pushed to and listed from; ``url = ""`` means local images only.

    Credentials come from ``username``/``password`` when set, else from the Docker config file
    (``docker_config_path``), else none (anonymous). They never appear in logs or error messages.
    """

    url = Unicode(
        config=True,
        help="""Registry API base URL, ``https://HOST[:PORT]`` (``http://`` only for a registry on
        this machine); "" (the default) means no registry. Env ``R2D_REGISTRY_URL``.""",
    )

    @default("url")
    def _default_url(self) -> str:
        # dynamic defaults skip @validate: check the environment's value here
        return _checked_url(os.environ.get("R2D_REGISTRY_URL", ""), "env R2D_REGISTRY_URL")

    @validate("url")
    def _check_url(self, proposal: Any) -> str:
        return _checked_url(proposal["value"], "c.Registry.url")

    username = Unicode(
        config=True,
        help="""Registry user name (default: none, then the Docker config is consulted). Env
        ``R2D_REGISTRY_USERNAME``.""",
    )

    @default("username")
    def _default_username(self) -> str:
        return os.environ.get("R2D_REGISTRY_USERNAME", "")

    password = Unicode(
        config=True,
        help="""Registry password or access token, used with ``username`` (default: none). Env
        ``R2D_REGISTRY_PASSWORD``. Never logged.""",
    )

    @default("password")
    def _default_password(self) -> str:
        return os.environ.get("R2D_REGISTRY_PASSWORD", "")

    docker_config_path = Unicode(
        config=True,
        help="""Docker ``config.json`` to take credentials from when ``username`` is empty
        (``auths``, ``credHelpers``, ``credsStore``). Default ``$DOCKER_CONFIG/config.json``, else
        ``~/.docker/config.json``.""",
    )

    @default("docker_config_path")
    def _default_docker_config_path(self) -> str:
        return default_docker_config_path()

    timeout = Float(
        config=True,
        help="""Seconds each phase of a registry request (connect, send, each read) may take;
        the request as a whole, retries and token requests included, may take three times as
        long (default 10, so 30 s; env R2D_REGISTRY_TIMEOUT).""",
    )

    @default("timeout")
    def _default_timeout(self) -> float:
        value = os.environ.get("R2D_REGISTRY_TIMEOUT", "")
        try:
            seconds = float(value) if value else 10.0
        except ValueError:
            raise TraitError(
                f"env R2D_REGISTRY_TIMEOUT={value!r} is not a number of seconds, e.g. 10"
            ) from None
        return _checked_timeout(seconds, "env R2D_REGISTRY_TIMEOUT")

    @validate("timeout")
    def _check_timeout(self, proposal: Any) -> float:
        return _checked_timeout(proposal["value"], "c.Registry.timeout")

    token_realm_hosts = List(
        Unicode(),
        config=True,
        help="""Hosts other than the registry's own that may issue its bearer tokens (default
        none; Docker Hub's ``auth.docker.io`` and GitLab's ``gitlab.com`` are known). The registry
        names its token server in its ``WWW-Authenticate`` challenge; since the token request
        carries the registry credentials, a realm on any other host is refused, e.g.
        ``["auth.example.org"]`` for a registry whose token server runs there.""",
    )

    @validate("token_realm_hosts")
    def _check_token_hosts(self, proposal: Any) -> list[str]:
        hosts = [h.strip().lower() for h in proposal["value"]]
        for host in hosts:
            if not host or any(c in host for c in "/:@ "):
                raise TraitError(
                    f"c.Registry.token_realm_hosts: {host!r} is not a host name: write only the "
                    "host, e.g. auth.example.org (no scheme, port or path)"
                )
        return hosts

    redirect_networks = List(
        Unicode(),
        config=True,
        help="""Networks (CIDR) a blob download may be redirected to although they are internal
        (loopback, private, link-local or similar), e.g. ``["10.20.0.0/16"]`` for object storage
        on a private network behind a registry that redirects blob downloads to it. Default none:
        a redirect to another origin goes to public addresses only (a hostile registry cannot
        point the service at its internal network); the registry's own origin is always allowed.
        Env: ``R2D_REGISTRY_REDIRECT_NETWORKS`` (comma-separated).""",
    )

    @default("redirect_networks")
    def _default_redirect_networks(self) -> list[str]:
        value = os.environ.get("R2D_REGISTRY_REDIRECT_NETWORKS", "")
        return [v.strip() for v in value.split(",") if v.strip()]

    @validate("redirect_networks")
    def _check_redirect_networks(self, proposal: Any) -> list[str]:
        try:
            parse_networks(proposal["value"])
        except ValueError as e:
            raise TraitError(
                f"c.Registry.redirect_networks: {e}; write CIDR networks, e.g. ['10.20.0.0/16']"
            ) from None
        return list(proposal["value"])

    verify_tls = Bool(
        True,
        config=True,
        help="""Verify the registry's TLS certificate (default True). Set ``tls_ca_bundle`` for a
        private CA rather than turning this off.""",
    )

    tls_ca_bundle = Unicode(
        "",
        config=True,
        help="PEM file of CA certificates to verify the registry with (default: the system's).",
    )

    max_concurrency = Int(
        16,
        config=True,
        help="Registry requests in flight at once while listing (default 16).",
    )

    @validate("max_concurrency")
    def _check_concurrency(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise TraitError("c.Registry.max_concurrency must be at least 1, e.g. 16")
        return proposal["value"]

    http_pool = CaselessStrEnum(
        _HTTP_POOLS,
        _HTTP_POOLS[0],
        config=True,
        help="""Connection pool under the registry client's httpx requests: ``aiohttp`` (the
        default; ~2.5x less CPU per request, which is most of a listing's cost on a nearby
        registry) or ``httpx`` (httpx's own pool). Auth, retries and errors are the same with
        both. Env ``R2D_REGISTRY_HTTP_POOL``.""",
    )

    @default("http_pool")
    def _default_http_pool(self) -> str:
        return env_choice("R2D_REGISTRY_HTTP_POOL", _HTTP_POOLS, _HTTP_POOLS[0])

    listing_ttl = Float(
        5.0,
        config=True,
        help="""Seconds a registry listing reuses its catalog, tag lists and tag digests before
        revalidating them (default 5; our own pushes and deletes show at once).""",
    )

    revalidate_batch = Int(
        0,
        config=True,
        help="""Tag digests one listing re-checks at most once ``listing_ttl`` has passed (one
        conditional request each), those checked longest ago first; the others are listed as last
        seen and checked by the next listings. 0 (the default) re-checks every tag on every
        listing: ~0.6 s for 1,000 tags on a nearby registry. A positive number (e.g. 64) bounds a
        listing's requests for registries with many thousands of tags, at the price of a moved
        tag showing its old digest for up to ``ceil(tags / revalidate_batch)`` listings. New and
        removed tags show at once either way (tag lists are read every time).""",
    )

    listing_snapshot = Bool(
        True,
        config=True,
        help="""Keep a snapshot of the listing (digests, labels, sizes of all tags) as a small OCI
        artifact in the registry (tag ``r2d-listing`` in the repository named by the image prefix),
        rewritten after pushes, deletes and changes seen in listings, so a restarted service
        re-checks 1,000 tags with ~1,100 conditional requests instead of reading ~2,100 manifests
        and configs; what the snapshot says of each image is then verified in the background
        (default True). Needs push rights there.""",
    )

    verify_snapshot = Bool(
        True,
        config=True,
        help="""After the first listing from the snapshot, re-read in the background (4 requests at a
        time) the manifest and config of every image the snapshot described, and correct what
        differs (default True). The snapshot is a cache anyone with push rights on its repository
        could have written, and labels decide who owns an image; this costs about what a cold
        listing without a snapshot costs (~2,000 requests for 1,000 tags), once per start. Turn it
        off only when nobody else can push to the registry.""",
    )

    @validate("revalidate_batch")
    def _check_batch(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError("c.Registry.revalidate_batch must be 0 (all) or more, e.g. 64")
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client: RegistryClient | None = None
        self._auth = RegistryAuth()
        self._client_credentials: tuple[str, str] | None = None
        self._from_config: tuple[float, tuple[str, str] | None] | None = None

    @property
    def configured(self) -> bool:
        """A registry URL is set."""
        return bool(self.url)

    @property
    def host(self) -> str:
        """``host[:port]`` of the registry, what image references start with ("" if none)."""
        return reference_host(self.url) if self.url else ""

    #: seconds credentials read from the Docker config are reused before it is read again
    #: (helpers such as ECR's hand out passwords that expire)
    docker_config_ttl = 300.0

    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` from the traits, else the Docker config; None: anonymous.

        Reading the Docker config may run a credential helper (a subprocess, with a timeout), so
        its answer is reused for ``docker_config_ttl`` seconds.
        """
        if self.username or self.password:
            if not (self.username and self.password):
                raise InvalidRequest(
                    "only one of c.Registry.username and c.Registry.password is set: set both "
                    "(env R2D_REGISTRY_USERNAME, R2D_REGISTRY_PASSWORD) or neither"
                )
            return self.username, self.password
        if not self.configured:
            return None
        now = time.monotonic()
        if self._from_config is not None and now - self._from_config[0] < self.docker_config_ttl:
            return self._from_config[1]
        found = credentials_from_docker_config(self.host, self.docker_config_path or None)
        if found and (self._from_config is None or self._from_config[1] != found):
            self.log.info(
                "Registry credentials for %s from %s (user %r)",
                self.host,
                self.docker_config_path,
                found[0],
            )
        self._from_config = (now, found)
        return found

    def client(self) -> RegistryClient:
        """The shared client (created on first use); raises InvalidRequest if no URL is set.

        Credentials rotated in the Docker config reach the shared client on the next call
        after ``docker_config_ttl``.
        """
        if not self.configured:
            raise InvalidRequest("no registry is configured: set c.Registry.url")
        credentials = self.credentials()
        if self._client is not None and credentials != self._client_credentials:
            self._auth.set_credentials(*(credentials or (None, None)))
            self._client_credentials = credentials
        if self._client is None:
            auth = RegistryAuth(
                *(credentials or (None, None)), token_realm_hosts=self.token_realm_hosts
            )
            self._auth = auth
            self._client_credentials = credentials
            verify: bool | str = self.verify_tls
            if self.verify_tls and self.tls_ca_bundle:
                verify = self.tls_ca_bundle
            self._client = RegistryClient(
                self.url,
                auth=auth,
                timeout=self.timeout,
                verify=verify,
                max_concurrency=self.max_concurrency,
                listing_ttl=self.listing_ttl,
                revalidate_batch=self.revalidate_batch,
                http_pool=self.http_pool.lower(),
                redirect_networks=self.redirect_networks,
            )
        return self._client

    def push_credentials(self) -> dict[str, str] | None:
        """``{"registry", "username", "password"}`` for repo2docker's push; None if anonymous."""
        if not self.configured:
            return None
        credentials = self.credentials()
        if not credentials:
            return None
        return {"registry": self.host, "username": credentials[0], "password": credentials[1]}

    async def aclose(self) -> None:
        """Close the shared client, if one was created."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
