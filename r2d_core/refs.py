"""Resolving a git ref (branch, tag, HEAD, short or full sha) to a full commit sha.

The ref advertisement is read natively, without spawning git: over the git protocol (``git://``,
asyncio TCP) and smart HTTP(S) (``info/refs?service=git-upload-pack`` through httpx, connections
kept alive). That takes ~5 ms against a local server where ``git ls-remote`` takes ~50 ms, most of
it process start-up. ``ssh://`` URLs, and short shas that no advertised ref starts with, fall back to
the git CLI (``ls-remote``, or a blob-less bare clone into a temporary directory removed afterwards),
run as an async subprocess with a timeout, never through a shell, ``--`` before the URL, remote
helpers disabled and no terminal prompts. Private-repository credentials travel in request headers
or the environment (``GIT_CONFIG_*``), never on a command line where ``ps`` would show them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import tempfile
from urllib.parse import urlsplit

import httpx

from .errors import InvalidRequest, Unavailable, UnknownRef
from .models import Credentials

__all__ = ["git_env", "ls_remote", "parse_ls_remote", "parse_pkt_lines", "pick_sha", "resolve_ref"]

#: the most a ref advertisement may weigh (protects memory from a hostile server)
MAX_ADVERTISEMENT = 32 * 1024 * 1024
_USER_AGENT = "git/2.39 (repo2docker-service)"
_http_client: httpx.AsyncClient | None = None

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}$")


def git_env(url: str, credentials: Credentials | None = None) -> dict[str, str]:
    """Environment for git talking to ``url``: no prompts, only network protocols, optional auth."""
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
    for name in (
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "GIT_SSL_CAINFO",
        "SSL_CERT_FILE",
    ):
        if name in os.environ:
            env[name] = os.environ[name]
    if credentials is not None:
        parts = urlsplit(url)
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"http.{parts.scheme}://{parts.netloc}/.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
            }
        )
    return env


def parse_ls_remote(output: str) -> dict[str, str]:
    """``{refname: sha}`` from ``git ls-remote`` output (peeled tags as ``refs/tags/x^{}``)."""
    refs: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if _FULL_SHA.match(sha) and name:
            refs[name] = sha
    return refs


def pick_sha(refs: dict[str, str], ref: str) -> str | None:
    """The commit ``ref`` names among ``refs``, following git's own precedence; None if absent."""
    if _FULL_SHA.match(ref):
        return ref
    candidates = [
        ref,  # HEAD, or a full name like refs/heads/main
        f"refs/tags/{ref}^{{}}",  # annotated tag, peeled to its commit
        f"refs/tags/{ref}",
        f"refs/heads/{ref}",
        f"refs/{ref}",
        f"refs/remotes/{ref}",
    ]
    if ref.startswith("refs/tags/"):
        candidates.insert(0, f"{ref}^{{}}")
    for candidate in candidates:
        if candidate in refs:
            return refs[candidate]
    if _SHORT_SHA.match(ref):
        matches = {sha for sha in refs.values() if sha.startswith(ref)}
        if len(matches) == 1:
            return matches.pop()
    return None


async def _run_git(
    args: list[str], env: dict[str, str], timeout: float, what: str, cwd: str | None = None
) -> str:
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
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise Unavailable(f"{what} timed out after {timeout:g} s") from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {proc.returncode}"
        raise InvalidRequest(f"{what} failed: {detail}", field="repo")
    return out.decode(errors="replace")


def parse_pkt_lines(data: bytes) -> dict[str, str]:
    """``{refname: sha}`` from a protocol-v0 ref advertisement in pkt-line framing.

    Accepts the smart-HTTP form (a ``# service=...`` line and a flush first) and the bare form.
    """
    refs: dict[str, str] = {}
    pos = 0
    while pos + 4 <= len(data):
        try:
            length = int(data[pos : pos + 4], 16)
        except ValueError:
            raise InvalidRequest(
                "the server did not answer with the git protocol", field="repo"
            ) from None
        if length == 0:  # flush packet
            pos += 4
            continue
        if length < 4 or pos + length > len(data):
            break
        line = data[pos + 4 : pos + length].rstrip(b"\n")
        pos += length
        if line.startswith(b"#") or line.startswith(b"ERR "):
            if line.startswith(b"ERR "):
                raise InvalidRequest(
                    f"git server: {line[4:].decode(errors='replace')}", field="repo"
                )
            continue
        sha, _, rest = line.partition(b" ")
        name = rest.split(b"\0", 1)[0].decode(errors="replace")
        sha_text = sha.decode(errors="replace")
        if _FULL_SHA.match(sha_text) and name and name != "capabilities^{}":
            refs[name] = sha_text
    return refs


