"""Data model of builds and images, and the pure translations to and from Docker labels."""

from __future__ import annotations

import enum
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .logs import LogBuffer
from .options import (
    ANNOTATION_KEYS_LABEL,
    ANNOTATION_LABEL_PREFIX,
    annotations_from_labels,
    options_digest,
    options_from_labels,
)
from .timestamps import parse_rfc3339

__all__ = [
    "ACTIVE_STATES",
    "DONE_STATES",
    "LABEL_PREFIX",
    "Build",
    "BuildState",
    "Credentials",
    "ImageGroup",
    "ImageVersion",
    "SubmitResult",
    "build_labels",
    "iso",
    "label_options",
    "new_build_id",
    "parse_labels",
    "short_error",
]

#: every label repo2docker-service sets starts with this
LABEL_PREFIX = "repo2docker-service."


class BuildState(str, enum.Enum):
    QUEUED = "queued"
    FETCHING = "fetching"
    BUILDING = "building"
    PUSHING = "pushing"
    BUILT = "built"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = frozenset(
    {BuildState.QUEUED, BuildState.FETCHING, BuildState.BUILDING, BuildState.PUSHING}
)
DONE_STATES = frozenset({BuildState.BUILT, BuildState.FAILED, BuildState.CANCELLED})


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, as JavaScript's ``Date`` parses it."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        # Docker gives nanoseconds, trailing zeros dropped ("2026-11-26T07:00:00.1234Z")
        return parse_rfc3339(value).timestamp()
    except ValueError:
        return None


_COMMAND_FAILED = re.compile(
    r"Command '\[['\"]([^'\"]+)['\"], ['\"]([^'\"]+)['\"].*returned non-zero exit status (\d+)",
    re.S,
)


def short_error(message: str) -> str:
    """repo2docker's failure line without the whole buildx command line it quotes (labels,
    build args, paths): what a person needs is which program failed and how."""
    match = _COMMAND_FAILED.search(message)
    if match:
        program, sub, status = match.groups()
        return f"{program.rsplit('/', 1)[-1]} {sub} failed with exit status {status}"
    return message.strip()[:500]


def _shorten(line: str) -> str:
    return short_error(line) if _COMMAND_FAILED.search(line) else line


def new_build_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Credentials:
    """Credentials for a private git repository. Never logged: ``repr`` hides the password."""

    username: str
    password: str = field(repr=False)


@dataclass
class Build:
    """One build, from queued to done."""

    id: str
    owner: str
    name: str
    repo: str
    ref: str
    sha: str
    image: str
    push: bool = False
    requested_by: str = ""
    state: BuildState = BuildState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    failed_step: str | None = None
    push_error: str | None = None
    exit_code: int | None = None
    #: set when a build was recovered from a build container after a restart
    recovered: bool = False
    log: LogBuffer = field(default_factory=LogBuffer, repr=False)
    credentials: Credentials | None = field(default=None, repr=False)
    cancel_requested: bool = False
    #: only push an image that was built already (retrying a failed push)
    push_only: bool = False
    #: a forced rebuild: the image id the tag pointed at before, restored if the build fails
    previous_image_id: str | None = field(default=None, repr=False)
    #: False once the image was deleted during a forced rebuild: the backup is not put back
    restore_previous: bool = field(default=True, repr=False)
    #: why the service stopped the build (a time limit), shown as its error
    stop_reason: str | None = None
    #: ``time.monotonic()`` of the build's last output (for the inactivity limit)
    last_output: float = field(default_factory=time.monotonic, repr=False)
    #: why the build's record and log are not (yet) in the registry (r2d_core.archive)
    record_error: str | None = None
    #: the effective repo2docker options (admin defaults + the request's; see r2d_core.options)
    options: dict[str, Any] = field(default_factory=dict)
    #: the build's annotations (never interpreted; stored as image labels)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in DONE_STATES

    @property
    def repository(self) -> str:
        return self.image.rsplit(":", 1)[0]

    def to_dict(self, *, queue_position: int | None = None, last_lines: int = 20) -> dict[str, Any]:
        failed = self.state == BuildState.FAILED
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "display_name": self.name,
            "repo": self.repo,
            "ref": self.ref,
            "sha": self.sha,
            "image": self.image,
            "state": self.state.value,
            "done": self.done,
            "push": self.push,
            "push_error": self.push_error,
            "push_only": self.push_only,
            "created": iso(self.created),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "queue_position": queue_position,
            "error": self.error,
            "failed_step": self.failed_step,
            "last_lines": [_shorten(line) for line in self.log.tail(last_lines)] if failed else [],
            "log_lines": self.log.total,
            # the whole log's size and what the kept log omits (see r2d_core/logs.py)
            "log": self.log.summary(),
            "requested_by": self.requested_by,
            "recovered": self.recovered,
            "record_error": self.record_error,
            "options": dict(self.options),
            "options_digest": options_digest(self.options) or None,
            "annotations": dict(self.annotations),
        }


