"""Registry authentication as an :class:`httpx.Auth`: anonymous, basic, and bearer tokens.

The scheme is never assumed: the first request of an origin goes out bare, and the
``WWW-Authenticate`` challenge of its 401 decides (``Basic`` → the credentials, ``Bearer`` → a token
from the challenge's realm for its service and scope). What was learned is remembered per origin,
so later requests carry credentials or a cached token up front and cost one round trip.

Tokens are cached per ``(realm, service, scope)`` until shortly before ``expires_in`` runs out; one
asyncio lock per key makes concurrent requests for the same scope wait for a single token fetch. A
401 answered to a cached token drops that token, fetches a new one and retries once. The token
request is yielded through the auth flow, so it uses the caller's client (timeouts, TLS settings,
connection pool, event hooks) and never a private one.

The password and tokens live in private attributes only: they appear in no repr, log line or
exception message.

The realm is named by the registry, which is a remote server and untrusted: a token request
(which carries the Basic credentials) goes only to the registry's own host, over https unless the
registry itself is plain http, or to a host the admin lists in ``token_realm_hosts`` (Docker Hub's
``auth.docker.io`` and GitLab's ``gitlab.com`` are known). Any other realm is refused before a
byte is sent there: no credentials for a foreign host, no request to an internal address the
registry chose (see docs/explanation/security-registry.md).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import Forbidden, RateLimited, UpstreamError
from .untrusted import clean, loads

__all__ = [
    "KNOWN_TOKEN_HOSTS",
    "Challenge",
    "RegistryAuth",
    "RegistryAuthError",
    "parse_retry_after",
    "parse_www_authenticate",
    "predict_scope",
]

log = logging.getLogger(__name__)


class RegistryAuthError(Forbidden):
    """The registry (or its token server) refused our identity; the message says what to change."""

    code = "registry_unauthorized"


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: lower-cased scheme and its parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def scopes(self) -> list[str]:
        # distribution joins several scopes of one challenge with spaces
        return self.params.get("scope", "").split()


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # nosec B105  # RFC 7230's "token" grammar, no password
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*("((?:[^"\\]|\\.)*)"|{_TOKEN}=*)\s*')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?=\s|$|,)")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,65536}")
_TOKEN68_RE = re.compile(r"\s+[A-Za-z0-9._~+/-]+=*\s*(?=,|$)")


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse an RFC 7235 ``WWW-Authenticate`` value into its challenges (quoted strings unescaped).

    Hand-written because the popular one-liners split on ``,`` (breaking on quoted commas such as
    ``scope="repository:a:pull,push"``) or drop the scheme.
    """
    challenges: list[Challenge] = []
    pos = 0
    current: Challenge | None = None
    while pos < len(value):
        if value[pos] in ", \t":
            pos += 1
            continue
        param = _PARAM_RE.match(value, pos)
        if param and current is not None:
            raw = param.group(3)
            text = re.sub(r"\\(.)", r"\1", raw) if raw is not None else param.group(2)
            current.params[param.group(1).lower()] = text
            pos = param.end()
            continue
        scheme = _SCHEME_RE.match(value, pos)
        if not scheme:
            break  # garbage: keep what parsed so far
        current = Challenge(scheme.group(1).lower(), {})
        challenges.append(current)
        pos = scheme.end()
        # a token68 credential form (``Negotiate abc==``) has no parameters: skip it
        token68 = _TOKEN68_RE.match(value, pos)
        if token68:
            pos = token68.end()
    return challenges


#: the longest Retry-After believed (a day)
_RETRY_AFTER_MAX = 86400.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/odd."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": isdigit() alone takes it, float() not
        # clamped: 400 digits are float('inf'), which int() (the service's own Retry-After
        # header) and JSON cannot take; the registry is a remote server
        return min(float(value), _RETRY_AFTER_MAX)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), _RETRY_AFTER_MAX)


_REPO_PATH_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")


def predict_scope(method: str, path: str) -> str | None:
    """The scope distribution asks for ``method path``; ``""`` for ``/v2/``, None if unknown.

    Only a guess to attach a cached token up front: when a registry asks for another scope, the
    challenge wins and the mapping is remembered (:class:`RegistryAuth` never relies on the guess).
    """
    if path.rstrip("/") == "/v2":
        return ""
    if path == "/v2/_catalog":
        return "registry:catalog:*"
    match = _REPO_PATH_RE.match(path)
    if not match:
        return None
    if method in ("GET", "HEAD"):
        actions = "pull"
    elif method == "DELETE":
        actions = "delete"
    else:
        actions = "pull,push"
    return f"repository:{match.group('name')}:{actions}"


