"""The git CLI as the service runs it: its environment (no prompts, optional credentials as
``GIT_CONFIG_*`` entries, pinned addresses) and a bounded, killable subprocess."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil

from ..errors import InvalidRequest, Unavailable
from ..models import Credentials
from ..urls import RepoURL, URLError, parse_repo_url
from .advertisement import _READ_CHUNK, MAX_ADVERTISEMENT

__all__ = ["git_env"]

_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def _parse(url: str | RepoURL) -> RepoURL:
    if isinstance(url, RepoURL):
        return url
    try:
        return parse_repo_url(url)
    except URLError as e:
        raise InvalidRequest(str(e), field="repo") from None


def git_env(url: str | RepoURL, credentials: Credentials | None = None) -> dict[str, str]:
    """Environment for git talking to ``url``: no prompts, only network protocols, optional auth.

    The credentials' config key is built from the canonical origin of ``url`` only (nothing a user
    typed reaches git's config syntax), and travels as ``GIT_CONFIG_*`` environment entries.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # never /tmp: any local user (a TLJH user's terminal) could plant /tmp/.gitconfig or
        # /tmp/.ssh/config there (core.fsmonitor, ProxyCommand: commands run as the service);
        # without $HOME (a root systemd unit), the account's own home from the password database
        "HOME": os.environ.get("HOME") or os.path.expanduser("~"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": "https:http:git:ssh",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        "LC_ALL": "C",
    }
    for name in (*_PROXY_VARS, "GIT_SSL_CAINFO", "SSL_CERT_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    if credentials is not None:
        origin = _parse(url).origin
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        _add_config(env, f"http.{origin}/.extraHeader", f"Authorization: Basic {token}")
    return env


def _add_config(env: dict[str, str], key: str, value: str) -> None:
    index = int(env.get("GIT_CONFIG_COUNT", "0"))
    env[f"GIT_CONFIG_KEY_{index}"] = key
    env[f"GIT_CONFIG_VALUE_{index}"] = value
    env["GIT_CONFIG_COUNT"] = str(index + 1)


def _pinned_git_env(
    url: RepoURL, credentials: Credentials | None, addresses: list[str]
) -> dict[str, str]:
    """:func:`git_env` for the service's own git runs: one protocol, no redirects, pinned address."""
    env = git_env(url, credentials)
    for name in _PROXY_VARS:
        env.pop(name, None)
    env["GIT_ALLOW_PROTOCOL"] = url.scheme
    _add_config(env, "http.followRedirects", "false")
    _add_config(env, "protocol.file.allow", "never")
    if url.scheme in ("http", "https") and not url.host_is_ip:
        pins = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        _add_config(env, "http.curloptResolve", f"{url.host}:{url.effective_port}:{pins}")
    if url.scheme == "ssh":
        # the address and the name come from the URL model and getaddrinfo: no user text
        env["GIT_SSH_COMMAND"] += f" -o HostName={addresses[0]} -o HostKeyAlias={url.host}"
    return env


def _git_cli_url(url: RepoURL, addresses: list[str]) -> str:
    """The URL handed to the git CLI: ``git://`` goes to the checked address itself."""
    if url.scheme != "git" or url.host_is_ip:
        return url.canonical
    address = addresses[0]
    host = f"[{address}]" if ":" in address else address
    return f"git://{host}:{url.effective_port}{url.path}"


async def _run_git(args: list[str], env: dict[str, str], what: str, cwd: str | None = None) -> str:
    """Run git; the caller's deadline (``asyncio.timeout``) bounds it, and kills it when it ends."""
    git = shutil.which("git")
    if git is None:
        raise Unavailable("git is not installed on the service's machine")
    proc = await asyncio.create_subprocess_exec(
        git,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out, err = await asyncio.gather(
            _read_capped(proc.stdout, MAX_ADVERTISEMENT, what), _read_tail(proc.stderr, 2000)
        )
        await proc.wait()
    except BaseException:  # cancelled, timed out or too much output: do not leave git running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {proc.returncode}"
        detail = "".join(c if c.isprintable() else "?" for c in detail)
        raise InvalidRequest(f"{what} failed: {detail}", field="repo")
    return out.decode(errors="replace")


async def _read_capped(stream: asyncio.StreamReader, cap: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(_READ_CHUNK):
        size += len(chunk)
        if size > cap:
            raise InvalidRequest(f"{what} printed more than {cap // 2**20} MiB", field="repo")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    tail = b""
    while chunk := await stream.read(_READ_CHUNK):
        tail = (tail + chunk)[-keep:]
    return tail
