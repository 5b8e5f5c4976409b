"""The tags the service's OCI artifacts live under, which listings must not show as images.

* ``r2d-build-<build id>``: a build record with its log (:mod:`r2d_core.registry.artifacts`),
  for a build that produced an image (attached to it by ``subject``) or failed (none);
* ``sha256-<hex>``: the OCI 1.1 referrers tag-schema fallback index of an image manifest (for
  registries without the referrers API, such as distribution 2.8);
* ``r2d-listing``: the listing snapshot (:mod:`r2d_core.registry.snapshot`).

Its own module so that the registry client can filter them without importing the artifacts.
"""

from __future__ import annotations

import re

__all__ = ["RECORD_TAG_PREFIX", "is_artifact_tag", "record_tag", "referrers_tag"]

RECORD_TAG_PREFIX = "r2d-build-"
_ARTIFACT_TAG_RE = re.compile(r"^(?:r2d-build-[0-9a-f]{1,64}|sha256-[0-9a-f]{64}|r2d-listing)$")


def is_artifact_tag(tag: str) -> bool:
    """Whether ``tag`` holds one of the service's artifacts (not an image version)."""
    return bool(_ARTIFACT_TAG_RE.match(tag))


def record_tag(build_id: str) -> str:
    return f"{RECORD_TAG_PREFIX}{build_id}"


def referrers_tag(digest: str) -> str:
    """The fallback tag of ``digest``'s referrers index: ``sha256:<hex>`` → ``sha256-<hex>``."""
    return digest.replace(":", "-", 1)
