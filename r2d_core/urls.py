"""The one model of a repository URL: parse strictly, rebuild canonically, use only the canonical form.

Standard library only, and no import from the rest of ``r2d_core``: this file is also copied into
build containers and run there by a bare ``python3`` (the fetch stage), so both sides parse a URL
the same way.

Stable API (other modules and the fetch script rely on it)::

    url = parse_repo_url("HTTPS://GitHub.com:443/org//repo.git/")   # raises URLError
    url.scheme, url.host, url.port, url.path, url.user
    # -> "https", "github.com", None, "/org/repo.git", None
    str(url) == url.canonical == "https://github.com/org/repo.git"
    url.origin == "https://github.com"
    url.effective_port == 443            # the port to connect to (default of the scheme if None)
    url.host_is_ip                       # True for "127.0.0.1", "::1" (``host`` has no brackets)

The grammar (a deliberately small subset of RFC 3986 that git understands the same way):

* ``scheme://authority/path`` with scheme ``https``, ``http``, ``git`` or ``ssh`` (case-insensitive,
  lowercased). scp-like ``user@host:path`` is **not** accepted: its grammar is ambiguous (git decides
  by looking for a colon before the first slash), it has no port and its path is relative to the
  remote home directory, so there is no faithful canonical ``ssh://`` form; the error names the
  ``ssh://`` URL to write instead.
* No query, no fragment, no backslash, no white space or control character anywhere.
* Userinfo is refused for ``https``, ``http`` and ``git`` (credentials travel in the request's
  ``credentials`` field, never in the URL). ``ssh`` accepts a plain user name ``[A-Za-z0-9._-]+``
  (not starting with ``-``) and no password.
* Host: a DNS name of LDH labels (lowercased; each 1-63 characters, 253 in all, no trailing dot),
  a dotted-quad IPv4 address (decimal, no leading zeros: the octal/hex/short forms that
  ``inet_aton`` accepts, like ``0177.1`` or ``2130706433``, are refused because they hide the
  address), or an IPv6 literal in brackets (compressed canonical form; no zone id, no IPvFuture).
  A non-ASCII name is IDNA-encoded with the standard library codec (IDNA 2003) **only when** the
  encoding is exact: decoding the ``xn--`` form must give back the name as written (lowercased,
  NFC). Names where IDNA 2003 and 2008 disagree (``ß``, ``ς``, joiners) or that nameprep would
  rewrite are refused with a message asking for the ``xn--`` form, so the host we check is the host
  the user meant and the one git connects to.
* Port: 1-65535; the scheme's default port is dropped (``https://h:443/`` is ``https://h/``).
* Path: percent-encoding canonical (unreserved characters decoded, everything else outside
  ``A-Za-z0-9-._~/:@+,=`` encoded with upper-case hex, non-ASCII as UTF-8), duplicate slashes
  collapsed, ``.`` segments dropped, ``..`` segments (also encoded, ``%2e%2e``) refused, a trailing
  slash dropped, ``%2F`` kept encoded. Percent-encoded control characters (``%00``-``%1F``,
  ``%7F``, C1 controls) are refused. An empty path is ``/``.

Consequences every caller may rely on: a canonical URL is printable ASCII, contains none of
``" \\ [ ] ; # ? ' $ ` < > { } |`` nor white space except the brackets of an IPv6 host, and
``parse_repo_url(str(url)) == url``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["DEFAULT_PORTS", "MAX_URL_LENGTH", "SCHEMES", "RepoURL", "URLError", "parse_repo_url"]

#: the schemes a repository URL may use, and the port each connects to by default
DEFAULT_PORTS = {"https": 443, "http": 80, "git": 9418, "ssh": 22}
SCHEMES = tuple(DEFAULT_PORTS)
#: longer URLs are refused (no git host needs more)
MAX_URL_LENGTH = 2048

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE_RE = re.compile(r"^(?:([A-Za-z0-9._-]+)@)?([A-Za-z0-9.-]+):(?!//)(.*)$")
_SSH_USER_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NUMERIC_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_PCT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
#: characters kept literally in a canonical path (all others are percent-encoded)
_PATH_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@+,=")
#: ASCII characters that may appear literally in an input path (RFC 3986 pchar, "/" and "%")
_PATH_INPUT_ASCII = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@!$&'()*+,;=%"
)


class URLError(ValueError):
    """A repository URL was refused; ``str(error)`` tells the user what to write instead."""


@dataclass(frozen=True)
class RepoURL:
    """A parsed, canonical repository URL. Build it with :func:`parse_repo_url` only.

    ``host`` is lowercase ASCII (IDNA ``xn--`` form for international names), an IPv4 address, or
    an IPv6 address *without* brackets. ``port`` is None for the scheme's default port. ``path``
    starts with ``/``. ``user`` is only ever set for ``ssh``.
    """

    scheme: str
    host: str
    port: int | None
    path: str
    user: str | None = None

    @property
    def host_is_ip(self) -> bool:
        return _ip_or_none(self.host) is not None

    @property
    def effective_port(self) -> int:
        """The TCP port to connect to."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.scheme]

    @property
    def netloc_host(self) -> str:
        """The host as written in a URL (IPv6 in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, without user name or path."""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.netloc_host}{port}"

    @property
    def canonical(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{user}{self.netloc_host}{port}{self.path}"

    def __str__(self) -> str:
        return self.canonical


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_repo_url(text: object) -> RepoURL:
    """Parse ``text`` with the strict grammar above; raise :class:`URLError` saying why not."""
    if not isinstance(text, str) or not text:
        raise URLError("repo must be a non-empty string: the URL of a git repository")
    if len(text) > MAX_URL_LENGTH:
        raise URLError(f"repo URL is longer than {MAX_URL_LENGTH} characters")
    for ch in text:
        if ch.isspace() or unicodedata.category(ch)[0] in "CZ":
            raise URLError("repo URL must not contain spaces or control characters")
    if "\\" in text:
        raise URLError("repo URL must not contain a backslash; use '/'")
    match = _SCHEME_RE.match(text)
    if match is None:
        _refuse_schemeless(text)
    scheme = match.group(1).lower()
    if scheme == "file":
        _refuse_schemeless("file:")
    if scheme not in DEFAULT_PORTS:
        hint = ""
        if scheme in ("git+ssh", "ssh+git"):
            hint = " (write ssh:// instead)"
        raise URLError(
            f"repo URL scheme {scheme!r} is not supported{hint}; use one of {', '.join(SCHEMES)}"
        )
    rest = text[match.end() :]
    if "?" in rest or "#" in rest:
        raise URLError("repo URL must not have a query ('?') or fragment ('#'): a git URL has none")
    slash = rest.find("/")
    authority, raw_path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    user, hostport = _split_userinfo(scheme, authority)
    host, port = _parse_hostport(hostport, scheme)
    path = _canonical_path(raw_path)
    return RepoURL(scheme=scheme, host=host, port=port, path=path, user=user)


def _refuse_schemeless(text: str) -> None:
    if text.startswith(("/", ".", "~")) or text.lower().startswith("file:"):
        raise URLError(
            "repo must be a remote URL (e.g. https://github.com/org/repo); local paths and "
            "file:// are not allowed"
        )
    if "::" in text:
        raise URLError("git remote helpers such as 'ext::' are not allowed as repo URLs")
    scheme = text.split(":", 1)[0].lower()
    if scheme in DEFAULT_PORTS and ":" in text:
        raise URLError(f"repo URL must start with '{scheme}://' (two slashes), then the host")
    scp = _SCP_LIKE_RE.match(text)
    if scp and scp.group(2) and not text.startswith("-"):
        user = f"{scp.group(1)}@" if scp.group(1) else ""
        path = scp.group(3).lstrip("/")
        raise URLError(
            f"scp-like URLs are not supported; write ssh://{user}{scp.group(2)}/{path} "
            "(the path is absolute there; use /~/path for one relative to the home directory)"
        )
    raise URLError(
        "repo must be a URL such as https://github.com/org/repo (schemes: "
        + ", ".join(SCHEMES)
        + ")"
    )


def _split_userinfo(scheme: str, authority: str) -> tuple[str | None, str]:
    if "@" not in authority:
        return None, authority
    if scheme != "ssh":
        raise URLError(
            "do not put a user name or password in the repo URL; send them in the "
            "'credentials' field instead"
        )
    user, _, hostport = authority.rpartition("@")
    if ":" in user:
        raise URLError("do not put a password in an ssh repo URL; only a user name is allowed")
    if not _SSH_USER_RE.match(user):
        raise URLError(
            "the user name of an ssh repo URL may only contain letters, digits, '.', '_' and '-' "
            "(not starting with '-')"
        )
    return user, hostport


def _parse_hostport(hostport: str, scheme: str) -> tuple[str, int | None]:
    port_text: str | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise URLError("repo URL has an unclosed '[' in its host")
        host = _parse_ipv6(hostport[1:end])
        tail = hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise URLError("repo URL has characters after the ']' of its IPv6 host")
            port_text = tail[1:]
    else:
        if "[" in hostport or "]" in hostport:
            raise URLError("'[' and ']' are only allowed around an IPv6 address in a repo URL")
        host_text, sep, port_text_ = hostport.partition(":")
        port_text = port_text_ if sep else None
        host = _parse_reg_host(host_text)
    port = _parse_port(port_text, scheme)
    return host, port


def _parse_ipv6(text: str) -> str:
    if text[:1] in ("v", "V"):
        raise URLError("IPvFuture addresses ('[v1.x]') are not supported in repo URLs")
    if "%" in text:
        raise URLError("IPv6 zone identifiers ('%25eth0') are not allowed in repo URLs")
    if not text or any(c not in "0123456789abcdefABCDEF:." for c in text):
        raise URLError(f"repo URL host [{text}] is not a valid IPv6 address")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise URLError(f"repo URL host [{text}] is not a valid IPv6 address") from None
    return address.compressed


def _parse_reg_host(text: str) -> str:
    if not text:
        raise URLError("repo URL has no host")
    if "%" in text:
        raise URLError("repo URL host must not be percent-encoded")
    if not text.isascii():
        text = _idna_encode(text)
    host = text.lower()
    if host.endswith("."):
        raise URLError(f"repo URL host {host!r} must not end with '.'")
    labels = host.split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        # what the resolver would read as an IPv4 address: only the plain dotted quad is accepted
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise URLError(
                f"repo URL host {host!r} is not a valid IPv4 address (write four decimal numbers "
                "without leading zeros, e.g. 192.0.2.1)"
            ) from None
    if len(host) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise URLError(
            f"repo URL host {host!r} is not a valid host name (letters, digits and '-' in "
            "dot-separated labels of at most 63 characters)"
        )
    return host


def _idna_encode(text: str) -> str:
    wanted = unicodedata.normalize("NFC", text).lower()
    labels = []
    for label in wanted.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            encoded = label.encode("idna").decode("ascii")
            back = encoded.encode("ascii").decode("idna")
        except UnicodeError:
            encoded, back = "", None
        if back != label or not encoded:
            raise URLError(
                f"repo URL host label {label!r} has no exact IDNA form here; write the host in "
                "its ASCII 'xn--' form"
            )
        labels.append(encoded)
    return ".".join(labels)


def _parse_port(text: str | None, scheme: str) -> int | None:
    if text is None:
        return None
    if not text or not text.isascii() or not text.isdigit() or len(text) > 5:
        raise URLError("repo URL port must be a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise URLError("repo URL port must be a number from 1 to 65535")
    return None if port == DEFAULT_PORTS[scheme] else port


def _decode_segment(segment: str) -> bytes:
    """A path segment's bytes, with percent-escapes decoded and literal characters in UTF-8."""
    out = bytearray()
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "%":
            pct = _PCT_RE.match(segment, i)
            if pct is None:
                raise URLError("repo URL has a '%' that is not followed by two hex digits")
            out.append(int(pct.group(1), 16))
            i += 3
            continue
        if ch.isascii() and ch not in _PATH_INPUT_ASCII:
            raise URLError(f"repo URL path must not contain {ch!r} (percent-encode it)")
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)


def _check_decoded(raw: bytes) -> None:
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise URLError("repo URL path must not contain encoded control characters")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # kept percent-encoded; no character to judge
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise URLError("repo URL path must not contain encoded control characters")


def _encode_segment(raw: bytes) -> str:
    return "".join(chr(b) if chr(b) in _PATH_SAFE and b != 0x2F else f"%{b:02X}" for b in raw)


def _canonical_path(raw_path: str) -> str:
    segments = []
    for segment in raw_path.split("/"):
        raw = _decode_segment(segment)
        _check_decoded(raw)
        if raw == b"..":
            raise URLError("repo URL path must not contain '..' segments")
        if raw in (b"", b"."):
            continue  # duplicate slash, trailing slash or "." segment
        segments.append(_encode_segment(raw))
    return "/" + "/".join(segments)
