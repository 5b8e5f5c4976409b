"""Validation of build requests: repository URLs, refs, names and owners.

Pure functions, shared by every adapter (the browser UI fetches the same patterns from ``GET api/``
so that the form checks exactly what the API checks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from .errors import InvalidRequest

__all__ = [
    "DEFAULT_ALLOWED_REPO_PATTERNS",
    "NAME_PATTERN",
    "REF_PATTERN",
    "default_name_for_repo",
    "validate_name",
    "validate_owner",
    "validate_ref",
    "validate_repo_url",
]

#: default allow-list: public https URLs only
DEFAULT_ALLOWED_REPO_PATTERNS = (r"^https://",)

#: an image's display name (also the source of its repository name, escaped)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: a branch, tag, or commit sha; git's own ref rules are stricter still (checked by ls-remote)
REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}$"

_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f]")
_SCHEMES = ("https", "http", "git", "ssh")


def validate_repo_url(
    url: object, allowed_patterns: Iterable[str] = DEFAULT_ALLOWED_REPO_PATTERNS
) -> str:
    """Return ``url`` if it may be built, else raise :class:`InvalidRequest` saying why.

    Whatever the allow-list says, local paths, ``file://``, git's ``ext::``/``fd::`` transports,
    anything starting with ``-`` (option injection into git or repo2docker), white space, control
    characters and passwords embedded in the URL are refused: none of them is a remote repository,
    and each has been used to read the server's files or run commands.
    """
    if not isinstance(url, str) or not url:
        raise InvalidRequest("repo must be a non-empty string: the URL of a git repository")
    if len(url) > 2048:
        raise InvalidRequest("repo URL is longer than 2048 characters")
    if _CONTROL_OR_SPACE.search(url):
        raise InvalidRequest("repo URL must not contain spaces or control characters")
    if url.startswith("-"):
        raise InvalidRequest("repo URL must not start with '-'")
    if "::" in url.split("/", 1)[0] or url.lower().startswith(("ext::", "fd::")):
        raise InvalidRequest("git remote helpers such as 'ext::' are not allowed as repo URLs")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file" or not scheme or url.startswith(("/", ".", "~")):
        raise InvalidRequest(
            "repo must be a remote URL (e.g. https://github.com/org/repo); local paths and file:// are not allowed"
        )
    if scheme not in _SCHEMES:
        raise InvalidRequest(
            f"repo URL scheme {scheme!r} is not supported; use one of {', '.join(_SCHEMES)}"
        )
    if not parts.hostname:
        raise InvalidRequest("repo URL has no host")
    if parts.password is not None:
        raise InvalidRequest(
            "do not put a password in the repo URL; send it in the 'credentials' field instead"
        )
    patterns = list(allowed_patterns)
    if not any(re.search(p, url) for p in patterns):
        raise InvalidRequest(
            f"repo URL {url!r} is not allowed here; allowed URLs match: {', '.join(patterns) or '(none)'}",
            allowed_patterns=patterns,
        )
    return url


def validate_ref(ref: object) -> str:
    """Return ``ref`` (branch, tag, ``HEAD`` or commit sha) if well-formed."""
    if not isinstance(ref, str) or not ref:
        raise InvalidRequest("ref must be a non-empty string: a branch, tag or commit")
    if ref.startswith("-"):
        raise InvalidRequest("ref must not start with '-'")
    if (
        not re.match(REF_PATTERN, ref)
        or ".." in ref
        or "@{" in ref
        or "//" in ref
        or ref.endswith((".lock", "/", "."))
    ):
        raise InvalidRequest(
            f"ref {ref!r} is not a valid git branch, tag or commit (letters, digits, '._/+-', max 255)"
        )
    return ref


def validate_name(name: object) -> str:
    """Return the image display ``name`` if it follows :data:`NAME_PATTERN`."""
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise InvalidRequest(
            f"name {name!r} is not valid: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def validate_owner(owner: object) -> str:
    """Return ``owner`` (a JupyterHub user name) if usable as an image namespace."""
    if not isinstance(owner, str) or not owner or len(owner) > 255:
        raise InvalidRequest("owner must be a JupyterHub user name of 1-255 characters")
    if re.search(r"[\x00-\x1f\x7f/]", owner):
        raise InvalidRequest("owner must not contain '/' or control characters")
    return owner


def default_name_for_repo(url: str) -> str:
    """A display name derived from the repository URL (``.../org/my-repo.git`` → ``my-repo``)."""
    path = urlsplit(url).path.rstrip("/")
    last = path.rsplit("/", 1)[-1].removesuffix(".git") or "image"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", last).lstrip("._-")[:64] or "image"
    return cleaned