@dataclass
class SubmitResult:
    """What :meth:`BuildManager.submit` did: queued a build, joined one, or skipped."""

    build: Build | None = None
    image: ImageGroup | None = None
    joined: bool = False
    #: the image reference this request names (also when skipped: the group's newest version
    #: may be another commit)
    reference: str | None = None

    @property
    def skipped(self) -> bool:
        return self.build is None


@dataclass
class ImageVersion:
    """One built commit of an image: one tag, local and/or in the registry."""

    reference: str
    owner: str
    name: str
    repo: str
    ref: str
    sha: str
    created: float | None
    size: int | None
    build_id: str | None = None
    local: bool = False
    pushed: bool = False
    image_id: str | None = None
    digest: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return self.reference.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.reference.rsplit(":", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "image": self.reference,
            "ref": self.ref,
            "sha": self.sha,
            "created": iso(self.created),
            "size": self.size,
            "local": self.local,
            "pushed": self.pushed,
            "build_id": self.build_id,
            "options": dict(self.options),
            "options_digest": options_digest(self.options) or None,
            "annotations": dict(self.annotations),
        }


@dataclass
class ImageGroup:
    """All built versions of one (owner, name): one image repository."""

    owner: str
    name: str
    repository: str
    versions: list[ImageVersion]
    _dict: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def newest(self) -> ImageVersion:
        return self.versions[0]

    def to_dict(self) -> dict[str, Any]:
        # built once: an index's groups and versions are not changed after a refresh publishes
        # them (a refresh makes new ones), and listings serialize them on every request
        if self._dict is None:
            self._dict = self._make_dict()
        return dict(self._dict)

    def _make_dict(self) -> dict[str, Any]:
        newest = self.newest
        return {
            "owner": self.owner,
            "name": self.name,
            "display_name": self.name,
            "repository": self.repository,
            "image": newest.reference,
            "repo": newest.repo,
            "ref": newest.ref,
            "sha": newest.sha,
            "created": iso(newest.created),
            "size": newest.size,
            "local": any(v.local for v in self.versions),
            "pushed": any(v.pushed for v in self.versions),
            # the newest version's (each version lists its own)
            "options": dict(newest.options),
            "annotations": dict(newest.annotations),
            "versions": [v.to_dict() for v in self.versions],
        }


_LABEL_FIELDS = ("owner", "name", "repo", "ref", "sha", "build-id", "requested-by", "image", "push")


def build_labels(build: Build, kind: str) -> dict[str, str]:
    """Labels for the image (``kind="image"``) or the build container (``kind="build"``)."""
    labels = {
        "owner": build.owner,
        "name": build.name,
        "repo": build.repo,
        "ref": build.ref,
        "sha": build.sha,
        "build-id": build.id,
        "requested-by": build.requested_by,
        "created": iso(build.created) or "",
    }
    # The repository's Dockerfile may have LABEL lines under our prefix too; a --label of ours
    # overrides only its own key. So these are set for every build, empty for none: a LABEL
    # "options" would make the image's name disagree with its labels (hidden from the index and
    # from the owner's quota), and the annotation keys say which annotation labels are the
    # request's (any other is the repository's and ignored: options.annotations_from_labels).
    # canonical JSON (the digest is computed from it again when the label is read)
    labels["options"] = (
        json.dumps(build.options, sort_keys=True, separators=(",", ":")) if build.options else ""
    )
    labels["options-digest"] = options_digest(build.options)
    labels[ANNOTATION_KEYS_LABEL] = json.dumps(sorted(build.annotations), separators=(",", ":"))
    for key, value in build.annotations.items():
        labels[f"{ANNOTATION_LABEL_PREFIX}{key}"] = value
    if kind == "build":
        labels["image"] = build.image
        labels["push"] = "1" if build.push else "0"
    return {f"{LABEL_PREFIX}{key}": value for key, value in labels.items()}


def parse_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    """Our fields from a Docker label dict, or None if the object is not ours (no owner/sha)."""
    if not labels:
        return None
    fields = {
        key[len(LABEL_PREFIX) :]: value
        for key, value in labels.items()
        if key.startswith(LABEL_PREFIX)
    }
    if not fields.get("owner") or not fields.get("sha") or not fields.get("name"):
        return None
    return fields


def label_options(fields: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The (options, annotations) that :func:`parse_labels` fields record."""
    return options_from_labels(fields), annotations_from_labels(fields)
