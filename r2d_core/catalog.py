"""The image catalog: which images exist, whose they are, and where (engine and/or registry).

Built images are found by their labels (owner, name, repo, ref, sha, build id) and indexed in
memory, refreshed from Docker (and merged with the registry's images) after a short TTL and after
every change the service makes. An image counts as an owner's only when its reference is the very
name the naming template gives its labels: a mis-tagged image is ignored, and nobody builds over an
image somebody else built (:meth:`ImageCatalog.owner_of`).

The catalog knows nothing about builds or the queue; :class:`~r2d_core.manager.BuildManager` uses
it for listings, deletes, "is it built already?" and the push target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from .engine import DockerEngine
from .errors import InvalidRequest, NotFound, R2DError
from .models import ImageGroup, ImageVersion, label_options, parse_labels, parse_time
from .naming import image_reference, parse_reference
from .options import options_digest
from .registry.config import Registry
from .registry.snapshot import read_snapshot, snapshot_repository, write_snapshot

__all__ = ["CatalogSettings", "ImageCatalog"]

T = TypeVar("T")


class CatalogSettings(Protocol):
    """The settings the catalog reads (live, so a changed trait applies): BuildManager's traits."""

    image_prefix: str
    image_name_template: str
    image_cache_ttl: float


class ImageCatalog:
    """The in-memory image index over the engine and the optional registry."""

    def __init__(
        self,
        *,
        settings: CatalogSettings,
        engine: DockerEngine,
        registry: Registry,
        engine_call: Callable[[Awaitable[T]], Awaitable[T]],
        log: Any,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        #: awaits an engine call, noting an unreachable engine (the manager reconnects)
        self._engine_call = engine_call
        self.log = log
        self._images: dict[str, ImageVersion] = {}
        self._images_at = 0.0
        self._images_lock = asyncio.Lock()
        #: when the listing that made the index began (monotonic): see _load_images
        self._listing_began = -1.0
        self._image_warnings: list[str] = []
        self._all_groups: list[ImageGroup] = []
        self._images_loaded = False
        self._images_refresh: asyncio.Task[None] | None = None
        #: the build archive (r2d_core.archive): a deleted version's records go with it
        self.archive: Any = None
        self._snapshot_read = False
        self._snapshot_written = float("-inf")
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_verify = False
        self._verify_task: asyncio.Task[None] | None = None
        #: (monotonic time, reference, version) of images added by :meth:`add_local`, kept so a
        #: listing that was already under way when they were added does not drop them
        self._added: list[tuple[float, str, ImageVersion]] = []

    @property
    def warnings(self) -> list[str]:
        """Why the last image listing may be incomplete (e.g. the registry was unreachable)."""
        return list(self._image_warnings)

    def knows(self, reference: str) -> bool:
        """Whether the index lists ``reference`` (as of its last refresh)."""
        return reference in self._images

    def pushed(self, reference: str) -> bool:
        """Whether the index saw ``reference`` in the registry (as of its last refresh)."""
        version = self._images.get(reference)
        return version is not None and version.pushed

    def close(self) -> None:
        """Stop a background refresh (the service is stopping)."""
        if self._images_refresh is not None:
            self._images_refresh.cancel()
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        if self._verify_task is not None:
            self._verify_task.cancel()

    # ---- naming and ownership -------------------------------------------------------------------
    def image_for(
        self, owner: str, name: str, sha: str, ref: str = "", options_digest: str = ""
    ) -> str:
        """The image reference a build of ``owner``'s ``name`` at ``sha`` produces (with
        effective options of digest ``options_digest``, see :mod:`r2d_core.options`)."""
        return image_reference(
            self.settings.image_name_template,
            prefix=self.settings.image_prefix,
            owner=owner,
            name=name,
            sha=sha,
            ref=ref,
            options_digest=options_digest,
        )

    @staticmethod
    def owner_of(labels: dict[str, str] | None) -> str | None:
        """The owner an image's (or registry manifest's) labels name, or None if it is not ours."""
        fields = parse_labels(labels)
        return None if fields is None else fields.get("owner")

    def _owned_fields(self, labels: dict[str, str] | None, reference: str) -> dict[str, str] | None:
        """Our label fields, if ``reference`` is the very name our template gives them."""
        fields = parse_labels(labels)
        if fields is None:
            return None
        try:
            # the digest is computed from the options label itself, so a reference matches only
            # the options its image was really built with
            expected = self.image_for(
                fields["owner"],
                fields["name"],
                fields["sha"],
                fields.get("ref", ""),
                options_digest(label_options(fields)[0]),
            )
        except InvalidRequest:
            return None
        return fields if reference == expected else None

    # ---- the index --------------------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> None:
        """Bring the image index up to date with Docker (and the registry).

        A stale index is refreshed in the background while callers get the current one
        (stale-while-revalidate), so listings never wait for Docker; ``force`` waits.
        """
        ttl = self.settings.image_cache_ttl
        if not force and time.monotonic() - self._images_at < ttl:
            return
        if not force and self._images_loaded and ttl > 0:
            if self._images_refresh is None or self._images_refresh.done():
                self._images_refresh = asyncio.create_task(self.refresh_quietly(force=False))
            return
        await self._load_images(force)

    async def refresh_quietly(self, force: bool = True) -> None:
        """Refresh the index; a failure is logged (listings report it), not raised."""
        try:
            await self._load_images(force)
        except R2DError as e:
            self.log.warning("Refreshing the image index failed: %s", e)

    async def _load_images(self, force: bool) -> None:
        asked = time.monotonic()
        async with self._images_lock:
            if not force and time.monotonic() - self._images_at < self.settings.image_cache_ttl:
                return
            if force and self._listing_began >= asked:
                # a listing that began after this caller asked is as fresh as its own would
                # be: forced refreshes asked together (a burst of deletes) share one
                return
            listed_at = time.monotonic()
            summaries = await self._engine_call(self.engine.list_images())
            images: dict[str, ImageVersion] = {}
            for summary in summaries:
                for tag in summary.get("RepoTags") or []:
                    # Only the name our template gives these labels counts: an image labelled as
                    # alice's but tagged elsewhere (by hand, or with an older template) is ignored.
                    fields = self._owned_fields(summary.get("Labels"), tag)
                    if fields is None:
                        continue
                    images[tag] = self._version(
                        fields,
                        tag,
                        created=float(summary.get("Created") or 0),
                        size=summary.get("Size"),
                        local=True,
                        image_id=summary.get("Id"),
                    )
            warnings: list[str] = []
            if self.registry.configured:
                try:
                    await self._read_snapshot()
                    remote = await self.registry.client().list_images(self.registry_prefix())
                    self._verify_snapshot_soon()
                    self._write_snapshot_soon()
                except R2DError as e:
                    remote = []
                    warnings.append(
                        f"registry {self.registry.host} unavailable, showing local images only: {e}"
                    )
                for item in remote:
                    self._merge_remote(images, item)
            for added_at, tag, version in self._added:
                if added_at >= listed_at and tag not in images:
                    images[tag] = version  # built while the engine was being listed
            self._added = [a for a in self._added if a[0] >= listed_at]
            self._images = images
            self._listing_began = listed_at  # (a failed listing sets nothing: callers retry)
            self._all_groups = self._build_groups(images)
            self._images_loaded = True
            self._image_warnings = warnings
            # an incomplete listing is not trusted for the TTL: the next one asks again
            self._images_at = 0.0 if warnings else time.monotonic()

    async def _read_snapshot(self) -> None:
        """Once per process: start the registry listing from its snapshot (r2d_core.registry.
        snapshot), so the first listing after a restart re-checks each tag with one conditional
        request instead of reading its manifest and config (~1,100 requests, not ~2,100)."""
        if self._snapshot_read or not self.registry.listing_snapshot:
            return
        self._snapshot_read = True
        repository = snapshot_repository(self.registry_prefix())
        if repository is None:
            return
        try:
            taken = await read_snapshot(self.registry.client(), repository)
        except R2DError as e:
            self.log.warning("Could not read the listing snapshot from the registry: %s", e)
            return
        if taken:
            self._snapshot_verify = self.registry.verify_snapshot
            self.log.info("Listing started from the registry's snapshot (%d tags)", taken)

    def _verify_snapshot_soon(self) -> None:
        """After the first listing from a snapshot: re-read, in the background and a few at a
        time, what the snapshot said of each image (labels decide ownership; the snapshot is a
        cache others could have written). A correction shows at the next refresh."""
        if not self._snapshot_verify:
            return
        self._snapshot_verify = False
        client = self.registry.client()

        async def verify() -> None:
            try:
                checked, corrected = await client.verify_imported()
            except R2DError as e:
                self.log.warning("Could not verify the listing snapshot: %s", e)
                return
            if corrected:
                self.log.warning(
                    "The listing snapshot disagreed with the registry on %d of %d images: "
                    "corrected (the snapshot is rewritten)",
                    corrected,
                    checked,
                )
                self._images_at = 0.0  # the next listing shows the registry's answer
                self._write_snapshot_soon()

        self._verify_task = asyncio.create_task(verify())

    #: seconds a snapshot write waits for more changes (pushes and deletes come in bursts)
    snapshot_delay = 1.0

    def _write_snapshot_soon(self) -> None:
        """Rewrite the snapshot in the background when the listing changed: after a push or a
        delete (their refresh learns it) or a change by others, so a restarted service starts
        from an up-to-date snapshot. Writes are one at a time; changes made meanwhile are
        written by the next round."""
        client = self.registry.client()
        if (
            not self.registry.listing_snapshot
            or not client.listing_changed
            or (self._snapshot_task is not None and not self._snapshot_task.done())
        ):
            return
        repository = snapshot_repository(self.registry_prefix())
        if repository is None:
            return

        async def write() -> None:
            try:
                while client.listing_changed:
                    await asyncio.sleep(self.snapshot_delay)
                    await write_snapshot(client, repository)
                    self._snapshot_written = time.monotonic()
            except R2DError as e:
                self.log.warning("Could not write the listing snapshot to the registry: %s", e)

        self._snapshot_task = asyncio.create_task(write())

    def add_local(self, info: dict[str, Any]) -> bool:
        """Put one image the service just built into the index, from its inspect document (what
        the build already knows), instead of re-listing every image from the engine.

        The index otherwise stays as it was (its TTL too): other changes are seen at the next
        refresh. Returns whether the image counted as ours (named as its labels say).
        """
        labels = (info.get("Config") or {}).get("Labels")
        added = False
        for tag in info.get("RepoTags") or []:
            fields = self._owned_fields(labels, tag)
            if fields is None:
                continue
            previous = self._images.get(tag)
            version = self._version(
                fields,
                tag,
                created=parse_time(info.get("Created")),
                size=info.get("Size"),
                local=True,
                image_id=info.get("Id"),
            )
            if previous is not None and previous.pushed:
                version.pushed, version.digest = True, previous.digest
            self._images[tag] = version
            self._added.append((time.monotonic(), tag, version))
            del self._added[:-1000]  # cleared by every listing; bounded without one
            added = True
        if added:
            self._all_groups = self._build_groups(self._images)
        return added

    def _merge_remote(self, images: dict[str, ImageVersion], item: Any) -> None:
        """Add a registry image to the index (or mark the local one pushed), if it is ours."""
        fields = self._owned_fields(item.labels, item.reference)
        if fields is None:
            return
        version = images.get(item.reference)
        if version is not None:
            version.pushed = True
            version.digest = item.digest
            return
        images[item.reference] = self._version(
            fields,
            item.reference,
            created=item.created.timestamp() if item.created else None,
            size=item.size,
            local=False,
            pushed=True,
            digest=item.digest,
        )

    @staticmethod
    def _version(
        fields: dict[str, str], reference: str, *, created: float | None, **found: Any
    ) -> ImageVersion:
        options, annotations = label_options(fields)
        return ImageVersion(
            reference=reference,
            owner=fields["owner"],
            name=fields["name"],
            repo=fields.get("repo", ""),
            ref=fields.get("ref", ""),
            sha=fields["sha"],
            created=parse_time(fields.get("created")) or created,
            build_id=fields.get("build-id"),
            options=options,
            annotations=annotations,
            **found,
        )

    @staticmethod
    def _build_groups(images: dict[str, ImageVersion]) -> list[ImageGroup]:
        """Versions grouped per (owner, name), newest first (once per refresh, not per request)."""
        grouped: dict[tuple[str, str], list[ImageVersion]] = {}
        for version in images.values():
            grouped.setdefault((version.owner, version.name), []).append(version)
        groups = []
        for (owner, name), versions in grouped.items():
            versions.sort(key=lambda v: v.created or 0, reverse=True)
            groups.append(ImageGroup(owner, name, versions[0].repository, versions))
        groups.sort(key=lambda g: g.newest.created or 0, reverse=True)
        return groups

    def groups(self, owners: set[str] | None = None) -> list[ImageGroup]:
        """The index's groups (no refresh), optionally only those of ``owners``."""
        if owners is None:
            return list(self._all_groups)
        return [g for g in self._all_groups if g.owner in owners]

    def group(self, owner: str, name: str) -> ImageGroup:
        """``owner``'s image ``name`` from the index (no refresh); NotFound if there is none."""
        groups = [g for g in self.groups({owner}) if g.name == name]
        if not groups:
            raise NotFound(f"{owner} has no image {name!r}")
        return groups[0]

    async def list_images(self, owners: Iterable[str] | None = None) -> list[ImageGroup]:
        """Built images, grouped per (owner, name), newest first."""
        await self.refresh()
        return self.groups(set(owners) if owners is not None else None)

    async def get_image(self, owner: str, name: str) -> ImageGroup:
        await self.refresh()
        return self.group(owner, name)

    async def delete_image(
        self, owner: str, name: str, tag: str | None = None
    ) -> dict[str, list[Any]]:
        """Delete all versions of an image, or the one with ``tag``; report what failed."""
        await self.refresh(force=True)
        group = self.group(owner, name)
        versions = [v for v in group.versions if tag is None or v.tag == tag]
        if not versions:
            raise NotFound(f"{owner}'s image {name!r} has no version {tag!r}")
        deleted: list[str] = []
        errors: list[dict[str, str]] = []
        for version in versions:
            ok = True
            if version.local:
                try:
                    await self._engine_call(self.engine.remove_image(version.reference))
                except NotFound:
                    pass
                except R2DError as e:
                    ok = False
                    errors.append({"image": version.reference, "where": "local", "message": str(e)})
            if version.pushed and self.registry.configured:
                parsed = parse_reference(version.reference)
                try:
                    await self._delete_artifacts(
                        version.reference, parsed.path, parsed.tag or "latest"
                    )
                    await self.registry.client().delete(parsed.path, parsed.tag or "latest")
                    self.registry.client().invalidate(parsed.path)
                except NotFound:
                    pass
                except R2DError as e:
                    ok = False
                    errors.append(
                        {"image": version.reference, "where": "registry", "message": str(e)}
                    )
            if ok:
                deleted.append(version.reference)
        await self.refresh(force=True)
        return {"deleted": deleted, "errors": errors}

    async def _delete_artifacts(self, reference: str, path: str, tag: str) -> None:
        """Delete the build records attached to ``path:tag`` (before the image: they point to it)."""
        if self.archive is None:
            return
        await self.archive.forget_image(reference)
        digest = await self.registry.client().digest(path, tag)
        await self.archive.store().delete_for_image(path, digest)

    # ---- the registry -----------------------------------------------------------------------------
    def check_push_target(self, image: str) -> None:
        """Refuse a push of ``image`` when its name does not put it in the configured registry."""
        domain = parse_reference(image).domain
        if domain != self.registry.host:
            raise InvalidRequest(
                f"images are named {image}, which is not in the registry {self.registry.host}: set "
                f"c.BuildManager.image_prefix to start with it, e.g. '{self.registry.host}/r2d-'",
                field="push",
            )

    def registry_prefix(self) -> str:
        """The repository-name prefix our images have inside the registry (for the catalog)."""
        host = self.registry.host
        if not self.settings.image_name_template.startswith("{prefix}"):
            return ""
        prefix = self.settings.image_prefix
        return prefix[len(host) + 1 :] if host and prefix.startswith(host + "/") else ""

    def registry_location(self, image: str) -> tuple[str, str] | None:
        """(path, tag) of ``image`` in the configured registry, or None if it is not there."""
        parsed = parse_reference(image)
        if parsed.domain != self.registry.host or not parsed.tag:
            return None
        return parsed.path, parsed.tag

    async def registry_image(self, image: str) -> Any:
        """The registry's image for ``image``, or None (also when the registry is unreachable)."""
        location = self.registry_location(image)
        if location is None:
            return None
        try:
            return await self.registry.client().image(*location)
        except NotFound:
            return None
        except R2DError as e:
            self.log.warning("Registry lookup of %s failed: %s", image, e)
            return None

    async def in_registry(self, image: str) -> bool:
        """Whether the registry has ``image`` (False when it cannot be asked)."""
        location = self.registry_location(image)
        if location is None:
            return False
        try:
            await self.registry.client().digest(*location)
            return True
        except R2DError:
            return False
