"""An async client for the OCI distribution API (Docker registry v2), built on httpx.

Why httpx and not oras-py: oras is synchronous (requests), has no catalog call, keeps a single
bearer token and re-sends it to other repositories, and cannot delete Docker v2 manifests, which
is what repo2docker and buildx push.

Listing (:meth:`list_images`) and its caches live in :mod:`r2d_core.registry.listing`
(mixed in), the raw manifest and blob calls artifacts need in :mod:`r2d_core.registry.artifactio`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import aio
from ..errors import (
    InvalidRequest,
    NotFound,
    R2DError,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from ..netpolicy import AddressRefused, NetPolicy, NetPolicyError
from .artifactio import ArtifactIO
from .auth import RegistryAuth, RegistryAuthError, _pick, parse_retry_after
from .listing import _LRU, Listing
from .models import MANIFEST_ACCEPT, Manifest, RegistryImage
from .names import _check_reference, _check_repository, _is_digest
from .transport import AiohttpTransport
from .untrusted import (
    BoundedStream,
    Refused,
    TooLarge,
    checked_header,
    clean,
    loads,
    verify,
)

__all__ = ["RegistryClient", "reference_host", "validate_registry_url"]

log = logging.getLogger(__name__)

_ERROR_TEXT_MAX = 200


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing. The registry API does not use cookies, and a cookie set
    by a registry, a token server or object storage must not be sent anywhere later; httpx
    would also parse every answer for them through urllib (~25 us a request)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class _Client(httpx.AsyncClient):
    """httpx's client without cookies (see :class:`_NoCookies`)."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, value: object) -> None:
        # httpx's __init__ assigns the (empty) cookies argument; nothing is kept
        return None


