"""git for the fetch stage: one repository and its submodules, held to the allow-list and the
network policy on every URL (standard library only, like :mod:`r2d_core.fetch`, which runs it).

How git runs (see :func:`git_environment`):

* no system or global git configuration, no hooks, no templates, no prompts; configuration comes
  only from ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` in the environment of
  each git child process, whose keys are constants (or, for the credential header, built from the
  canonical URL model) and are never parsed as gitconfig text: a key's section is what precedes
  its first dot (always ``http``) and its name what follows the last (always ``extraHeader``);
* ``GIT_ALLOW_PROTOCOL`` is the one scheme of the URL that git process fetches (never ``file``,
  ``ext`` or ``fd``), ``protocol.file.allow=never``, ``http.followRedirects=false``;
* address pinning: the host is resolved here, every address is checked with
  :class:`~r2d_core.netpolicy.NetPolicy`, and git connects only to the checked addresses
  (``http.curloptResolve`` for http(s); the address itself in the URL for ``git://`` and
  ``ssh://``), so a DNS answer that changes between the check and the connection (rebinding)
  changes nothing;
* submodules: every URL in ``.gitmodules`` (relative ones resolved against their parent's
  canonical URL) is parsed with the URL model and held to the same allow-list and address rule,
  nested ones too (at most :data:`MAX_SUBMODULE_DEPTH` levels, :data:`MAX_SUBMODULES` in all),
  each cloned by its own git process; a refused one fails the build with a message naming it;
* bounded: one deadline for the whole stage (``timeout``), one byte budget for all object stores
  (``max_bytes``), git's output kept to :data:`MAX_GIT_OUTPUT`; run as root (the build
  container), git runs as ``git_uid`` (65534) in directories it owns, away from the engine socket.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .netpolicy import NetPolicy, NetPolicyError
from .urls import RepoURL, URLError, parse_repo_url

__all__ = [
    "MAX_GIT_OUTPUT",
    "MAX_SUBMODULES",
    "MAX_SUBMODULE_DEPTH",
    "Credentials",
    "FetchError",
    "Fetcher",
    "check_links",
    "connect_url",
    "emit",
    "git_environment",
    "header_key",
    "resolve_submodule_url",
    "tree_bytes",
]

#: submodules nested deeper than this fail the build
MAX_SUBMODULE_DEPTH = 5
#: at most this many submodules (all levels together) per build
MAX_SUBMODULES = 64
#: lines of git's error output kept in a failure message
_TAIL_LINES = 8
#: the most bytes of one git command's output kept (stdout: head, stderr: tail)
MAX_GIT_OUTPUT = 16 * 1024 * 1024

_FULL_SHA = re.compile(r"^[0-9a-f]{40}\Z")  # \Z: "$" also matches before a final newline
#: options of every git process; constants only (nothing a user sends becomes a key)
_GIT_CONFIG: tuple[tuple[str, str], ...] = (
    ("protocol.file.allow", "never"),
    ("protocol.ext.allow", "never"),
    ("http.followRedirects", "false"),
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("core.askPass", ""),
    ("credential.helper", ""),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("advice.detachedHead", "false"),
    ("init.defaultBranch", "main"),
    # a server that stalls below 1 kB/s for a minute is given up on (the total time is bounded too)
    ("http.lowSpeedLimit", "1000"),
    ("http.lowSpeedTime", "60"),
)


class FetchError(Exception):
    """The fetch failed; the message says why (shown to the user as the build's error)."""


class _Drain:
    """Read a pipe to its end in a thread, keeping at most ``limit`` bytes (head or tail)."""

    def __init__(self, pipe: Any, limit: int, keep: str) -> None:
        self.pipe = pipe
        self.limit = limit
        self.keep = keep
        self.data = bytearray()
        self.overflow = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.pipe:
            for chunk in iter(lambda: self.pipe.read(1 << 16), b""):
                if self.keep == "head":
                    room = self.limit - len(self.data)
                    if len(chunk) > room:
                        self.overflow = True
                    self.data += chunk[: max(room, 0)]
                else:
                    self.data += chunk
                    if len(self.data) > self.limit:
                        del self.data[: len(self.data) - self.limit]

    def join(self) -> None:
        self.thread.join()

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Authorization: Basic {token}"  # base64: no line break or quote can get in


def emit(phase: str, message: str) -> None:
    """One log line in repo2docker's ``--json-logs`` format."""
    sys.stdout.write(json.dumps({"phase": phase, "message": message + "\n"}) + "\n")
    sys.stdout.flush()


def _host_literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def header_key(url: RepoURL) -> str:
    """The git configuration key that scopes the credential header to ``url`` (canonical only)."""
    return f"http.{url}.extraHeader"


def git_environment(
    url: RepoURL | None,
    home: str,
    addresses: list[str] | None = None,
    credentials: Credentials | None = None,
) -> dict[str, str]:
    """The whole environment of a git process that fetches ``url`` (nothing inherited but PATH);
    ``url=None``: a git process that must not talk to any server.

    ``addresses``: the checked addresses git may connect to (http(s): pinned with
    ``http.curloptResolve``). ``credentials``: sent as a header to ``url`` only.
    """
    env = {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_SYSTEM": os.devnull,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TEMPLATE_DIR": "",  # no hooks copied into the clone
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        # only the one scheme this process fetches ("none" names no transport: all refused)
        "GIT_ALLOW_PROTOCOL": url.scheme if url is not None else "none",
        "GIT_PROTOCOL_FROM_USER": "0",
        # a constant line: the host key cannot be known in a fresh build, so accept the first one
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
    }
    pairs = list(_GIT_CONFIG)
    # an IP literal is itself the checked address (and curl cannot parse an IPv6 one there)
    if url is not None and addresses and url.scheme in ("http", "https") and not url.host_is_ip:
        host = url.host
        port = url.effective_port
        pairs.append(
            ("http.curloptResolve", f"{host}:{port}:{','.join(map(_host_literal, addresses))}")
        )
    if url is not None and credentials is not None:
        pairs.append((header_key(url), credentials.header()))
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def connect_url(url: RepoURL, addresses: list[str]) -> str:
    """The URL git is given: the canonical one for http(s) (pinned by ``curloptResolve``, so
    ``Host``, TLS name checks and the credential scope stay right); for ``git://`` and ``ssh://``
    the checked address itself takes the host's place."""
    text = str(url)
    if url.scheme in ("http", "https") or not addresses:
        return text
    user = f"{url.user}@" if url.user else ""
    return f"{url.scheme}://{user}{_host_literal(addresses[0])}:{url.effective_port}{url.path}"


def resolve_submodule_url(text: str, parent: RepoURL) -> str:
    """A ``.gitmodules`` URL as git reads it: ``./x`` and ``../x`` relative to the parent's
    canonical URL (each ``../`` drops one path segment), anything else as written."""
    if not text.startswith(("./", "../")):
        return text
    path = str(parent)[len(parent.origin) :].rstrip("/")
    rest = text
    while True:
        if rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("../"):
            rest = rest[3:]
            path = path.rsplit("/", 1)[0] if "/" in path else ""
        else:
            break
    return f"{parent.origin}{path}/{rest}"


@dataclass
class Fetcher:
    """Fetch one repository (and its submodules) into ``dest``, held to the allow-list and the
    network policy on every URL."""

    allowed_patterns: list[str]
    policy: NetPolicy
    home: str
    submodules: bool = True
    deadline: float = float("inf")
    credentials: Credentials | None = None
    #: the origin the credentials belong to (the repository's)
    credentials_origin: str | None = None
    #: run git as this uid/gid (the process is root): git, which parses what remote servers
    #: send, then cannot use what root can (the engine socket of a build container)
    uid: int | None = None
    #: the most bytes all clones together may write into their git object stores
    max_bytes: int | None = None
    _count: int = 0
    _used: int = 0

    # -- checks ----------------------------------------------------------------------------------
    def check(self, text: str, what: str) -> RepoURL:
        """Parse and check ``text``: URL model, allow-list; raise :class:`FetchError` naming
        ``what`` if refused."""
        try:
            url = parse_repo_url(text)
        except URLError as e:
            raise FetchError(f"{what}: {e}") from None
        canonical = str(url)
        if not any(re.search(p, canonical) for p in self.allowed_patterns):
            raise FetchError(
                f"{what}: {canonical} is not allowed here (allowed URLs match: "
                f"{', '.join(self.allowed_patterns) or '(none)'})"
            )
        return url

    def addresses(self, url: RepoURL, what: str) -> list[str]:
        """The host's addresses, every one checked with the network policy."""
        try:
            found = self.policy.resolve_checked_sync(url.host, url.effective_port)
        except NetPolicyError as e:  # refused, or no answer: the message names the host only
            raise FetchError(f"{what}: {e}") from None
        addresses = [str(a) for a in found]
        if not addresses:
            raise FetchError(f"{what}: {url.host} has no address")
        return addresses

    # -- git -------------------------------------------------------------------------------------
    def git(
        self,
        args: list[str],
        env: dict[str, str],
        what: str,
        cwd: str | None = None,
        watch: str | None = None,
    ) -> str:
        """Run git; ``watch``: a repository whose object store counts against :attr:`max_bytes`
        while git downloads into it (git is stopped when the budget is spent)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"{what}: the fetch took too long")
        drop: dict[str, Any] = {}
        if self.uid is not None:
            drop = {"user": self.uid, "group": self.uid, "extra_groups": []}
        try:
            # git from PATH (the image's or the service's own), argv only, no shell; every
            # value is a constant or comes from the URL model and our own spec
            proc = subprocess.Popen(  # nosec B603 B607
                ["git", *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                **drop,
            )
        except OSError as e:
            raise FetchError(f"{what}: cannot run git: {e}") from None
        # a hostile server can make git print without end ("remote:" lines): keep a bounded
        # head of stdout (only local commands print there) and the tail of stderr
        out = _Drain(proc.stdout, MAX_GIT_OUTPUT, keep="head")
        err = _Drain(proc.stderr, MAX_GIT_OUTPUT, keep="tail")
        deadline = time.monotonic() + remaining
        too_big = False
        try:
            while True:
                step = min(0.5, max(deadline - time.monotonic(), 0.0))
                # returns as soon as git closes its stderr, i.e. exits (no polling delay)
                err.thread.join(step)
                if err.thread.is_alive():
                    status = proc.poll()
                else:
                    status = proc.wait()
                if status is not None:
                    break
                if watch is not None and self.max_bytes is not None:
                    if self._used + _store_size(watch) > self.max_bytes:
                        too_big = True
                if too_big or time.monotonic() >= deadline:
                    proc.kill()
                    proc.wait()
                    if too_big:
                        raise FetchError(
                            f"{what}: the repository is larger than {self.max_bytes} bytes"
                        )
                    raise FetchError(f"{what}: the fetch took too long")
        finally:
            out.join()
            err.join()
        if status != 0:
            lines = err.text().strip().splitlines()[-_TAIL_LINES:]
            detail = "; ".join(line.strip()[:300] for line in lines if line.strip())
            raise FetchError(f"{what} failed: {detail or f'exit status {status}'}")
        if out.overflow:
            raise FetchError(f"{what}: more than {MAX_GIT_OUTPUT} bytes of output")
        return out.text()

    def local_env(self) -> dict[str, str]:
        """Environment of git commands that do not talk to a server."""
        return git_environment(None, self.home)

    def clone(self, url: RepoURL, dest: str, sha: str, what: str) -> None:
        """Clone ``url`` into ``dest`` (absent or empty) and check out ``sha``."""
        if not _FULL_SHA.match(sha):
            raise FetchError(f"{what}: {sha!r} is not a full commit sha")
        addresses = self.addresses(url, what)
        # failures name the submodule; the repository itself is named by its URL
        label = "" if what == "repository" else f"{what}: "
        credentials = None
        if self.credentials is not None and url.origin == self.credentials_origin:
            credentials = self.credentials
        env = git_environment(url, self.home, addresses, credentials)
        source = connect_url(url, addresses)
        self.git(
            ["clone", "--quiet", "--no-checkout", "--", source, dest],
            env,
            f"{label}git clone {url}",
            watch=dest,
        )
        local = self.local_env()
        try:
            self.git(["cat-file", "-e", f"{sha}^{{commit}}"], local, "git cat-file", cwd=dest)
        except FetchError:  # not on a branch or tag: ask for the commit itself
            self.git(
                ["fetch", "--quiet", "--no-tags", "origin", sha],
                env,
                f"{label}git fetch {url}",
                cwd=dest,
                watch=dest,
            )
        self.git(
            ["checkout", "--quiet", "--detach", sha], local, f"{label}git checkout {sha}", cwd=dest
        )
        self._used += _store_size(dest)
        if self.max_bytes is not None and self._used > self.max_bytes:
            raise FetchError(f"{what}: the repository is larger than {self.max_bytes} bytes")
        # the checkout records the canonical URL, whatever address git connected to
        self.git(["remote", "set-url", "origin", str(url)], local, "git remote", cwd=dest)

    def fetch(self, url: RepoURL, dest: str, sha: str, depth: int = 0) -> None:
        what = "repository" if depth == 0 else f"submodule {dest}"
        self.clone(url, dest, sha, what)
        self.fetch_submodules(url, dest, depth)
        if depth == 0:
            check_links(dest)

    def submodule_entries(self, dest: str) -> list[tuple[str, str, str, str]]:
        """``(name, path, url, sha)`` for each gitlink that ``.gitmodules`` maps."""
        local = self.local_env()
        try:
            out = self.git(
                ["config", "--file", ".gitmodules", "--null", "--get-regexp", r"^submodule\."],
                local,
                "reading .gitmodules",
                cwd=dest,
            )
        except FetchError:
            return []  # no entries (git exits 1 when nothing matches)
        names: dict[str, dict[str, str]] = {}
        for record in out.split("\0"):
            key, _, value = record.partition("\n")
            for item in ("path", "url"):
                if key.startswith("submodule.") and key.endswith(f".{item}"):
                    names.setdefault(key[len("submodule.") : -len(item) - 1], {})[item] = value
        links: dict[str, str] = {}
        for record in self.git(
            ["ls-files", "--stage", "-z"], local, "git ls-files", cwd=dest
        ).split("\0"):
            meta, _, path = record.partition("\t")
            parts = meta.split()
            if len(parts) == 3 and parts[0] == "160000":
                links[path] = parts[1]
        entries = []
        for name, item in sorted(names.items()):
            path = item.get("path")
            if path in links and item.get("url"):
                entries.append((name, path, item["url"], links[path]))
        return entries

    def fetch_submodules(self, parent: RepoURL, dest: str, depth: int) -> None:
        if not os.path.exists(os.path.join(dest, ".gitmodules")):
            return
        entries = self.submodule_entries(dest)
        if not entries:
            return
        if not self.submodules:
            emit("fetching", f"Submodules are turned off here: not fetching {len(entries)}")
            return
        if depth + 1 > MAX_SUBMODULE_DEPTH:
            raise FetchError(f"submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels")
        root = os.path.realpath(dest)
        for name, path, text, sha in entries:
            self._count += 1
            if self._count > MAX_SUBMODULES:
                raise FetchError(f"more than {MAX_SUBMODULES} submodules")
            what = f"submodule {name!r} ({text})"
            target = os.path.realpath(os.path.join(dest, path))
            if not target.startswith(root + os.sep):
                raise FetchError(f"{what}: path {path!r} is outside the repository")
            url = self.check(resolve_submodule_url(text, parent), what)
            emit("fetching", f"Fetching submodule {name} from {url} at {sha[:12]}")
            self.clone(url, target, sha, what)
            self.fetch_submodules(url, target, depth + 1)


def check_links(root: str) -> None:
    """Refuse a checkout (submodules included) with a symlink that resolves outside ``root``.

    repo2docker reads files of the checkout where it runs (with the LocalProcessBuilder: on the
    service's host, as the service's user) and prints some of them (``apt.txt`` becomes part of
    the generated Dockerfile, or of its error): a link to ``/etc/shadow``, ``/proc/self/environ``
    or ``../repo2docker_config.py`` would put a file of the host into the build log. Links that
    stay inside the checkout (dangling ones too) are kept.
    """
    top = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(top):
        # os.walk does not descend into symlinked directories: they are listed, and checked
        dirnames[:] = [
            d for d in dirnames if d != ".git" or os.path.islink(os.path.join(dirpath, d))
        ]
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            resolved = os.path.realpath(path)
            if resolved != top and not resolved.startswith(top + os.sep):
                relative = os.path.relpath(path, top)
                raise FetchError(
                    f"{relative} is a symbolic link that points outside the repository "
                    f"({os.readlink(path)[:200]!r}): refused, since building would read that "
                    "file of the build host; make it a regular file or a link inside the "
                    "repository"
                )


def _store_size(repo: str) -> int:
    """Bytes in ``repo``'s git object store (where a download lands, packs included)."""
    return tree_bytes(os.path.join(repo, ".git", "objects"))


def tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` while git writes there (the service's clone for a short
    sha uses it too)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # git renamed or removed it meanwhile
    return total