async def _ls_remote_git(url: str, timeout: float) -> dict[str, str]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 9418
    request = f"git-upload-pack {parts.path or '/'}\0host={host}:{port}\0".encode()

    async def talk() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"{len(request) + 4:04x}".encode() + request)
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while True:  # read pkt-lines until the flush that ends the advertisement
                head = await reader.readexactly(4)
                length = int(head, 16)
                chunks.append(head)
                if length == 0:
                    break
                body = await reader.readexactly(length - 4)
                chunks.append(body)
                size += length
                if size > MAX_ADVERTISEMENT:
                    raise InvalidRequest("the repository advertises too many refs", field="repo")
            writer.write(b"0000")  # we want nothing: end the conversation politely
            await writer.drain()
            return b"".join(chunks)
        finally:
            writer.close()

    try:
        data = await asyncio.wait_for(talk(), timeout)
    except asyncio.TimeoutError:
        raise Unavailable(f"git server {host}:{port} did not answer within {timeout:g} s") from None
    except asyncio.IncompleteReadError:
        raise InvalidRequest(
            f"repository {url} was not found (the git server closed the connection)", field="repo"
        ) from None
    except ValueError:
        raise InvalidRequest(
            "the server did not answer with the git protocol", field="repo"
        ) from None
    except OSError as e:
        raise Unavailable(f"could not reach git server {host}:{port}: {e.strerror or e}") from None
    return parse_pkt_lines(data)


async def _ls_remote_http(
    url: str, credentials: Credentials | None, timeout: float
) -> dict[str, str]:
    global _http_client
    if _http_client is None:
        _http_client = httpx.AsyncClient(follow_redirects=True, headers={"User-Agent": _USER_AGENT})
    auth = (credentials.username, credentials.password) if credentials else None
    info_url = url.rstrip("/") + "/info/refs"
    try:
        async with _http_client.stream(
            "GET", info_url, params={"service": "git-upload-pack"}, auth=auth, timeout=timeout
        ) as response:
            if response.status_code in (401, 403, 404):
                hint = "" if credentials else " (a private repository needs credentials)"
                raise InvalidRequest(
                    f"repository {url} was not found or access was refused ({response.status_code}){hint}",
                    field="repo",
                )
            if response.status_code != 200:
                raise Unavailable(f"git server answered {response.status_code} for {url}")
            if "git-upload-pack-advertisement" not in response.headers.get("content-type", ""):
                raise InvalidRequest(
                    f"{url} does not look like a git repository (no smart HTTP)", field="repo"
                )
            data = b""
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_ADVERTISEMENT:
                    raise InvalidRequest("the repository advertises too many refs", field="repo")
    except httpx.TimeoutException:
        raise Unavailable(f"git server for {url} did not answer within {timeout:g} s") from None
    except httpx.HTTPError as e:
        raise Unavailable(f"could not reach the git server of {url}: {e}") from None
    return parse_pkt_lines(data)


async def ls_remote(
    url: str, *, credentials: Credentials | None = None, timeout: float = 30.0
) -> dict[str, str]:
    """``{refname: sha}`` of the repository at ``url`` (peeled tags as ``refs/tags/x^{}``)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "git":
        return await _ls_remote_git(url, timeout)
    if scheme in ("http", "https"):
        return await _ls_remote_http(url, credentials, timeout)
    output = await _run_git(
        ["ls-remote", "--", url], git_env(url, credentials), timeout, f"git ls-remote {url}"
    )
    return parse_ls_remote(output)


async def resolve_ref(
    url: str, ref: str, *, credentials: Credentials | None = None, timeout: float = 30.0
) -> str:
    """The full commit sha that ``ref`` names in the repository at ``url``.

    Branches, tags (annotated ones peeled) and ``HEAD`` come from the ref advertisement. A short
    sha that no advertised ref starts with is looked up in a blob-less bare clone in a temporary
    directory, removed afterwards. A full sha is taken as it is (repo2docker checks it out).
    """
    if _FULL_SHA.match(ref):
        return ref
    refs = await ls_remote(url, credentials=credentials, timeout=timeout)
    sha = pick_sha(refs, ref)
    if sha:
        return sha
    if _SHORT_SHA.match(ref):
        env = git_env(url, credentials)
        tmp = tempfile.mkdtemp(prefix="r2d-resolve-")
        try:
            await _run_git(
                ["clone", "--bare", "--filter=blob:none", "--quiet", "--", url, tmp],
                env,
                timeout,
                f"git clone {url}",
            )
            try:
                out = await _run_git(
                    ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
                    env,
                    timeout,
                    "git rev-parse",
                    cwd=tmp,
                )
            except InvalidRequest:
                out = ""
            if _FULL_SHA.match(out.strip()):
                return out.strip()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise UnknownRef(f"ref {ref!r} was not found in {url}", field="ref")
