"""Build records and logs as OCI artifacts in the registry (issue 13).

Layout, per build that was to push and ended (``built``, ``failed``, ``cancelled``):

* one **OCI image manifest** with ``artifactType`` :data:`ARTIFACT_TYPE`, the empty config
  (``application/vnd.oci.empty.v1+json``, ``{}``) and two layers: the record
  (:data:`~r2d_core.records.RECORD_MEDIA_TYPE`) and the gzipped log
  (:data:`~r2d_core.records.LOG_MEDIA_TYPE`); its annotations carry the build id, owner and
  creation time, so a restore can pick the newest records from the manifests alone; blobs up
  to :data:`EMBED_MAX` are also embedded in their descriptors (OCI 1.1 ``data``), so a restore
  reads a build with one request;
* for a build with an image, ``subject`` is the image manifest (OCI 1.1), and the image's
  referrers **fallback index** (tag ``sha256-<hex>`` of the image digest, the OCI 1.1 tag schema
  for registries without the referrers API such as distribution 2.8) lists the artifact;
* every artifact is also tagged ``r2d-build-<build id>`` in the image's repository: that is how a
  service on a fresh engine finds the records (tags/list), for failed builds (no image, no
  subject) too. Listings skip both tag kinds (:mod:`.artifacts_tags`). Records without a
  subject are bounded by the lifecycle policy (:mod:`r2d_core.record_retention`).

Deleting an image version deletes what its fallback index lists, the index itself and the
artifacts' blobs (the shared empty config stays).

Why httpx (:class:`~.client.RegistryClient`) and not oras-py: oras-py 0.2.43 pushes with a
``subject`` but has no ``artifactType`` parameter and no referrers fallback; its bearer-token
auth keeps one token and re-sends it to the next repository (401) or reuses a pull-only token for
a push; with Basic auth and no credentials it retries for ~131 s; and it is synchronous. The
service writes to many repositories with one identity, under all three auth modes, from the
event loop: the project's own client does that already (per-scope tokens, 401 handling, bounded
concurrency), so the artifacts go through it. Any OCI client (``oras discover``, oras-py's
``pull``) reads them: they are plain OCI 1.1 artifacts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import Forbidden, NotFound, R2DError, RateLimited, Unavailable, UpstreamError
from .artifacts_tags import RECORD_TAG_PREFIX, record_tag, referrers_tag
from .client import RegistryClient
from .models import OCI_INDEX, OCI_MANIFEST
from .names import _is_digest, _sha256
from .untrusted import check_digest, loads

__all__ = [
    "ARTIFACT_TYPE",
    "ArtifactStore",
    "StoredRecord",
]

ARTIFACT_TYPE = "application/vnd.repo2docker-service.build.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
_ANNOTATION = "io.repo2docker-service.build."
_CREATED = "org.opencontainers.image.created"
#: blobs up to this size are also embedded in the artifact manifest (``data``)
EMBED_MAX = 48 * 1024
#: entries of a referrers index acted upon (an image has one record per build of it)
MAX_REFERRERS = 1000

log = logging.getLogger(__name__)


def _layer(value: Any) -> dict[str, Any] | None:
    """A layer descriptor as we write them (string media type and digest, integer size), or None:
    whatever the registry holds is untrusted, and a wrong type must skip the record, not fail the
    whole restore."""
    if not isinstance(value, dict):
        return None
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) or not _is_digest(digest):
        return None
    if size is not None and (not isinstance(size, int) or size < 0):
        return None
    return value


@dataclass(frozen=True)
class StoredRecord:
    """One build record found in the registry (from its manifest; blobs not read yet)."""

    repository: str
    build_id: str
    owner: str
    created: str
    digest: str
    record: dict[str, Any]  # descriptor of the record blob
    log: dict[str, Any] | None  # descriptor of the log blob
    #: the digest of the image manifest it is attached to; None for a build that left no image
    #: in the registry (failed, cancelled, not pushed): what ``keep_failed_records`` bounds
    subject: str | None = None


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _embedded(descriptor: dict[str, Any], content: bytes) -> dict[str, Any]:
    """The descriptor with its content in ``data`` (OCI 1.1), when small: a restore then reads
    the record and most logs from the manifest alone, one request per build instead of three.
    The blob is uploaded all the same (registries check that every layer exists)."""
    if len(content) <= EMBED_MAX:
        descriptor["data"] = base64.b64encode(content).decode()
    return descriptor


def _content(descriptor: dict[str, Any]) -> bytes | None:
    """The embedded content of a descriptor, if present and matching its digest and size."""
    data = descriptor.get("data")
    if not isinstance(data, str) or len(data) > EMBED_MAX * 2:
        return None
    try:
        content = base64.b64decode(data, validate=True)
    except ValueError:
        return None
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not check_digest(content, digest):
        return None
    if len(content) != descriptor.get("size"):
        return None
    return content


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class ArtifactStore:
    """Pushes, finds, reads and deletes build-record artifacts through a :class:`RegistryClient`."""

    def __init__(self, client: RegistryClient, *, concurrency: int = 16) -> None:
        self.client = client
        self._limit = asyncio.Semaphore(max(1, concurrency))

    # ---- writing -----------------------------------------------------------------------------
    async def push(
        self,
        repository: str,
        *,
        build_id: str,
        owner: str,
        created: str,
        record: bytes,
        log: bytes,
        image_tag: str | None,
    ) -> str:
        """Store one build's record and log; attach it to ``image_tag``'s manifest if given.

        Returns the artifact manifest's digest. Pushing the same build again replaces its
        record tag and adds no second fallback-index entry.
        """
        from ..records import LOG_MEDIA_TYPE, RECORD_MEDIA_TYPE

        subject = None
        if image_tag is not None:
            media_type, digest, size = await self.client.head_manifest(repository, image_tag)
            subject = _descriptor(media_type, digest, size)
        config_digest, record_digest, log_digest = await asyncio.gather(
            self.client.upload_blob(repository, EMPTY_CONFIG),
            self.client.upload_blob(repository, record),
            self.client.upload_blob(repository, log),
        )
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": _descriptor(EMPTY_MEDIA_TYPE, config_digest, len(EMPTY_CONFIG)),
            "layers": [
                _embedded(_descriptor(RECORD_MEDIA_TYPE, record_digest, len(record)), record),
                _embedded(_descriptor(LOG_MEDIA_TYPE, log_digest, len(log)), log),
            ],
            "annotations": {
                f"{_ANNOTATION}id": build_id,
                f"{_ANNOTATION}owner": owner,
                _CREATED: created,
            },
        }
        if subject is not None:
            manifest["subject"] = subject
        body = _dumps(manifest)
        digest = await self.client.put_manifest(
            repository, record_tag(build_id), body, OCI_MANIFEST
        )
        if subject is not None:
            referrer = _descriptor(OCI_MANIFEST, digest, len(body))
            referrer["annotations"] = {f"{_ANNOTATION}id": build_id}
            await self._add_referrer(repository, subject["digest"], referrer)
        return digest

    async def _add_referrer(
        self, repository: str, subject_digest: str, descriptor: dict[str, Any]
    ) -> None:
        """Add the artifact to the subject's fallback index (``sha256-<hex>``)."""
        tag = referrers_tag(subject_digest)
        entries = await self._referrers(repository, subject_digest)
        build_id = descriptor["annotations"][f"{_ANNOTATION}id"]
        # one entry per build: a record pushed again (a retry) replaces its earlier entry
        entries = [
            e
            for e in entries
            if e.get("digest") != descriptor["digest"]
            and (e.get("annotations") or {}).get(f"{_ANNOTATION}id") != build_id
        ]
        entry = dict(descriptor)
        entry["artifactType"] = ARTIFACT_TYPE
        entries.append(entry)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        await self.client.put_manifest(repository, tag, _dumps(index), OCI_INDEX)

    async def _referrers(self, repository: str, subject_digest: str) -> list[dict[str, Any]]:
        """The entries of ``subject_digest``'s fallback index (``[]`` when there is none)."""
        try:
            body = await self.client.raw_manifest(
                repository, referrers_tag(subject_digest), accept=OCI_INDEX
            )
        except NotFound:
            return []
        data = loads(body, f"a referrers index of {repository}")
        entries = data.get("manifests") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return []
        return [
            e
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("digest"), str) and _is_digest(e["digest"])
        ]

    # ---- finding and reading -----------------------------------------------------------------
    async def find(self, repositories: list[str], *, more_than: int = 0) -> list[StoredRecord]:
        """Every record artifact in ``repositories`` (manifests read, blobs not); with
        ``more_than``, only in repositories with more record tags than that (one tags request
        each decides, no manifest read where there are fewer)."""

        async def in_repository(repository: str) -> list[StoredRecord]:
            try:
                tags = await self.client.tags(repository)
            except NotFound:
                return []
            except (Unavailable, Forbidden, RateLimited) as e:
                # one repository answering nonsense, stalling or refusing us must not cost the
                # others their history (an unreachable registry already failed the catalog,
                # and the restore is retried)
                log.warning("Skipping the build records in %s: %s", repository, e)
                return []
            wanted = [t for t in tags if t.startswith(RECORD_TAG_PREFIX)]
            if len(wanted) <= more_than:
                return []
            found = await asyncio.gather(*(self._stored(repository, t) for t in wanted))
            return [f for f in found if f is not None]

        results = await asyncio.gather(*(in_repository(r) for r in repositories))
        return [record for found in results for record in found]

    async def _stored(self, repository: str, tag: str) -> StoredRecord | None:
        async with self._limit:
            try:
                body = await self.client.raw_manifest(repository, tag, accept=OCI_MANIFEST)
            except NotFound:
                return None  # deleted meanwhile
            except (Unavailable, Forbidden, RateLimited) as e:
                log.warning("Skipping the build record %s:%s: %s", repository, tag, e)
                return None
        try:
            data = loads(body, f"a build record manifest in {repository}")
        except UpstreamError as e:
            log.warning("Skipping %s:%s: %s", repository, tag, e)
            return None
        if not isinstance(data, dict) or data.get("artifactType") != ARTIFACT_TYPE:
            return None
        annotations = data.get("annotations")
        if not isinstance(annotations, dict):
            annotations = {}
        layers = data.get("layers")
        from ..records import LOG_MEDIA_TYPE, RECORD_MEDIA_TYPE

        by_type: dict[str, dict[str, Any]] = {}
        for layer in layers if isinstance(layers, list) else []:
            checked = _layer(layer)
            if checked is not None:
                by_type.setdefault(checked["mediaType"], checked)
        if RECORD_MEDIA_TYPE not in by_type:
            return None

        def text(name: str, default: str = "") -> str:
            value = annotations.get(name, default)
            return value if isinstance(value, str) else default

        subject = data.get("subject")
        subject_digest = subject.get("digest") if isinstance(subject, dict) else None
        return StoredRecord(
            repository=repository,
            build_id=text(f"{_ANNOTATION}id", tag[len(RECORD_TAG_PREFIX) :]),
            owner=text(f"{_ANNOTATION}owner"),
            created=text(_CREATED),
            digest=_sha256(body),
            record=by_type[RECORD_MEDIA_TYPE],
            log=by_type.get(LOG_MEDIA_TYPE),
            subject=subject_digest if isinstance(subject_digest, str) else None,
        )

    async def read(self, stored: StoredRecord, *, max_log_bytes: int) -> tuple[bytes, bytes | None]:
        """(record bytes, compressed log bytes or None) of one stored record."""
        from ..records import MAX_LOG_BLOB, MAX_RECORD_BLOB

        record = _content(stored.record)
        log = _content(stored.log) if stored.log is not None else None
        if record is not None and (log is not None or stored.log is None):
            return record, log
        async with self._limit:
            if record is None:
                record = await self.client.blob(
                    stored.repository, stored.record["digest"], max_bytes=MAX_RECORD_BLOB
                )
            if stored.log is not None and log is None:
                log = await self.client.blob(
                    stored.repository,
                    stored.log["digest"],
                    max_bytes=min(MAX_LOG_BLOB, max(max_log_bytes, 1024 * 1024)),
                )
        return record, log

    # ---- deleting ----------------------------------------------------------------------------
    async def delete_for_image(self, repository: str, image_digest: str) -> int:
        """Delete the artifacts attached to an image manifest, and its fallback index.

        Returns how many artifacts went. Errors but "not found" propagate.
        """
        entries = await self._referrers(repository, image_digest)
        ours = [e for e in entries if e.get("artifactType") in (None, ARTIFACT_TYPE)]
        # another tool's referrers (a signature, an SBOM) are not ours to delete; an index of
        # thousands of entries is not one we wrote (one entry per build of this image)
        if len(ours) > MAX_REFERRERS:
            log.warning(
                "The referrers index of %s@%s lists %d artifacts; deleting the first %d",
                repository,
                image_digest,
                len(ours),
                MAX_REFERRERS,
            )
        count = 0
        for entry in ours[:MAX_REFERRERS]:
            if await self.delete_artifact(repository, entry["digest"], subject=image_digest):
                count += 1
        try:
            index_digest = await self.client.digest(repository, referrers_tag(image_digest))
        except NotFound:
            return count
        await self.client.delete_manifest(repository, index_digest)
        return count

    async def delete_artifact(
        self, repository: str, digest: str, *, subject: str | None = None
    ) -> bool:
        """Delete one record artifact (manifest, its tag, its record and log blobs); returns
        whether it was one. Anything else, e.g. an image manifest a forged referrers entry
        names, or an artifact attached to another image than ``subject``, is left alone."""
        from ..records import LOG_MEDIA_TYPE, RECORD_MEDIA_TYPE

        try:
            body = await self.client.raw_manifest(repository, digest, accept=OCI_MANIFEST)
        except NotFound:
            return False
        try:
            data = loads(body, "an artifact manifest")
        except UpstreamError:
            data = None
        attached = data.get("subject") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("artifactType") != ARTIFACT_TYPE
            or (subject is not None and (attached or {}).get("digest") != subject)
        ):
            log.warning(
                "Not deleting %s@%s: it is not a build record of this image", repository, digest
            )
            return False
        # only the record and log blobs are the artifact's own (image layers may be shared)
        layers = [
            checked["digest"]
            for checked in map(
                _layer, data.get("layers") if isinstance(data.get("layers"), list) else []
            )
            if checked is not None and checked["mediaType"] in (RECORD_MEDIA_TYPE, LOG_MEDIA_TYPE)
        ]
        await self.client.delete_manifest(repository, digest)
        for layer in layers:
            try:
                await self.client.delete_blob(repository, layer)
            except R2DError:
                pass  # a blob left behind costs space only; the garbage collector takes it
        return True