def validate_registry_url(url: str) -> str:
    """``url`` without a trailing ``/``; :class:`InvalidRequest` saying the fix if it is unusable."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            f"registry URL {url!r} needs a scheme and a host: write it as https://HOST[:PORT] "
            "(http:// only for a registry on this machine)"
        )
    if parts.username or parts.password:
        raise InvalidRequest(
            "the registry URL must not contain credentials: set c.Registry.username and "
            "c.Registry.password instead"
        )
    if parts.path or parts.query or parts.fragment:
        raise InvalidRequest(
            f"registry URL {url!r} must be only https://HOST[:PORT] (the API lives at /v2/): put "
            "a namespace into c.BuildManager.image_prefix instead"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidRequest(f"registry URL {url!r} has an invalid port") from None
    return url


def reference_host(url: str) -> str:
    """``host[:port]`` of a registry URL as image references spell it (Docker Hub: docker.io)."""
    netloc = urlsplit(url).netloc.lower()
    return "docker.io" if netloc in ("registry-1.docker.io", "index.docker.io") else netloc


class RegistryClient(Listing, ArtifactIO):
    """Talk to one registry; every method raises :mod:`r2d_core.errors` exceptions only.

    ``listing_ttl``: seconds :meth:`list_images` trusts its catalog, tag lists and tag digests
    (0: revalidate every time). ``cache_size``: entries per digest-keyed cache.
    ``platform``: which child of a multi-arch index describes a tag. ``http_pool``:
    ``"aiohttp"`` (:mod:`r2d_core.registry.transport`, ~2.5x less client CPU per request) or
    ``"httpx"`` (httpx's own pool); the httpx client above it is the same.
    """

    def __init__(
        self,
        url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        max_concurrency: int = 16,
        page_size: int = 100,
        listing_ttl: float = 5.0,
        cache_size: int = 10000,
        platform: tuple[str, str] = ("linux", "amd64"),
        revalidate_batch: int = 0,
        http_pool: str = "aiohttp",
        event_hooks: dict[str, list[Callable[[Any], Awaitable[None]]]] | None = None,
        total_timeout: float | None = None,
        redirect_networks: Iterable[str] = (),
    ) -> None:
        self.url = validate_registry_url(url)
        #: what goes in front of image references (Docker Hub's API host is spelled docker.io)
        self.host = reference_host(self.url)
        self.timeout = timeout
        #: seconds one request may take as a whole, retries, token requests and redirects included
        #: (httpx's timeout is per phase: a byte every few seconds would never trip it)
        self.total_timeout = total_timeout if total_timeout is not None else 3 * timeout
        self.page_size = max(1, page_size)
        self.listing_ttl = listing_ttl
        self.platform = platform
        #: tag digests one revalidating listing re-checks at most, oldest check first (0: all)
        self.revalidate_batch = max(0, revalidate_batch)
        #: summaries learned since the last export_listing() (a snapshot is worth writing)
        self.listing_changed = False
        self._auth = auth
        #: every HTTP request sent, token requests and retries included
        self.request_count = 0
        #: where a blob download may be redirected: the registry's own origin, public addresses
        #: and these networks (object storage on a private network)
        self._redirect_policy = NetPolicy(redirect_networks)
        self._origin = _origin(httpx.URL(self.url))
        hooks: dict[str, list[Callable[[Any], Awaitable[None]]]] = {
            "request": [self._count, self._check_hop],
            "response": [self._bound],
        }
        for name, extra in (event_hooks or {}).items():
            hooks.setdefault(name, []).extend(extra)
        if isinstance(verify, str):  # a CA bundle path; httpx 0.28 wants an SSL context
            verify = ssl.create_default_context(cafile=verify)
        if http_pool not in ("aiohttp", "httpx"):
            raise ValueError("http_pool is 'aiohttp' or 'httpx'")
        transport = (
            AiohttpTransport(verify=verify, max_connections=max_concurrency)
            if http_pool == "aiohttp"
            else None
        )
        self._http = _Client(
            base_url=self.url,
            transport=transport,
            auth=auth,
            timeout=httpx.Timeout(timeout),
            verify=verify,
            # only blob downloads follow redirects (to object storage), see _request
            follow_redirects=False,
            max_redirects=5,
            # every request, token requests included, runs under self._limit: no more needed
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            event_hooks=hooks,
            # no compressed answers: their decoded size would not be bounded by _bound
            headers={"User-Agent": "repo2docker-service", "Accept-Encoding": "identity"},
        )
        self._limit = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self._manifests: _LRU[str, Manifest] = _LRU(cache_size)
        self._urls: _LRU[str, httpx.URL] = _LRU(cache_size)
        self._init_listing(cache_size)

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r})"

    #: bytes one answer may have unless the call says otherwise (manifests: the OCI limit)
    max_response_bytes = 4 * 1024 * 1024
    #: entries and pages a paginated list (catalog, tags) may have
    max_list_entries = 100_000
    max_list_pages = 1_000

    async def _count(self, request: httpx.Request) -> None:
        self.request_count += 1

    async def _check_hop(self, request: httpx.Request) -> None:
        """A redirect hop (a blob download sent to object storage) to another origin goes only
        to public addresses or :attr:`_redirect_policy`'s networks: a hostile registry must not
        make the service send requests into its internal network (cloud metadata, local
        services). A call that follows redirects starts at the registry's own origin, so any of
        its requests elsewhere is a hop; token requests are built by the auth flow without the
        mark (their realm has its own rule, see auth.py)."""
        if not request.extensions.get("r2d_redirects"):
            return
        origin = _origin(request.url)
        if origin == self._origin:
            return
        _scheme, host, port = origin
        try:
            await self._redirect_policy.resolve_checked(host, port or 80)  # (http/https: set)
        except NetPolicyError as e:
            why = "an internal network" if isinstance(e, AddressRefused) else "no address"
            raise Refused(
                f"a redirect to {clean(host, 100)!r}, which is on {why}: refused (allow object "
                "storage on a private network with c.Registry.redirect_networks)"
            ) from None

    async def _bound(self, response: httpx.Response) -> None:
        """Every answer (401s, redirects and token answers included) is read through a stream
        that stops at the request's byte limit; compressed answers are refused."""
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Refused(f"a compressed answer ({clean(encoding, 20)!r}) nobody asked for")
        limit = response.request.extensions.get("r2d_max_bytes", self.max_response_bytes)
        response.stream = BoundedStream(response.stream, limit)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- HTTP ----------------------------------------------------------------------------------
    def _who(self) -> str:
        if isinstance(self._auth, RegistryAuth):
            return self._auth.describe()
        return "the configured credentials" if self._auth else "anonymous access"

    def _has_credentials(self) -> bool:
        if isinstance(self._auth, RegistryAuth):
            return self._auth.has_credentials
        return self._auth is not None

    async def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        ok: Iterable[int] = (200,),
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        repository: str | None = None,
        content: bytes | None = None,
        max_bytes: int | None = None,
    ) -> httpx.Response:
        # Only blob downloads follow redirects: distribution with S3-style storage answers them
        # with a redirect to a signed URL. httpx drops Authorization on a redirect to another
        # origin, and the blob is checked against its digest. Nothing else is redirected: not a
        # manifest or list (their content is not checked by a digest we know beforehand), not a
        # PUT (our records would go elsewhere). See docs/explanation/security-registry.md.
        follow = method in ("GET", "HEAD") and "/blobs/sha" in str(url)
        extensions: dict[str, Any] = {"r2d_max_bytes": max_bytes or self.max_response_bytes}
        if follow:  # its hops to other origins are checked (see _check_hop)
            extensions["r2d_redirects"] = True
        if isinstance(url, str) and url.startswith("/"):
            url = self._absolute(url)
        async with self._limit:
            try:
                async with aio.timeout(self.total_timeout):
                    response = await self._send(
                        method, url, headers, params, content, follow, extensions
                    )
            except R2DError:
                raise
            except asyncio.TimeoutError:
                raise Unavailable(
                    f"the registry at {self.url} did not answer within {self.total_timeout:g}s "
                    f"({what}): check that it is running and reachable, or raise "
                    "c.Registry.timeout"
                ) from None
            except TooLarge as e:
                raise UpstreamError(
                    f"the registry's answer to {what} is larger than {e.limit} bytes: refused"
                ) from None
            except Refused as e:
                raise UpstreamError(f"the registry sent {e} ({what})") from None
            except httpx.TimeoutException as e:
                raise Unavailable(
                    f"{self._peer(e)} did not answer within {self.timeout:g}s ({what}): check that "
                    "it is running and reachable, or raise c.Registry.timeout"
                ) from None
            except httpx.TransportError as e:
                raise Unavailable(
                    f"cannot reach {self._peer(e)} ({what}: {type(e).__name__}): check "
                    "c.Registry.url (env R2D_REGISTRY_URL) and that the registry is running"
                ) from None
            except httpx.HTTPError as e:
                raise UpstreamError(
                    f"the registry at {self.url} broke the protocol ({what}: {type(e).__name__})"
                ) from None
        if response.status_code not in ok:
            if 300 <= response.status_code < 400 and not follow:
                location = clean(response.headers.get("Location", ""), 120)
                raise UpstreamError(
                    f"the registry redirected {what} to {location!r}: only blob downloads may be "
                    "redirected"
                )
            self._raise_for(response, what, repository)
        return response

    def _absolute(self, path: str) -> httpx.URL:
        """``path`` on the registry as a parsed URL. httpx parses a relative string, then again
        joined to base_url (~30 us, a tenth of a revalidating listing's client CPU); paths by
        name (tag lists, manifests by tag), which every revalidating listing asks for again,
        are kept parsed. Paths by digest (``sha256:...``; names and tags have no ``:``) are
        read once and their content cached instead: kept, they would only push the others out."""
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self.url + path)
            if ":" not in path:
                self._urls.put(path, url)
        return url

    async def _send(
        self,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str] | None,
        params: dict[str, Any] | None,
        content: bytes | None,
        follow: bool,
        extensions: dict[str, Any],
    ) -> httpx.Response:
        # Kept-alive connections the registry (or a proxy) closed meanwhile, e.g. across a
        # registry restart, fail on first use: a read-only request is safe to send again, and
        # each failure discards one dead connection of the pool.
        attempts = self.max_concurrency + 1 if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                return await self._http.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    content=content,
                    follow_redirects=follow,
                    extensions=extensions,
                )
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _peer(self, error: httpx.HTTPError) -> str:
        try:
            url = error.request.url
        except RuntimeError:
            return f"the registry at {self.url}"
        origin = f"{url.scheme}://{url.netloc.decode()}"
        if origin == self.url:
            return f"the registry at {self.url}"
        return f"{origin} (the registry's token server or storage)"

    def _raise_for(self, response: httpx.Response, what: str, repository: str | None) -> None:
        status = response.status_code
        codes, detail = _errors(response)
        if status == 401:
            challenge = _pick(response)
            if challenge is None:
                schemes = ", ".join(
                    h.split(" ", 1)[0] for h in response.headers.get_list("WWW-Authenticate")
                )
                raise RegistryAuthError(
                    f"the registry at {self.url} asks for authentication this client does not "
                    f"speak ({schemes or 'no challenge'}) ({what}): use basic or token auth"
                )
            if challenge.params.get("error") == "insufficient_scope" and self._has_credentials():
                scopes = challenge.scopes
                # Docker Hub answers a pull of a missing repository like a pull without
                # permission; a refused push or delete is a permission problem for sure.
                if repository and scopes and all(_is_pull_scope(s) for s in scopes):
                    raise NotFound(
                        f"repository {repository!r} does not exist in the registry, or "
                        f"{self._who()} may not access it ({what}); the registry answers both "
                        "the same way",
                        repository=repository,
                    )
                raise RegistryAuthError(
                    f"{self._who()} lacks the {' '.join(scopes) or 'needed'} permission at the "
                    f"registry {self.url} ({what}): grant it in the registry's token server"
                )
            if not self._has_credentials():
                if (
                    repository
                    and challenge.params.get("error") == "insufficient_scope"
                    and all(_is_pull_scope(s) for s in challenge.scopes)
                ):
                    raise NotFound(
                        f"repository {repository!r} does not exist in the registry, or needs "
                        f"credentials ({what}): set c.Registry.username and c.Registry.password",
                        repository=repository,
                    )
                raise RegistryAuthError(
                    f"the registry at {self.url} requires credentials ({what}): set "
                    "c.Registry.username and c.Registry.password (env R2D_REGISTRY_USERNAME, "
                    "R2D_REGISTRY_PASSWORD) or log in with `docker login "
                    f"{self.host}` so the Docker config provides them"
                )
            raise RegistryAuthError(
                f"the registry at {self.url} refused {self._who()} ({what}): check "
                "c.Registry.username and c.Registry.password (env R2D_REGISTRY_USERNAME, "
                "R2D_REGISTRY_PASSWORD) or the Docker config"
            )
        if status == 403:
            raise RegistryAuthError(
                f"the registry at {self.url} forbids {what} to {self._who()}"
                + (f" ({detail})" if detail else "")
                + ": grant that user access to the repository"
            )
        if status == 404:
            if "NAME_UNKNOWN" in codes:
                raise NotFound(
                    f"repository {repository!r} not found in the registry", repository=repository
                )
            if codes & {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN"} or repository:
                raise NotFound(f"{what}: not found in the registry", repository=repository)
            raise UpstreamError(
                f"{self.url} answered 404 to {what}: is it a registry (does it serve /v2/)?"
            )
        if status == 405 and response.request.method == "DELETE":
            raise RegistryAuthError(
                f"the registry at {self.url} does not allow deleting images: enable deletion "
                "(distribution: storage.delete.enabled: true)"
            )
        if status == 429:
            retry = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited(
                f"the registry at {self.url} asks to slow down ({what})"
                + (f"; retry in {retry:.0f}s" if retry is not None else "; retry later"),
                retry_after=retry,
            )
        if status == 400 and codes & {"NAME_INVALID", "TAG_INVALID"}:
            raise InvalidRequest(f"the registry refused {what}: {detail or 'invalid name'}")
        if status in (502, 503, 504):
            raise Unavailable(
                f"the registry at {self.url} is unavailable (HTTP {status}) ({what}); retry later"
            )
        raise UpstreamError(
            f"the registry at {self.url} answered HTTP {status} to {what}"
            + (f": {detail}" if detail else "")
        )

    async def _paginate(
        self, path: str, key: str, *, what: str, repository: str | None = None
    ) -> list[str]:
        """Every entry of a paginated list (``Link: <...>; rel="next"``), in the registry's order."""
        entries: list[str] = []
        url: str | None = path
        params: dict[str, Any] | None = {"n": self.page_size}
        seen: set[str] = set()
        while url is not None:
            response = await self._request(
                "GET", url, params=params, what=what, repository=repository
            )
            data = loads(response.content, f"an answer to {what}")
            page = data.get(key) if isinstance(data, dict) else None
            if page is not None and not isinstance(page, list):
                raise UpstreamError(f"the registry sent a malformed list for {what}")
            entries.extend(str(e) for e in page or [] if isinstance(e, str))
            # a registry that never ends its list (a fresh cursor on every page)
            if len(entries) > self.max_list_entries or len(seen) >= self.max_list_pages:
                raise UpstreamError(
                    f"the registry's list for {what} goes on past {self.max_list_entries} entries "
                    f"or {self.max_list_pages} pages: refused"
                )
            link = response.links.get("next", {}).get("url")
            url, params = None, None
            if link:
                target = response.url.join(link)
                if f"{target.scheme}://{target.netloc.decode()}" != self.url:
                    raise UpstreamError(f"the registry's next-page link for {what} leaves it")
                if str(target) in seen or not page:
                    break  # a registry looping on its cursor: what we have is all we get
                seen.add(str(target))
                url = str(target)
        return entries

    # ---- API -----------------------------------------------------------------------------------
    async def ping(self) -> None:
        """Check the registry answers ``/v2/`` and accepts our identity (or needs none)."""
        await self._request("GET", "/v2/", what="checking the registry API (/v2/)")

    async def catalog(self, prefix: str = "") -> list[str]:
        """Every repository whose name starts with ``prefix`` (all pages of ``/v2/_catalog``).

        The filter is client-side: ``last=`` could skip ahead, but registries order nested names
        differently (distribution sorts ``/`` before every other character), so a skip could miss
        names; pages of ``page_size`` names keep the cost of reading all of them low.
        """
        names = await self._paginate("/v2/_catalog", "repositories", what="listing repositories")
        # a name the distribution grammar refuses (``../x``, upper case) is no repository we
        # could ask about: left out here rather than failing a listing or a restore later
        return [n for n in names if n.startswith(prefix) and _valid(_check_repository, n)]

    async def tags(self, repository: str) -> list[str]:
        """Tags of ``repository`` (``[]`` when it has none left, ``"tags": null``)."""
        _check_repository(repository)
        tags = await self._paginate(
            f"/v2/{repository}/tags/list",
            "tags",
            what=f"listing the tags of {repository}",
            repository=repository,
        )
        return [t for t in tags if ":" not in t and _valid(_check_reference, t)]

    async def _get_manifest(
        self, repository: str, reference: str, accept: str
    ) -> tuple[httpx.Response, bytes]:
        """One manifest GET: the answer and its body, checked against the digest when asked by
        digest (by tag, the caller checks the digest header: see :meth:`manifest`)."""
        _check_repository(repository)
        _check_reference(reference)
        response = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": accept},
            what=f"reading the manifest {repository}:{reference}",
            repository=repository,
        )
        body = response.content
        if _is_digest(reference):
            verify(body, reference, f"a manifest for {repository}@{reference}")
        return response, body

    async def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest ``reference`` (a tag or digest) of ``repository``; by digest from cache."""
        _check_repository(repository)
        _check_reference(reference)
        if _is_digest(reference):
            cached = self._manifests.get(reference)
            if cached is not None:
                return cached
        response, body = await self._get_manifest(repository, reference, MANIFEST_ACCEPT)
        if _is_digest(reference):
            digest = reference
        else:
            digest = checked_header(response, body, f"{repository}:{reference}")
        manifest = Manifest.parse(body, digest, response.headers.get("Content-Type"))
        self._manifests.put(digest, manifest)
        if not _is_digest(reference):
            self._tag_digests.put((repository, reference), (time.monotonic(), digest))
        return manifest

    async def digest(self, repository: str, reference: str) -> str:
        """The manifest digest a tag points to, with one ``HEAD`` (a ``GET`` if the header is absent)."""
        response = await self._head_manifest(repository, reference)
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            return (await self.manifest(repository, reference)).digest
        if not _is_digest(reference):
            self._tag_digests.put((repository, reference), (time.monotonic(), digest))
        return digest

    async def image(self, repository: str, tag: str) -> RegistryImage:
        """One tag with its labels, created time, architecture and size."""
        manifest = await self.manifest(repository, tag)
        summary = await self._summary(repository, manifest)
        return self._image(repository, tag, manifest.digest, summary)

    async def delete(self, repository: str, tag: str) -> str:
        """Delete the manifest ``tag`` points to; returns its digest.

        Registries delete manifests by digest only (a tag gives ``DIGEST_INVALID``), so this asks
        for the digest with ``HEAD`` first, with every manifest type in ``Accept`` (else the
        digest of a down-converted schema1 manifest comes back). Other tags of the same manifest
        go with it: that is how the registry API works.
        """
        digest = await self.digest(repository, tag)
        await self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            ok=(200, 202, 204),
            what=f"deleting {repository}:{tag}",
            repository=repository,
        )
        self.invalidate(repository)
        self._manifests.pop(digest)
        self._summaries.pop(digest)
        return digest


def _valid(check: Callable[[str], str], name: str) -> bool:
    try:
        check(name)
    except InvalidRequest:
        log.warning("The registry listed %r, which is not a valid name: left out", clean(name, 80))
        return False
    return True


def _is_pull_scope(scope: str) -> bool:
    return scope.startswith("repository:") and scope.rsplit(":", 1)[-1] == "pull"


def _errors(response: httpx.Response) -> tuple[set[str], str]:
    """Error codes and a short message from a distribution error body (``{"errors": [...]}``)."""
    try:
        data = loads(response.content, "an error")
    except UpstreamError:
        return set(), ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return set(), ""
    codes = {str(e.get("code")) for e in errors if isinstance(e, dict)}
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    return codes, clean("; ".join(messages), _ERROR_TEXT_MAX)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host.lower(), url.port or default)
