"""Validation of build requests: repository URLs, refs, names and owners.

Pure functions, shared by every adapter (the browser UI fetches the same patterns from ``GET api/``
so that the form checks exactly what the API checks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from .errors import InvalidRequest
from .urls import URLError, parse_repo_url

__all__ = [
    "DEFAULT_ALLOWED_REPO_PATTERNS",
    "NAME_PATTERN",
    "REF_PATTERN",
    "check_allowed_pattern",
    "default_name_for_repo",
    "validate_name",
    "validate_owner",
    "validate_ref",
    "validate_repo_url",
]

#: default allow-list: https to any host *name* (IP-address hosts are refused). That is safe together
#: with the network policy (``BuildManager.allowed_networks``), which refuses every name resolving to
#: a loopback, private, link-local or metadata address, checked on the address actually connected.
#: Matched against the canonical URL (lowercase host, default port dropped); written with both
#: cases so the browser form, which checks what the user typed, agrees.
DEFAULT_ALLOWED_REPO_PATTERNS = (r"^https://[A-Za-z0-9.-]*[A-Za-z][A-Za-z0-9.-]*(:[0-9]+)?(/|$)",)

#: an image's display name (also the source of its repository name, escaped)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: a branch, tag, or commit sha; git's own ref rules are stricter still (checked by ls-remote)
REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}$"

#: a label no real host has, used to build host names an attacker could own (see check_allowed_pattern)
_PROBE = "r2dprobe"
_SCHEMES = ("https", "http", "git", "ssh")
#: "github.com" in a pattern (letters/digits, not after a backslash, around an unescaped '.')
_UNESCAPED_DOT = re.compile(r"(?<![\\A-Za-z0-9])([A-Za-z0-9]+\.[A-Za-z0-9]+)")


def validate_repo_url(
    url: object, allowed_patterns: Iterable[str] = DEFAULT_ALLOWED_REPO_PATTERNS
) -> str:
    """The **canonical** form of ``url`` if it may be built, else raise :class:`InvalidRequest`.

    The URL is parsed by the one URL model (:func:`r2d_core.urls.parse_repo_url`: strict grammar,
    no userinfo but an ssh user name, no local paths, ``file://`` or remote helpers, no white space
    or control characters), rebuilt canonically, and the canonical string is matched against the
    allow-list. Callers use the returned string, never the input, for everything after this.
    """
    try:
        canonical = parse_repo_url(url).canonical
    except URLError as e:
        raise InvalidRequest(str(e), field="repo") from None
    patterns = list(allowed_patterns)
    if not any(re.search(p, canonical) for p in patterns):
        raise InvalidRequest(
            f"repo URL {canonical!r} is not allowed here; allowed URLs match: "
            f"{', '.join(patterns) or '(none)'}",
            field="repo",
            allowed_patterns=patterns,
        )
    return canonical


def _literal_runs(pattern: str) -> list[str]:
    """The literal strings a regular expression spells out (``\\.`` as ``.``), in order."""
    runs: list[str] = []
    current: list[str] = []

    def cut() -> None:
        if current:
            runs.append("".join(current))
            current.clear()

    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt.isalnum():
                cut()  # \d, \w, \A, ...: a class or an anchor
            else:
                current.append(nxt)
            i += 2
            continue
        if ch == "[":
            cut()
            i += 1
            if i < len(pattern) and pattern[i] == "]":
                i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            continue
        if ch in ".^$*+?{}()|":
            if ch in "*?{" and current:
                current.pop()  # the previous character is optional or repeated: not a literal
            cut()
        else:
            current.append(ch)
        i += 1
    cut()
    return [r for r in runs if r]


def _probes(pattern: str) -> list[str]:
    """Canonical URLs whose host an attacker could register, built from the pattern's literals."""
    candidates: list[str] = []
    for run in _literal_runs(pattern):
        if "://" in run:
            candidates += [run + f".{_PROBE}.invalid/x", run + f"{_PROBE}.invalid/x"]
            candidates.append(run + f"-{_PROBE}.invalid/x")
            continue
        for scheme in _SCHEMES:
            base = f"{scheme}://"
            candidates += [
                f"{base}{run}.{_PROBE}.invalid/x",
                f"{base}{run}{_PROBE}.invalid/x",
                f"{base}{run}-{_PROBE}.invalid/x",
                f"{base}{_PROBE}.invalid/{run}",
                f"{base}{_PROBE}.invalid/x/{run}x",
                f"{base}{_PROBE}{run}/x",
                f"{base}{_PROBE}-{run}/x",
            ]
    probes = []
    for candidate in candidates:
        try:
            url = parse_repo_url(candidate)
        except URLError:
            continue
        registrable = ".".join(url.host.split(".")[-2:])
        if _PROBE in registrable:  # a domain of the attacker's, not a subdomain of the admin's
            probes.append(url.canonical)
    return probes


def check_allowed_pattern(pattern: str) -> None:
    """Raise ``ValueError`` (saying the fix) if an allow-list ``pattern`` does not pin the host.

    A pattern either allows any host (like the default, ``^https://``: the network policy then
    keeps internal addresses out) or names hosts; then it must match no URL whose host an attacker
    could own. That is tested on URLs built from the pattern's own literal text: for
    ``^https://github\\.com`` (no ``/`` after the host), ``https://github.com.r2dprobe.invalid/x``
    matches, so the pattern is refused. The probes cannot prove a pattern safe, but every refusal
    comes with a URL the pattern really lets through.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
    for run in _literal_runs(pattern):
        if "://" not in run:
            continue
        authority = run.split("://", 1)[1].split("/", 1)[0]
        if authority != authority.lower():
            raise ValueError(
                f"{pattern!r} has upper-case letters in its host, but URLs are matched in their "
                "canonical form with a lower-case host: write the host in lower case"
            )
        for scheme, port in (("https", 443), ("http", 80), ("git", 9418), ("ssh", 22)):
            if re.search(rf"{scheme}://[^/]*:{port}(?![0-9])", run):
                raise ValueError(
                    f"{pattern!r} names port {port}, but canonical {scheme} URLs omit their "
                    f"default port: leave ':{port}' out"
                )
    dot = _UNESCAPED_DOT.search(pattern)
    if dot:
        raise ValueError(
            f"{pattern!r} has an unescaped '.' in {dot.group(1)!r}, which matches any character "
            f"(so a host like {dot.group(1).replace('.', 'x')!r} too): write '\\.'"
        )
    if any(compiled.search(f"{s}://{_PROBE}.invalid/x") for s in _SCHEMES):
        return  # allows any host on purpose
    for probe in _probes(pattern):
        if compiled.search(probe):
            anchor = "" if pattern.startswith(("^", "\\A")) else "start it with '^' and "
            raise ValueError(
                f"{pattern!r} does not pin the host: it also matches {probe!r}; {anchor}end the "
                "host with '/' (e.g. '^https://github\\.com/') or '(:[0-9]+)?/' for a port, and "
                "match a variable part of a host with '[a-z0-9-]+' rather than '.'"
            )


def validate_ref(ref: object) -> str:
    """Return ``ref`` (branch, tag, ``HEAD`` or commit sha) if well-formed."""
    if not isinstance(ref, str) or not ref:
        raise InvalidRequest("ref must be a non-empty string: a branch, tag or commit")
    if ref.startswith("-"):
        raise InvalidRequest("ref must not start with '-'")
    if (
        not re.fullmatch(REF_PATTERN, ref)
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
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
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
