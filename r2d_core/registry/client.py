"""An async client for the OCI distribution API (Docker registry v2), built on httpx.

Why httpx and not oras-py: oras is synchronous (requests), has no catalog call, keeps a single
bearer token and re-sends it to other repositories, and cannot delete Docker v2 manifests, which
is what repo2docker and buildx push.

Caching, and why it stays correct:

* manifests fetched **by digest**, image config blobs and the per-manifest image summary are
  content-addressed, hence immutable: kept in bounded LRU caches with no expiry;
* what can change, tags moving and repositories appearing, is re-read: :meth:`tags`,
  :meth:`catalog`, :meth:`manifest` and :meth:`image` always ask the registry. Only
  :meth:`list_images` reuses the catalog, the tag lists and tag→digest answers for ``listing_ttl``
  seconds; past that it revalidates each known tag with one ``HEAD`` (its digest) instead of
  fetching manifest and config again. Our own :meth:`delete` and :meth:`invalidate` (call it after
  a push) drop the affected entries at once, so only changes made by others can be up to
  ``listing_ttl`` seconds late.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx

from ..errors import (
    InvalidRequest,
    NotFound,
    R2DError,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from .artifactio import ArtifactIO
from .artifacts_tags import is_artifact_tag
from .auth import RegistryAuth, RegistryAuthError, _pick, parse_retry_after
from .models import (
    MANIFEST_ACCEPT,
    Descriptor,
    ImageConfig,
    Manifest,
    RegistryImage,
    parse_created,
)
from .names import _check_reference, _check_repository, _is_digest
from .untrusted import (
    BoundedStream,
    Refused,
    TooLarge,
    check_digest,
    checked_header,
    clean,
    loads,
    verify,
)

__all__ = ["RegistryClient", "reference_host", "validate_registry_url"]

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

_ERROR_TEXT_MAX = 200


class _LRU(Generic[K, V]):
    """A small bounded mapping that forgets the least recently used entry first."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def keys(self) -> list[K]:
        return list(self._data)

    def items(self) -> list[tuple[K, V]]:
        return list(self._data.items())

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


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


class _Summary:
    """What a listing needs of one manifest digest (immutable, so cached without expiry)."""

    __slots__ = ("architecture", "created", "labels", "media_type", "size")

    def __init__(self, manifest: Manifest, config: ImageConfig | None, size: int | None) -> None:
        self.media_type = manifest.media_type
        self.labels = dict(config.labels) if config else {}
        self.created = config.created if config else None
        self.architecture = config.architecture if config else None
        self.size = size

    @classmethod
    def of(
        cls,
        media_type: str,
        labels: dict[str, str],
        created: datetime | None,
        architecture: str | None,
        size: int | None,
    ) -> _Summary:
        summary = cls.__new__(cls)
        summary.media_type, summary.labels, summary.created = media_type, labels, created
        summary.architecture, summary.size = architecture, size
        return summary