@dataclass
class _Token:
    value: str
    #: time.monotonic() after which it is not used any more
    expires: float


_TokenKey = tuple[str, str, str]  # realm, service, scope

#: registries whose token server is on another host of the same operator (API host -> realm host)
KNOWN_TOKEN_HOSTS = {
    "registry-1.docker.io": "auth.docker.io",
    "index.docker.io": "auth.docker.io",
    "docker.io": "auth.docker.io",
    "registry.gitlab.com": "gitlab.com",
}


class RegistryAuth(httpx.Auth):
    """Anonymous, basic or bearer-token registry auth, chosen by the server's challenge.

    ``RegistryAuth()`` is anonymous: it still fetches (anonymous) bearer tokens when asked to,
    as public registries require. Async clients only (the token locks are asyncio locks).
    """

    requires_request_body = True  # a retried PUT must be able to send its body again

    #: a token is renewed this many seconds before it expires (at most half its lifetime)
    expiry_margin = 10.0

    #: above this many cached tokens, expired ones (and their idle locks) are swept out
    max_tokens = 1024

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        token_realm_hosts: list[str] | tuple[str, ...] = (),
    ) -> None:
        #: hosts besides the registry's own that may serve its tokens (admin-configured)
        self.token_realm_hosts = frozenset(h.strip().lower() for h in token_realm_hosts if h)
        self._username: str | None = None
        self._basic: str | None = None
        self._tokens: dict[_TokenKey, _Token] = {}
        self.set_credentials(username, password)
        self._schemes: dict[str, str] = {}  # origin -> "basic" | "bearer"
        self._bearer: dict[str, tuple[str, str]] = {}  # origin -> (realm, service)
        self._learned: dict[tuple[str, str], str] = {}  # (origin, predicted scope) -> scope
        self._locks: dict[_TokenKey, asyncio.Lock] = {}
        #: how many token requests were sent (for tests, metrics and benchmarks)
        self.token_fetches = 0

    @property
    def username(self) -> str | None:
        return self._username

    @property
    def has_credentials(self) -> bool:
        return self._basic is not None

    def describe(self) -> str:
        """Who we are, for error messages: ``user 'alice'`` or ``anonymous access``."""
        return f"user {self._username!r}" if self._username else "anonymous access"

    def __repr__(self) -> str:
        secret = ", password=***" if self._basic else ""
        return f"RegistryAuth(username={self._username!r}{secret})"

    def forget_tokens(self) -> None:
        """Drop every cached token (they are fetched again on demand)."""
        self._tokens.clear()

    def set_credentials(self, username: str | None, password: str | None) -> None:
        """Switch to other credentials (rotated in a credential helper, say); drops the tokens."""
        if bool(username) != bool(password):
            raise ValueError("registry credentials need both a username and a password")
        self._username = username or None
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username
            else None
        )
        self._tokens.clear()

    # ---- the flow ------------------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("RegistryAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        origin = _origin(request.url)
        predicted = predict_scope(request.method, request.url.path)
        sent_key: _TokenKey | None = None
        sent_token: _Token | None = None
        scheme = self._schemes.get(origin)
        if scheme == "basic" and self._basic:
            request.headers["Authorization"] = self._basic
        elif scheme == "bearer" and predicted is not None:
            realm, service = self._bearer[origin]
            scope = self._learned.get((origin, predicted), predicted)
            sent_key = (realm, service, scope)
            sent_token = self._valid(sent_key)
            if sent_token is None:
                lock = self._locks.setdefault(sent_key, asyncio.Lock())
                async with lock:
                    sent_token = self._valid(sent_key)
                    if sent_token is None:
                        response = yield self._token_request(sent_key)
                        sent_token = await self._store(sent_key, response)
            request.headers["Authorization"] = f"Bearer {sent_token.value}"

        response = yield request
        if response.status_code != 401:
            return
        challenge = _pick(response)
        if challenge is None:
            return  # no challenge we speak: the client turns the 401 into an error
        if challenge.scheme == "basic":
            if not self._basic or request.headers.get("Authorization") == self._basic:
                return  # nothing (else) to offer
            self._schemes[origin] = "basic"
            request.headers["Authorization"] = self._basic
            yield request
            return

        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            return
        try:
            realm_url = httpx.URL(realm)
        except (httpx.InvalidURL, ValueError):
            return
        if not self.realm_allowed(request.url, realm_url):
            raise RegistryAuthError(
                f"the registry at {origin} asks for tokens from {clean(_origin(realm_url), 120)}, "
                "which is not the registry's own host: refused, nothing was sent there. If that "
                "is the registry's token server, add its host to c.Registry.token_realm_hosts"
            )
        service = challenge.params.get("service", "")
        scope = " ".join(challenge.scopes)
        self._schemes[origin] = "bearer"
        self._bearer[origin] = (realm, service)
        if predicted is not None and scope and scope != predicted:
            self._learned[(origin, predicted)] = scope
        key = (realm, service, scope)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key == sent_key and self._tokens.get(key) is sent_token:
                # the token we sent was refused (expired, revoked, or not for this repository)
                log.debug("registry refused a cached token for scope %r; fetching a new one", scope)
                self._tokens.pop(key, None)
            token = self._valid(key)
            if token is None:
                token_response = yield self._token_request(key)
                token = await self._store(key, token_response)
        if token is sent_token:
            return  # the same token again would get the same answer
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    def realm_allowed(self, registry: httpx.URL, realm: httpx.URL) -> bool:
        """Whether a token request for ``registry`` may go to ``realm``: the registry's own host
        (any port; https unless the registry is plain http), a known or configured token host."""
        if realm.scheme not in ("https", "http") or not realm.host:
            return False
        if realm.scheme == "http" and registry.scheme != "http":
            return False  # no downgrade: the Basic credentials would travel in clear text
        host = realm.host.lower()
        return (
            host == registry.host.lower()
            or host in self.token_realm_hosts
            or KNOWN_TOKEN_HOSTS.get(registry.host.lower()) == host
        )

    # ---- tokens --------------------------------------------------------------------------------
    def _valid(self, key: _TokenKey) -> _Token | None:
        token = self._tokens.get(key)
        if token is not None and token.expires <= time.monotonic():
            del self._tokens[key]
            return None
        return token

    def _token_request(self, key: _TokenKey) -> httpx.Request:
        realm, service, scope = key
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scope.split())
        if self._username:
            params.append(("account", self._username))
        headers = {"Accept": "application/json"}
        if self._basic:
            headers["Authorization"] = self._basic
        self.token_fetches += 1
        return httpx.Request("GET", realm, params=params, headers=headers)

    async def _store(self, key: _TokenKey, response: httpx.Response) -> _Token:
        await response.aread()
        realm = _origin(response.request.url) if response.request else key[0]
        if response.status_code in (401, 403):
            if self._username:
                raise RegistryAuthError(
                    f"the registry's token server ({realm}) refused the credentials of "
                    f"{self.describe()}: check c.Registry.username and c.Registry.password "
                    "(env R2D_REGISTRY_USERNAME, R2D_REGISTRY_PASSWORD) or the Docker config"
                )
            raise RegistryAuthError(
                f"the registry's token server ({realm}) refused anonymous access: set "
                "c.Registry.username and c.Registry.password (env R2D_REGISTRY_USERNAME, "
                "R2D_REGISTRY_PASSWORD) or log in with `docker login`"
            )
        if response.status_code == 429:
            retry = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited(
                f"the registry's token server ({realm}) asks to slow down; retry later",
                retry_after=retry,
            )
        if response.status_code != 200:
            raise UpstreamError(
                f"the registry's token server ({realm}) answered HTTP {response.status_code} "
                "to a token request"
            )
        try:
            data: Any = loads(response.content, "a token answer")
        except UpstreamError:
            data = None
        value = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise UpstreamError(f"the registry's token server ({realm}) sent no token")
        if not _HEADER_SAFE.fullmatch(value):
            # it goes into an Authorization header: no CR/LF, spaces or control characters
            raise UpstreamError(
                f"the registry's token server ({realm}) sent a token that is not a valid header "
                "value"
            )
        lifetime = data.get("expires_in")
        # the distribution token spec: 60 s when absent
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = 60
        margin = min(self.expiry_margin, lifetime / 2)
        token = _Token(value, time.monotonic() + lifetime - margin)
        if len(self._tokens) >= self.max_tokens:
            self._sweep()
        self._tokens[key] = token
        return token

    def _sweep(self) -> None:
        # one token and one lock per repository scope: keep a long-running service bounded
        now = time.monotonic()
        for key, token in list(self._tokens.items()):
            if token.expires <= now:
                del self._tokens[key]
        for key, lock in list(self._locks.items()):
            if key not in self._tokens and not lock.locked():
                del self._locks[key]


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _pick(response: httpx.Response) -> Challenge | None:
    """The challenge we answer: Bearer before Basic when a registry offers both."""
    found: dict[str, Challenge] = {}
    for header in response.headers.get_list("WWW-Authenticate"):
        for challenge in parse_www_authenticate(header):
            found.setdefault(challenge.scheme, challenge)
    return found.get("bearer") or found.get("basic")
