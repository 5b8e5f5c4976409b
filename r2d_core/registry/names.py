"""Names and digests as the distribution API spells them: checked before any request."""

from __future__ import annotations

import hashlib
import re

from ..errors import InvalidRequest

__all__ = ["_check_reference", "_check_repository", "_is_digest", "_sha256"]

# distribution/reference grammar for the path of a repository, and tags/digests
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")


def _check_repository(repository: str) -> str:
    if not _REPOSITORY_RE.match(repository) or len(repository) > 255:
        raise InvalidRequest(f"{repository!r} is not a valid repository name", field="repository")
    return repository


def _check_reference(reference: str) -> str:
    if not (_TAG_RE.match(reference) or _DIGEST_RE.match(reference)):
        raise InvalidRequest(f"{reference!r} is not a valid tag or digest", field="tag")
    return reference


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()
