"""Data the registry client returns: manifests, descriptors and images, plus the media types.

Manifests and image configs are content-addressed, so everything here is immutable (frozen
dataclasses, tuples) and safe to share between callers out of the client's digest caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import UpstreamError
from ..timestamps import parse_rfc3339
from .untrusted import loads

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "ImageConfig",
    "Manifest",
    "RegistryImage",
    "parse_created",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
_SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

#: what every manifest request accepts. Without the Docker v2 type, distribution 2.x answers the
#: old schema1 format (no config blob, no sizes); without the index types, a multi-arch tag is
#: refused or down-converted. Order does not matter to registries, but keep the modern ones first.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

#: label text one image may have (ours take a few kB, at most ~30 kB with a long appendix):
#: summaries are cached per digest, so a registry serving 4 MiB of labels per tag would
#: otherwise fill memory through the cache; above this an image has no labels (it is not ours)
MAX_LABEL_BYTES = 64 * 1024


def parse_created(value: Any) -> datetime | None:
    """Parse an RFC 3339 ``created`` time as Go writes it (nanoseconds, ``Z``) into an aware datetime.

    Extra digits are cut to microseconds (:func:`~r2d_core.timestamps.parse_rfc3339`, the same on
    Python 3.10); anything unparsable gives None rather than failing a whole listing over one odd
    image.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        created = parse_rfc3339(value.strip())
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return created


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content by digest (a layer, a config blob, or a child manifest of an index)."""

    media_type: str
    digest: str
    size: int | None = None
    #: for children of an index: {"architecture": ..., "os": ..., "variant": ...}
    platform: dict[str, str] | None = None

    @classmethod
    def from_json(cls, data: Any) -> Descriptor:
        if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
            raise UpstreamError("the registry sent a manifest with a malformed descriptor")
        size = data.get("size")
        platform = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType") or ""),
            digest=data["digest"],
            size=size if isinstance(size, int) and size >= 0 else None,
            platform={k: str(v) for k, v in platform.items() if isinstance(v, str)}
            if isinstance(platform, dict)
            else None,
        )


@dataclass(frozen=True)
class Manifest:
    """One manifest as the registry stores it: an image manifest or an index (manifest list)."""

    digest: str
    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    #: children of an index / manifest list (empty for image manifests)
    manifests: tuple[Descriptor, ...] = ()
    #: labels, created and architecture of a schema1 manifest (it has no config blob)
    schema1_config: ImageConfig | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def size(self) -> int | None:
        """Compressed size of the config and layers; None when a size is missing or for an index."""
        if self.is_index or self.config is None:
            return None
        sizes = [self.config.size, *(layer.size for layer in self.layers)]
        if any(s is None for s in sizes):
            return None
        return sum(s for s in sizes if s is not None)

    @classmethod
    def parse(cls, body: bytes, digest: str, content_type: str | None = None) -> Manifest:
        """Parse a manifest body; ``content_type`` is the response's, used when the body has none."""
        data = loads(body, "a manifest")
        if not isinstance(data, dict):
            raise UpstreamError("the registry sent a manifest that is not a JSON object")
        media_type = data.get("mediaType") or (content_type or "").split(";")[0].strip()
        if not isinstance(media_type, str):
            raise UpstreamError("the registry sent a manifest whose mediaType is not a string")
        if not media_type and data.get("schemaVersion") == 1:
            media_type = DOCKER_SCHEMA1_SIGNED
        if not media_type:
            # An OCI manifest may omit mediaType; its shape tells which it is.
            media_type = OCI_INDEX if "manifests" in data else OCI_MANIFEST
        if media_type in INDEX_MEDIA_TYPES:
            children = _list(data.get("manifests"), "manifests")
            return cls(
                digest=digest,
                media_type=media_type,
                manifests=tuple(Descriptor.from_json(c) for c in children),
            )
        if media_type in _SCHEMA1_TYPES:
            return cls(digest=digest, media_type=media_type, schema1_config=_schema1_config(data))
        config = data.get("config")
        return cls(
            digest=digest,
            media_type=media_type,
            config=Descriptor.from_json(config) if config is not None else None,
            layers=tuple(
                Descriptor.from_json(layer) for layer in _list(data.get("layers"), "layers")
            ),
        )


@dataclass(frozen=True)
class ImageConfig:
    """What the listing needs from an image config blob."""

    labels: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None
    architecture: str | None = None
    os: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> ImageConfig:
        data = loads(body, "an image config")
        if not isinstance(data, dict):
            raise UpstreamError("the registry sent an image config that is not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageConfig:
        inner = data.get("config") if isinstance(data.get("config"), dict) else {}
        labels = inner.get("Labels") if isinstance(inner.get("Labels"), dict) else {}
        arch = data.get("architecture")
        os_ = data.get("os")
        labels = {str(k): str(v) for k, v in labels.items()}
        if sum(len(k) + len(v) for k, v in labels.items()) > MAX_LABEL_BYTES:
            labels = {}
        return cls(
            labels=labels,
            created=parse_created(data.get("created")),
            architecture=arch if isinstance(arch, str) and arch else None,
            os=os_ if isinstance(os_, str) and os_ else None,
        )


def _list(value: Any, name: str) -> list[Any]:
    """A manifest's list field (absent: empty); anything but a list is a broken manifest."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UpstreamError(f"the registry sent a manifest whose {name} is not a list")
    return value


def _schema1_config(data: dict[str, Any]) -> ImageConfig | None:
    # schema1 keeps the newest layer's v1 config as a JSON string in history[0].
    history = data.get("history")
    if not isinstance(history, list) or not history:
        return None
    first = history[0].get("v1Compatibility") if isinstance(history[0], dict) else None
    try:
        v1 = loads(first, "a schema1 manifest") if isinstance(first, str) else None
    except UpstreamError:
        return None
    return ImageConfig.from_dict(v1) if isinstance(v1, dict) else None


@dataclass(frozen=True)
class RegistryImage:
    """One tag of one repository in the registry, with what its image config says."""

    repository: str
    tag: str
    #: digest of the manifest the tag points to (what :meth:`RegistryClient.delete` removes)
    digest: str
    media_type: str
    labels: dict[str, str]
    created: datetime | None
    architecture: str | None
    #: compressed size of config + layers; None if unknown (schema1, or an index with no match)
    size: int | None
    #: ``<host[:port]>/<repository>:<tag>``, what ``docker pull`` takes
    reference: str
