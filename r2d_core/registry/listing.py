"""Listing of :class:`~r2d_core.registry.client.RegistryClient` (a mixin): every tag of every
repository with its labels, and the caches that make listing again cheap.

Caching, and why it stays correct:

* manifests fetched **by digest**, image config blobs and the per-manifest image summary are
  content-addressed, hence immutable: kept in bounded LRU caches with no expiry;
* what can change, tags moving and repositories appearing, is re-read: ``tags``, ``catalog``,
  ``manifest`` and ``image`` always ask the registry. Only :meth:`Listing.list_images` reuses the
  catalog, the tag lists and tag→digest answers for ``listing_ttl`` seconds; past that it
  revalidates each known tag with one conditional request (its digest) instead of fetching
  manifest and config again. Our own ``delete`` and :meth:`Listing.invalidate` (call it after a
  push) drop the affected entries at once, so only changes made by others can be up to
  ``listing_ttl`` seconds late.

The HTTP side (``_request``, auth, errors) stays in :mod:`r2d_core.registry.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import InvalidRequest, NotFound, UpstreamError
from .artifacts_tags import is_artifact_tag
from .models import (
    MANIFEST_ACCEPT,
    Descriptor,
    ImageConfig,
    Manifest,
    RegistryImage,
    parse_created,
)
from .names import _check_reference, _check_repository, _is_digest
from .untrusted import check_digest, checked_header, verify

if TYPE_CHECKING:
    from .client import RegistryClient

__all__ = ["Listing"]

# the client's logger: listing warnings read as the registry client's
log = logging.getLogger("r2d_core.registry.client")

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


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

    def pop_value(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def keys(self) -> list[K]:
        return list(self._data)

    def items(self) -> list[tuple[K, V]]:
        return list(self._data.items())

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class _Summary:
    """What a listing needs of one manifest digest (immutable, so cached without expiry)."""

    __slots__ = ("architecture", "created", "labels", "media_type", "size")

    def __init__(self, manifest: Manifest, config: ImageConfig | None, size: int | None) -> None:
        self.media_type = manifest.media_type
        self.labels = dict(config.labels) if config else {}
        self.created = config.created if config else None
        self.architecture = config.architecture if config else None
        self.size = size

    def _key(self) -> tuple[Any, ...]:
        return (self.media_type, self.labels, self.created, self.architecture, self.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Summary) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable fields: not a dict key

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


class Listing:
    """Mixed into RegistryClient: :meth:`list_images`, its caches and the snapshot rows."""

    def _init_listing(self, cache_size: int) -> None:
        self._configs: _LRU[str, ImageConfig] = _LRU(cache_size)
        self._summaries: _LRU[str, _Summary] = _LRU(cache_size)
        # listing caches: (monotonic time read, value)
        self._catalog_cache: tuple[float, list[str]] | None = None
        self._tags_cache: _LRU[str, tuple[float, list[str]]] = _LRU(cache_size)
        self._tag_digests: _LRU[tuple[str, str], tuple[float, str]] = _LRU(cache_size * 4)
        # fetches in flight by digest: tags sharing a manifest, or images sharing a config,
        # wait for the one request instead of each sending its own
        self._flights: dict[tuple[str, str], asyncio.Future[Any]] = {}
        #: tags per repository as last known, from a snapshot or before an invalidate (to
        #: notice that a tag went when its list is read again)
        self._tags_before: dict[str, set[str]] = {}
        #: manifest digests whose summary came from a snapshot, not from the registry
        self._unverified: set[str] = set()

    async def _once(
        self: RegistryClient, key: tuple[str, str], fetch: Callable[[], Awaitable[T]]
    ) -> T:
        """``fetch()``, or the result of the same fetch already in flight. A failed flight (say,
        a blob another repository cannot serve) makes its waiters fetch for themselves."""
        flight = self._flights.get(key)
        if flight is not None:
            with contextlib.suppress(Exception):  # its error is not ours: try ourselves
                return await asyncio.shield(flight)
        task = asyncio.ensure_future(fetch())
        self._flights[key] = task

        def landed(done: asyncio.Future[Any]) -> None:
            if self._flights.get(key) is done:
                del self._flights[key]
            if not done.cancelled():
                done.exception()  # retrieved even when every waiter is gone

        task.add_done_callback(landed)
        # shielded: a cancelled listing must not cancel the fetch others wait for
        return await asyncio.shield(task)

    def invalidate(self: RegistryClient, repository: str | None = None) -> None:
        """Forget listing state (catalog, tags, tag digests) of ``repository``, or of all.

        Call after pushing to the registry so the next :meth:`list_images` sees the new tag.
        Digest-keyed caches stay: their content cannot change.
        """
        self._catalog_cache = None
        if repository is None:
            self._tags_cache.clear()
            self._tag_digests.clear()
            return
        cached = self._tags_cache.pop_value(repository)
        if cached is not None:
            # what the next read of its tag list is compared with (a delete changes it)
            self._tags_before[repository] = set(cached[1])
        for key in self._tag_digests.keys():
            if key[0] == repository:
                self._tag_digests.pop(key)

    async def list_images(self: RegistryClient, prefix: str = "") -> list[RegistryImage]:
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

    def _pick_rechecks(self: RegistryClient, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
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

    # ---- listing internals ---------------------------------------------------------------------
    def _fresh(self: RegistryClient, read_at: float) -> bool:
        return time.monotonic() - read_at < self.listing_ttl

    async def _listing_catalog(self: RegistryClient, prefix: str) -> list[str]:
        cached = self._catalog_cache
        if cached is None or not self._fresh(cached[0]):
            read_at = time.monotonic()
            cached = (read_at, await self.catalog())
            self._catalog_cache = cached
        return [n for n in cached[1] if n.startswith(prefix)]

    def _fresh_repo_images(self: RegistryClient, repository: str) -> list[RegistryImage] | None:
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

    async def _repo_tags(self: RegistryClient, repository: str) -> list[str]:
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
            fresh = [t for t in tags if not is_artifact_tag(t)]
            before = (
                set(cached[1]) if cached is not None else self._tags_before.pop(repository, None)
            )
            if before is not None and before != set(fresh):
                self.listing_changed = True
            cached = (read_at, fresh)
            self._tags_cache.put(repository, cached)
        return cached[1]

    async def _listed_image(
        self: RegistryClient, repository: str, tag: str, *, recheck: bool = True
    ) -> RegistryImage | None:
        known = self._tag_digests.get((repository, tag))
        try:
            image = await self._read_listed(repository, tag, known, recheck)
        except NotFound:
            if self._tag_digests.pop_value((repository, tag)) is not None:
                self.listing_changed = True
            return None
        except UpstreamError as e:
            # one tag whose manifest or config is broken or hostile (too large, not matching
            # its digest, 100 000 deep): left out, not the whole listing of everyone's images
            log.warning("Leaving %s:%s out of the listing: %s", repository, tag, e)
            return None
        if known is None or known[1] != image.digest:
            self.listing_changed = True  # a new tag, or one that moved: the snapshot is behind
        return image

    async def _read_listed(
        self: RegistryClient,
        repository: str,
        tag: str,
        known: tuple[float, str] | None,
        recheck: bool,
    ) -> RegistryImage:
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

    async def _revalidate(
        self: RegistryClient, repository: str, tag: str, digest: str
    ) -> Manifest | None:
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
    def export_listing(self: RegistryClient) -> list[list[Any]]:
        """What the listing knows: ``[repository, tag, digest, media type, labels, created,
        architecture, size]`` per tag (for a snapshot a new process starts from)."""
        self.listing_changed = False
        rows: list[list[Any]] = []
        catalog = set(self._catalog_cache[1]) if self._catalog_cache is not None else None
        for (repository, tag), (_read_at, digest) in self._tag_digests.items():
            summary = self._summaries.get(digest)
            listed = self._tags_cache.get(repository)
            if (
                summary is None
                or (listed is not None and tag not in listed[1])
                or (catalog is not None and repository not in catalog)
            ):
                continue  # unknown, or gone from the registry (snapshot rows of the past)
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

    def import_listing(self: RegistryClient, rows: list[list[Any]]) -> int:
        """Start from a snapshot: its summaries are content-addressed (valid as long as the
        digest), its tag digests count as checked longest ago (re-checked first, at most
        ``revalidate_batch`` per listing). Tags already known are left alone. Returns how many
        rows were taken."""
        taken = 0
        for row in rows:
            if taken >= self._tag_digests.maxsize:
                break  # no more than the caches hold (a snapshot is at most MAX_SNAPSHOT bytes)
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
                self._unverified.add(digest)
            if self._tag_digests.get((repository, tag)) is None:
                self._tag_digests.put((repository, tag), (float("-inf"), digest))
            self._tags_before.setdefault(repository, set()).add(tag)
            taken += 1
        return taken

    async def _summary(self: RegistryClient, repository: str, manifest: Manifest) -> _Summary:
        cached = self._summaries.get(manifest.digest)
        if cached is not None:
            return cached
        return await self._once(
            ("summary", manifest.digest), lambda: self._read_summary(repository, manifest)
        )

    async def _read_summary(self: RegistryClient, repository: str, manifest: Manifest) -> _Summary:
        summary = await self._fetch_summary(repository, manifest)
        self._summaries.put(manifest.digest, summary)
        self._unverified.discard(manifest.digest)
        self.listing_changed = True
        return summary

    async def _fetch_summary(self: RegistryClient, repository: str, manifest: Manifest) -> _Summary:
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
        return _Summary(manifest, config, size)

    async def verify_imported(self: RegistryClient, concurrency: int = 4) -> tuple[int, int]:
        """Re-read from the registry what an imported snapshot said of each manifest still
        listed (its manifest and config, at most ``concurrency`` at once): a snapshot is a cache
        anyone with push rights on its repository could have written. A summary that differs is
        replaced (and the snapshot is then rewritten). Returns (checked, corrected)."""
        where: dict[str, tuple[str, str]] = {}
        for (repository, tag), (_read_at, digest) in self._tag_digests.items():
            if digest in self._unverified:
                where.setdefault(digest, (repository, tag))
        self._unverified.intersection_update(where)
        limit = asyncio.Semaphore(max(1, concurrency))
        corrected = 0

        async def one(digest: str, repository: str) -> None:
            nonlocal corrected
            async with limit:
                try:
                    manifest = await self.manifest(repository, digest)
                    fresh = await self._fetch_summary(repository, manifest)
                except NotFound:
                    return  # deleted meanwhile: the next listing drops the tag
                except UpstreamError as e:
                    # cannot be checked (hostile or broken answer): the snapshot's word is not
                    # kept; the next listing reads the tag afresh (and leaves it out if it fails)
                    log.warning("Could not verify %s in %s: %s", digest, repository, e)
                    self._summaries.pop(digest)
                    self.listing_changed = True
                    return
                finally:
                    self._unverified.discard(digest)
            if self._summaries.get(digest) != fresh:
                corrected += 1
                self._summaries.put(digest, fresh)
                self.listing_changed = True

        await asyncio.gather(*(one(d, r) for d, (r, _t) in where.items()))
        return len(where), corrected

    def _pick_platform(self: RegistryClient, index: Manifest) -> Descriptor | None:
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

    async def _config(self: RegistryClient, repository: str, digest: str) -> ImageConfig:
        cached = self._configs.get(digest)
        if cached is not None:
            return cached
        return await self._once(("config", digest), lambda: self._read_config(repository, digest))

    async def _read_config(self: RegistryClient, repository: str, digest: str) -> ImageConfig:
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

    def _image(
        self: RegistryClient, repository: str, tag: str, digest: str, summary: _Summary
    ) -> RegistryImage:
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
