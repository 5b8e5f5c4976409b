"""Resolving a git ref (branch, tag, HEAD, short or full sha) to a full commit sha.

``git ls-remote`` runs as an async subprocess with a timeout, never through a shell, with ``--``
before the URL, remote helpers disabled and no terminal prompts, so a hostile URL or ref can neither
inject options nor hang the service. Private-repository credentials travel in the environment
(``GIT_CONFIG_*``), never on the command line where ``ps`` would show them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import tempfile
from urllib.parse import urlsplit

from .errors import InvalidRequest, Unavailable, UnknownRef
from .models import Credentials

__all__ = ["git_env", "parse_ls_remote", "pick_sha", "resolve_ref"]

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}$")


def git_env(url: str, credentials: Credentials | None = None) -> dict[str, str]:
    """Environment for git talking to ``url``: no prompts, only network protocols, optional auth."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
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


async def resolve_ref(
    url: str, ref: str, *, credentials: Credentials | None = None, timeout: float = 30.0
) -> str:
    """The full commit sha that ``ref`` names in the repository at ``url``.

    Branches, tags (annotated ones peeled), ``HEAD`` and full shas come from one ``git ls-remote``.
    A short sha that no advertised ref starts with is looked up in a blob-less bare clone in a
    temporary directory, removed afterwards.
    """
    if _FULL_SHA.match(ref):
        return ref
    env = git_env(url, credentials)
    output = await _run_git(["ls-remote", "--", url], env, timeout, f"git ls-remote {url}")
    refs = parse_ls_remote(output)
    sha = pick_sha(refs, ref)
    if sha:
        return sha
    if _SHORT_SHA.match(ref):
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
