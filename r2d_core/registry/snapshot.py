"""A listing snapshot in the registry: what a new service process starts its listing from.

A cold listing has to read every tag's manifest and image config (labels): two requests per tag,
~2,100 for 1,000 tags. Manifests and configs are content-addressed, so what the service learned
of them stays true as long as the digest: it writes it to the registry (one small OCI artifact,
gzipped JSON, artifact type :data:`SNAPSHOT_TYPE`, tag :data:`SNAPSHOT_TAG` in the repository
:func:`snapshot_repository`) after its own pushes and deletes and after listings that saw a
change (:class:`~r2d_core.catalog.ImageCatalog`), and a new process (after a restart, on a fresh
engine) reads it first. Its cold listing then costs the catalog, the tag lists, the snapshot and
one conditional request per known tag (``revalidate_batch = 0``, the default: every tag);
tags the snapshot does not know are read in full as before.

A snapshot is only a cache: tags it names that the registry does not list are not shown, a tag
that moved is caught by the conditional request, rows that are not well-formed are skipped, and
what it says of each digest (labels) is re-read in the background after the first listing
(:meth:`~r2d_core.registry.listing.Listing.verify_imported`). With ``revalidate_batch > 0`` a
moved tag may show its previous digest for up to ``ceil(tags / revalidate_batch)`` listings. A
missing, damaged or foreign snapshot is ignored (a full listing).
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from ..errors import NotFound, UpstreamError
from .client import RegistryClient
from .models import OCI_MANIFEST

__all__ = [
    "SNAPSHOT_TAG",
    "SNAPSHOT_TYPE",
    "read_snapshot",
    "snapshot_repository",
    "write_snapshot",
]

SNAPSHOT_TYPE = "application/vnd.repo2docker-service.listing.v1"
SNAPSHOT_MEDIA_TYPE = "application/vnd.repo2docker-service.listing.v1+json+gzip"
SNAPSHOT_TAG = "r2d-listing"
#: a snapshot read back, compressed and not (1,000 tags take ~40 kB compressed)
MAX_SNAPSHOT = 32 * 1024 * 1024
_EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


def snapshot_repository(prefix: str) -> str | None:
    """Where the snapshot lives: the repository named by the images' prefix without its last
    separator (``r2d-`` → ``r2d``, ``team/r2d-`` → ``team/r2d``); None without a usable prefix."""
    name = prefix.rstrip("-_./")
    return name or None


async def write_snapshot(client: RegistryClient, repository: str) -> int:
    """Store what ``client``'s listing knows; returns the number of tags written."""
    rows = client.export_listing()
    blob = gzip.compress(json.dumps(rows, separators=(",", ":")).encode(), mtime=0)
    config = await client.upload_blob(repository, b"{}")
    layer = await client.upload_blob(repository, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SNAPSHOT_TYPE,
        "config": {"mediaType": _EMPTY_MEDIA_TYPE, "digest": config, "size": 2},
        "layers": [{"mediaType": SNAPSHOT_MEDIA_TYPE, "digest": layer, "size": len(blob)}],
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    await client.put_manifest(repository, SNAPSHOT_TAG, body, OCI_MANIFEST)
    return len(rows)


async def read_snapshot(client: RegistryClient, repository: str) -> int:
    """Load the snapshot into ``client`` (see :meth:`RegistryClient.import_listing`); returns the
    number of tags taken (0 when there is none or it is unusable). Errors but "not found"
    propagate."""
    try:
        body = await client.raw_manifest(repository, SNAPSHOT_TAG, accept=OCI_MANIFEST)
    except NotFound:
        return 0
    try:
        manifest = json.loads(body)
        [layer] = manifest["layers"]
        if manifest.get("artifactType") != SNAPSHOT_TYPE:
            return 0
        digest = str(layer["digest"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return 0
    blob = await client.blob(repository, digest, max_bytes=MAX_SNAPSHOT)
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflater.decompress(blob, MAX_SNAPSHOT)
        if inflater.unconsumed_tail:
            raise UpstreamError("the listing snapshot is too large")
        rows: Any = json.loads(text)
    except (ValueError, zlib.error, RecursionError):  # RecursionError: 100 000 nested arrays
        return 0
    if not isinstance(rows, list):
        return 0
    taken = client.import_listing(rows)
    client.listing_changed = False
    return taken