class RegistryClient(ArtifactIO):
    """Talk to one registry; every method raises :mod:`r2d_core.errors` exceptions only.

    ``listing_ttl``: seconds :meth:`list_images` trusts its catalog, tag lists and tag digests
    (0: revalidate every time). ``cache_size``: entries per digest-keyed cache.
    ``platform``: which child of a multi-arch index describes a tag.
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
        event_hooks: dict[str, list[Callable[[Any], Awaitable[None]]]] | None = None,
        total_timeout: float | None = None,
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
        hooks: dict[str, list[Callable[[Any], Awaitable[None]]]] = {
            "request": [self._count],
            "response": [self._bound],
        }
        for name, extra in (event_hooks or {}).items():
            hooks.setdefault(name, []).extend(extra)
        if isinstance(verify, str):  # a CA bundle path; httpx 0.28 wants an SSL context
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.AsyncClient(
            base_url=self.url,
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
        self._configs: _LRU[str, ImageConfig] = _LRU(cache_size)
        self._summaries: _LRU[str, _Summary] = _LRU(cache_size)
        # listing caches: (monotonic time read, value)
        self._catalog_cache: tuple[float, list[str]] | None = None
        self._tags_cache: _LRU[str, tuple[float, list[str]]] = _LRU(cache_size)
        self._tag_digests: _LRU[tuple[str, str], tuple[float, str]] = _LRU(cache_size * 4)

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r})"

    #: bytes one answer may have unless the call says otherwise (manifests: the OCI limit)
    max_response_bytes = 4 * 1024 * 1024
    #: entries and pages a paginated list (catalog, tags) may have
    max_list_entries = 100_000
    max_list_pages = 1_000

    async def _count(self, request: httpx.Request) -> None:
        self.request_count += 1

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

    def invalidate(self, repository: str | None = None) -> None:
        """Forget listing state (catalog, tags, tag digests) of ``repository``, or of all.

        Call after pushing to the registry so the next :meth:`list_images` sees the new tag.
        Digest-keyed caches stay: their content cannot change.
        """
        self._catalog_cache = None
        if repository is None:
            self._tags_cache.clear()
            self._tag_digests.clear()
            return
        self._tags_cache.pop(repository)
        for key in self._tag_digests.keys():
            if key[0] == repository:
                self._tag_digests.pop(key)

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
        url: str,
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
        extensions = {"r2d_max_bytes": max_bytes or self.max_response_bytes}
        async with self._limit:
            try:
                response = await asyncio.wait_for(
                    self._send(method, url, headers, params, content, follow, extensions),
                    self.total_timeout,
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

    async def _send(
        self,
        method: str,
        url: str,
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

    async def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest ``reference`` (a tag or digest) of ``repository``; by digest from cache."""
        _check_repository(repository)
        _check_reference(reference)
        if _is_digest(reference):
            cached = self._manifests.get(reference)
            if cached is not None:
                return cached
        response = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            what=f"reading the manifest {repository}:{reference}",
            repository=repository,
        )
        body = response.content
        if _is_digest(reference):
            verify(body, reference, f"a manifest for {repository}@{reference}")
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

    async def list_images(self, prefix: str = "") -> list[RegistryImage]:
        """Every tag of every repository starting with ``prefix``, sorted by (repository, tag).

        Tags that vanish while listing (deleted meanwhile) are left out rather than failing the
        listing, and so are tags and repositories whose answers are broken or hostile
        (:class:`UpstreamError`: too large, not JSON, not matching their digest), with a warning;
        an unreachable registry, refused credentials and every other error propagate.
        """
        repositories = await self._listing_catalog(prefix)
        images: list[RegistryImage] = []
        stale = []
        for repository in repositories:
            # answered from the caches without a task per tag when everything is fresh
            cached = self._fresh_repo_images(repository)
            if cached is None:
                stale.append(repository)
            else:
                images.extend(cached)
        tag_lists = await asyncio.gather(*(self._repo_tags(r) for r in stale))
        recheck = self._pick_rechecks(
            [(r, t) for r, tags in zip(stale, tag_lists, strict=True) for t in tags]
        )
        found = await asyncio.gather(
            *(
                self._listed_image(r, t, recheck=(r, t) in recheck)
                for r, tags in zip(stale, tag_lists, strict=True)
                for t in tags
            )
        )
        images.extend(image for image in found if image is not None)
        images.sort(key=lambda i: (i.repository, i.tag))
        return images

    def _pick_rechecks(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which known, stale tag digests this listing re-checks: all, or the ``revalidate_batch``
        checked longest ago (the others are listed as last seen, and checked on a later listing)."""
        stale = []
        for key in keys:
            known = self._tag_digests.get(key)
            if known is not None and not self._fresh(known[0]):
                stale.append((known[0], key))
        if self.revalidate_batch and len(stale) > self.revalidate_batch:
            stale.sort()
            stale = stale[: self.revalidate_batch]
        return {key for _, key in stale}

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

    # ---- listing internals ---------------------------------------------------------------------
    def _fresh(self, read_at: float) -> bool:
        return time.monotonic() - read_at < self.listing_ttl

    async def _listing_catalog(self, prefix: str) -> list[str]:
        cached = self._catalog_cache
        if cached is None or not self._fresh(cached[0]):
            read_at = time.monotonic()
            cached = (read_at, await self.catalog())
            self._catalog_cache = cached
        return [n for n in cached[1] if n.startswith(prefix)]

    def _fresh_repo_images(self, repository: str) -> list[RegistryImage] | None:
        cached = self._tags_cache.get(repository)
        if cached is None or not self._fresh(cached[0]):
            return None
        images = []
        for tag in cached[1]:
            known = self._tag_digests.get((repository, tag))
            summary = self._summaries.get(known[1]) if known is not None else None
            if known is None or summary is None or not self._fresh(known[0]):
                return None
            images.append(self._image(repository, tag, known[1], summary))
        return images

    async def _repo_tags(self, repository: str) -> list[str]:
        cached = self._tags_cache.get(repository)
        if cached is None or not self._fresh(cached[0]):
            read_at = time.monotonic()
            try:
                tags = await self.tags(repository)
            except NotFound:
                tags = []  # the catalog still lists repositories whose images were all deleted
            except UpstreamError as e:
                # a hostile tag list (never-ending, too large, not JSON) costs only its repository
                log.warning("Leaving the repository %s out of the listing: %s", repository, e)
                return []
            # the service's build records (r2d_core.registry.artifacts) are no image versions
            cached = (read_at, [t for t in tags if not is_artifact_tag(t)])
            self._tags_cache.put(repository, cached)
        return cached[1]

    async def _listed_image(
        self, repository: str, tag: str, *, recheck: bool = True
    ) -> RegistryImage | None:
        try:
            known = self._tag_digests.get((repository, tag))
            if known is not None:
                read_at, digest = known
                summary = self._summaries.get(digest)
                if summary is not None and (self._fresh(read_at) or not recheck):
                    return self._image(repository, tag, digest, summary)
                if summary is not None:
                    # one conditional GET revalidates the tag: 304 if it still points to
                    # `digest`, else the new manifest in the same answer
                    manifest = await self._revalidate(repository, tag, digest)
                    if manifest is None:
                        return self._image(repository, tag, digest, summary)
                    summary = await self._summary(repository, manifest)
                    return self._image(repository, tag, manifest.digest, summary)
            return await self.image(repository, tag)
        except NotFound:
            self._tag_digests.pop((repository, tag))
            return None
        except UpstreamError as e:
            # one tag whose manifest or config is broken or hostile (too large, not matching
            # its digest, 100 000 deep): left out, not the whole listing of everyone's images
            log.warning("Leaving %s:%s out of the listing: %s", repository, tag, e)
            return None

    async def _revalidate(self, repository: str, tag: str, digest: str) -> Manifest | None:
        """None if ``tag`` still points to ``digest`` (``If-None-Match``: distribution's manifest
        ETag is the digest), else the manifest it points to now."""
        response = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{tag}",
            headers={"Accept": MANIFEST_ACCEPT, "If-None-Match": f'"{digest}"'},
            ok=(200, 304),
            what=f"revalidating {repository}:{tag}",
            repository=repository,
        )
        header = response.headers.get("Docker-Content-Digest")
        if response.status_code == 304 or (header == digest and not response.content):
            self._tag_digests.put((repository, tag), (time.monotonic(), digest))
            return None
        body = response.content
        new_digest = checked_header(response, body, f"{repository}:{tag}")
        if new_digest == digest or check_digest(body, digest):
            self._tag_digests.put((repository, tag), (time.monotonic(), digest))
            return None
        manifest = Manifest.parse(body, new_digest, response.headers.get("Content-Type"))
        self._manifests.put(manifest.digest, manifest)
        self._tag_digests.put((repository, tag), (time.monotonic(), manifest.digest))
        return manifest

    # ---- listing snapshots (r2d_core.registry.snapshot) ----------------------------------------
    def export_listing(self) -> list[list[Any]]:
        """What the listing knows: ``[repository, tag, digest, media type, labels, created,
        architecture, size]`` per tag (for a snapshot a new process starts from)."""
        self.listing_changed = False
        rows: list[list[Any]] = []
        for (repository, tag), (_read_at, digest) in self._tag_digests.items():
            summary = self._summaries.get(digest)
            if summary is None:
                continue
            created = summary.created.isoformat() if summary.created else None
            rows.append(
                [
                    repository,
                    tag,
                    digest,
                    summary.media_type,
                    summary.labels,
                    created,
                    summary.architecture,
                    summary.size,
                ]
            )
        return rows

    def import_listing(self, rows: list[list[Any]]) -> int:
        """Start from a snapshot: its summaries are content-addressed (valid as long as the
        digest), its tag digests count as checked longest ago (re-checked first, at most
        ``revalidate_batch`` per listing). Tags already known are left alone. Returns how many
        rows were taken."""
        taken = 0
        for row in rows:
            try:
                repository, tag, digest, media_type, labels, created, architecture, size = row
                _check_repository(repository)
                _check_reference(tag)
                _check_reference(digest)
                if not isinstance(labels, dict) or not _is_digest(digest):
                    continue
                when = parse_created(created) if created else None
            except (ValueError, TypeError, InvalidRequest):
                continue
            if self._summaries.get(digest) is None:
                self._summaries.put(
                    digest,
                    _Summary.of(
                        str(media_type),
                        {str(k): str(v) for k, v in labels.items()},
                        when,
                        architecture if isinstance(architecture, str) else None,
                        size if isinstance(size, int) else None,
                    ),
                )
            if self._tag_digests.get((repository, tag)) is None:
                self._tag_digests.put((repository, tag), (float("-inf"), digest))
            taken += 1
        return taken

    async def _summary(self, repository: str, manifest: Manifest) -> _Summary:
        cached = self._summaries.get(manifest.digest)
        if cached is not None:
            return cached
        target = manifest
        if manifest.is_index:
            child = self._pick_platform(manifest)
            target = await self.manifest(repository, child.digest) if child else None
        config: ImageConfig | None = None
        size: int | None = None
        if target is not None:
            size = target.size
            if target.schema1_config is not None:
                config = target.schema1_config
            elif target.config is not None:
                config = await self._config(repository, target.config.digest)
        summary = _Summary(manifest, config, size)
        self._summaries.put(manifest.digest, summary)
        self.listing_changed = True
        return summary

    def _pick_platform(self, index: Manifest) -> Descriptor | None:
        wanted_os, wanted_arch = self.platform
        real = [
            c
            for c in index.manifests
            # buildx attestation manifests are listed as platform unknown/unknown
            if not (c.platform and c.platform.get("os") == "unknown")
        ]
        for child in real:
            if child.platform and (
                child.platform.get("os"),
                child.platform.get("architecture"),
            ) == (
                wanted_os,
                wanted_arch,
            ):
                return child
        return real[0] if real else None

    async def _config(self, repository: str, digest: str) -> ImageConfig:
        cached = self._configs.get(digest)
        if cached is not None:
            return cached
        response = await self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            what=f"reading the image config of {repository}",
            repository=repository,
        )
        verify(response.content, digest, f"an image config of {repository}")
        config = ImageConfig.parse(response.content)
        self._configs.put(digest, config)
        return config

    def _image(self, repository: str, tag: str, digest: str, summary: _Summary) -> RegistryImage:
        return RegistryImage(
            repository=repository,
            tag=tag,
            digest=digest,
            media_type=summary.media_type,
            labels=dict(summary.labels),
            created=summary.created,
            architecture=summary.architecture,
            size=summary.size,
            reference=f"{self.host}/{repository}:{tag}",
        )


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
