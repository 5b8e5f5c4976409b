"""Resolving a ref: the advertisement over ``git://`` and smart HTTP(S), the git CLI for ssh and
for short shas no advertised ref starts with, each under one total deadline."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile

import httpx

from .. import aio
from ..errors import InvalidRequest, RefTimeout, Unavailable, UnknownRef
from ..gitfetch import tree_bytes
from ..models import Credentials
from ..netpolicy import NetPolicy, NetPolicyError
from ..urls import RepoURL, URLError, parse_repo_url
from .advertisement import (
    _FULL_SHA,
    _READ_CHUNK,
    _SHORT_SHA,
    AdvertisementParser,
    _feed,
    _not_git,
    parse_ls_remote,
    pick_sha,
)
from .connect import _client, _open_checked, _refused
from .gitcli import _git_cli_url, _parse, _pinned_git_env, _run_git

__all__ = ["ls_remote", "resolve_ref"]


async def _ls_remote_git(url: RepoURL, policy: NetPolicy) -> dict[str, str]:
    request = f"git-upload-pack {url.path}\0host={url.host}:{url.effective_port}\0".encode()
    reader, writer = await _open_checked(url, policy)
    try:
        writer.write(f"{len(request) + 4:04x}".encode() + request)
        await writer.drain()
        parser = AdvertisementParser()
        while True:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                if not parser.refs and not parser.done:
                    raise InvalidRequest(
                        f"repository {url} was not found (the git server closed the connection)",
                        field="repo",
                    )
                return parser.finish()
            if await _feed(parser, chunk):
                break
        writer.write(b"0000")  # we want nothing: end the conversation politely
        await writer.drain()
        return parser.refs
    finally:
        writer.close()


def _redirect_message(url: RepoURL, response: httpx.Response) -> str:
    location = response.headers.get("location", "")
    target = ""
    try:
        joined = str(response.request.url.join(location)) if location else ""
        joined = joined.split("?", 1)[0].removesuffix("/info/refs")
        target = parse_repo_url(joined).canonical if joined else ""
    except (URLError, httpx.InvalidURL, ValueError):
        target = ""
    where = f" to {target}" if target else " elsewhere"
    advice = f"; submit {target} instead if you trust it" if target else ""
    return f"{url} redirects ({response.status_code}){where}; redirects are not followed{advice}"


async def _ls_remote_http(
    url: RepoURL, credentials: Credentials | None, policy: NetPolicy
) -> dict[str, str]:
    auth = (credentials.username, credentials.password) if credentials else None
    info_url = url.canonical.rstrip("/") + "/info/refs"
    client = await _client(policy)
    async with client.stream(
        "GET", info_url, params={"service": "git-upload-pack"}, auth=auth
    ) as response:
        if response.is_redirect:
            raise InvalidRequest(_redirect_message(url, response), field="repo")
        if response.status_code in (401, 403, 404):
            hint = "" if credentials else " (a private repository needs credentials)"
            raise InvalidRequest(
                f"repository {url} was not found or access was refused "
                f"({response.status_code}){hint}",
                field="repo",
            )
        if response.status_code != 200:
            raise Unavailable(f"git server answered {response.status_code} for {url}")
        if "git-upload-pack-advertisement" not in response.headers.get("content-type", ""):
            raise InvalidRequest(
                f"{url} does not look like a git repository (no smart HTTP)", field="repo"
            )
        parser = AdvertisementParser(smart_http=True)
        async for chunk in response.aiter_raw(_READ_CHUNK):
            if await _feed(parser, chunk):
                break
        return parser.refs if parser.done else parser.finish()


async def ls_remote(
    url: str | RepoURL,
    *,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    policy: NetPolicy | None = None,
) -> dict[str, str]:
    """``{refname: sha}`` of the repository at ``url`` (peeled tags as ``refs/tags/x^{}``).

    ``timeout`` bounds the whole exchange; ``policy`` (default: refuse every internal address)
    decides which addresses may be connected.
    """
    parsed = _parse(url)
    policy = policy if policy is not None else NetPolicy()
    try:
        async with aio.timeout(timeout):
            if parsed.scheme == "git":
                return await _ls_remote_git(parsed, policy)
            if parsed.scheme in ("http", "https"):
                return await _ls_remote_http(parsed, credentials, policy)
            addresses = await policy.resolve_checked(parsed.host, parsed.effective_port)
            output = await _run_git(
                ["ls-remote", "--", parsed.canonical],
                _pinned_git_env(parsed, credentials, addresses),
                f"git ls-remote {parsed}",
            )
            return parse_ls_remote(output)
    except asyncio.TimeoutError:
        raise RefTimeout(
            f"the git server of {parsed} did not send its refs within {timeout:g} s"
        ) from None
    except NetPolicyError as e:
        raise _refused(parsed, e) from None
    except httpx.InvalidURL:  # httpx prepares the next request of a redirect even unfollowed
        raise InvalidRequest(
            f"{parsed} redirects elsewhere (to an invalid URL); redirects are not followed",
            field="repo",
        ) from None
    except httpx.HTTPError as e:
        raise Unavailable(
            f"could not reach the git server of {parsed}: {e or type(e).__name__}"
        ) from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise Unavailable(f"could not reach the git server of {parsed}: {reason}") from None
    except asyncio.IncompleteReadError:
        raise _not_git() from None


#: the most bytes the clone for a short sha may write (commits only, ``--filter=tree:0``; a
#: server that ignores the filter sends everything, which this bounds)
MAX_CLONE_BYTES = 256 * 1024 * 1024
#: seconds between two measurements of the clone's size while git runs
_CLONE_POLL = 0.25


async def _short_sha_from_clone(
    url: RepoURL,
    ref: str,
    credentials: Credentials | None,
    policy: NetPolicy,
) -> str | None:
    max_bytes = MAX_CLONE_BYTES
    addresses = await policy.resolve_checked(url.host, url.effective_port)
    env = _pinned_git_env(url, credentials, addresses)
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="r2d-resolve-")
    too_large = InvalidRequest(
        f"looking up {ref} in {url}: its history is larger than {max_bytes // 2**20} MiB; give "
        "the full 40-character sha, or a branch or tag name",
        field="ref",
    )
    try:
        # commits only: all rev-parse needs to expand a short sha to a commit
        clone = asyncio.ensure_future(
            _run_git(
                [
                    "clone",
                    "--bare",
                    "--filter=tree:0",
                    "--quiet",
                    "--",
                    _git_cli_url(url, addresses),
                    tmp,
                ],
                env,
                f"git clone {url}",
            )
        )
        try:
            while not clone.done():
                await asyncio.wait({clone}, timeout=_CLONE_POLL)
                if not clone.done() and await asyncio.to_thread(tree_bytes, tmp) > max_bytes:
                    raise too_large
            clone.result()
        finally:
            if not clone.done():  # over the limit, or our deadline: git is killed (_run_git)
                clone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clone
        if await asyncio.to_thread(tree_bytes, tmp) > max_bytes:
            raise too_large
        try:
            out = await _run_git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
                env,
                "git rev-parse",
                cwd=tmp,
            )
        except InvalidRequest:
            out = ""
        return out.strip() if _FULL_SHA.match(out.strip()) else None
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def resolve_ref(
    url: str | RepoURL,
    ref: str,
    *,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    policy: NetPolicy | None = None,
) -> str:
    """The full commit sha that ``ref`` names in the repository at ``url``.

    Branches, tags (annotated ones peeled) and ``HEAD`` come from the ref advertisement. A short
    sha that no advertised ref starts with is looked up in a bare clone of the commits only
    (at most :data:`MAX_CLONE_BYTES`) in a temporary directory, removed afterwards. A full sha
    is taken as it is (repo2docker checks it out).
    ``timeout`` bounds each of the two steps; ``policy`` decides which addresses may be reached.
    """
    if _FULL_SHA.match(ref):
        return ref
    parsed = _parse(url)
    policy = policy if policy is not None else NetPolicy()
    refs = await ls_remote(parsed, credentials=credentials, timeout=timeout, policy=policy)
    sha = pick_sha(refs, ref)
    if sha:
        return sha
    if _SHORT_SHA.match(ref):
        try:
            async with aio.timeout(timeout):
                sha = await _short_sha_from_clone(parsed, ref, credentials, policy)
        except asyncio.TimeoutError:
            raise RefTimeout(f"looking up {ref} in {parsed} took more than {timeout:g} s") from None
        except NetPolicyError as e:
            raise _refused(parsed, e) from None
        if sha:
            return sha
    raise UnknownRef(f"ref {ref!r} was not found in {parsed}", field="ref")
