"""Ref resolution against real git servers: the git daemon (git://) and git http-backend behind
an HTTP server with basic auth (smart HTTP), plus the git CLI fallbacks."""

from __future__ import annotations

import os

import pytest

from r2d_core.errors import InvalidRequest, Unavailable, UnknownRef
from r2d_core.models import Credentials
from r2d_core.netpolicy import NetPolicy
from r2d_core.refs import ls_remote, parse_pkt_lines, pick_sha, resolve_ref
from tests.harness.githttp import PASSWORD, USER, GitHTTPServer

#: the test servers listen on loopback, which the default policy refuses
LOOPBACK = NetPolicy(["127.0.0.0/8"])


@pytest.fixture(scope="module")
def http_git(git_server):
    with GitHTTPServer(git_server.repos["hello"].path.parent) as host:
        yield host.base


async def test_git_protocol_matches_git_ls_remote(git_server):
    refs = await ls_remote(git_server.url("hello"), policy=LOOPBACK)
    assert refs == git_server.ls_remote("hello")


async def test_branches_tags_head(git_server):
    repo = git_server.repos["hello"]
    url = git_server.url("hello")
    assert await resolve_ref(url, "main", policy=LOOPBACK) == repo.branches["main"]
    assert await resolve_ref(url, "dev", policy=LOOPBACK) == repo.branches["dev"]
    assert await resolve_ref(url, "v1", policy=LOOPBACK) == repo.tags["v1"]  # lightweight
    assert (
        await resolve_ref(url, "v2", policy=LOOPBACK) == repo.tags["v2"]
    )  # annotated: peeled to the commit
    assert await resolve_ref(url, "refs/tags/v2", policy=LOOPBACK) == repo.tags["v2"]
    assert await resolve_ref(url, "HEAD", policy=LOOPBACK) == repo.head
    assert (
        await resolve_ref(url, repo.head[:10], policy=LOOPBACK) == repo.head
    )  # short sha of an advertised ref
    with pytest.raises(UnknownRef):
        await resolve_ref(url, "no-such-branch", policy=LOOPBACK)


async def test_short_sha_of_an_unadvertised_commit_uses_a_temporary_clone(git_server, tmp_path):
    repo = git_server.repos["quick"]
    old = repo.branches["main"]
    git_server.add_commit("quick", {"moved.txt": "moved on\n"})
    assert old not in (await ls_remote(git_server.url("quick"), policy=LOOPBACK)).values()
    before = set(os.listdir("/tmp"))
    assert await resolve_ref(git_server.url("quick"), old[:9], policy=LOOPBACK) == old
    leftovers = [d for d in set(os.listdir("/tmp")) - before if d.startswith("r2d-resolve-")]
    assert leftovers == []  # the temporary clone is removed


async def test_the_clone_for_a_short_sha_is_bounded_in_bytes(git_server, monkeypatch):
    # a hostile server may send a huge history (or ignore the commits-only filter): the clone
    # stops at MAX_CLONE_BYTES with an error saying what to send instead
    from r2d_core.refs import resolve

    repo = git_server.repos["quick"]
    old = repo.branches["main"]
    git_server.add_commit("quick", {"again.txt": "and again\n"})
    monkeypatch.setattr(resolve, "MAX_CLONE_BYTES", 64)
    before = set(os.listdir("/tmp"))
    with pytest.raises(InvalidRequest, match="history is larger than 0 MiB; give the full") as e:
        await resolve_ref(git_server.url("quick"), old[:9], policy=LOOPBACK)
    assert e.value.details["field"] == "ref"
    leftovers = [d for d in set(os.listdir("/tmp")) - before if d.startswith("r2d-resolve-")]
    assert leftovers == []  # removed all the same


async def test_smart_http_with_credentials(http_git, git_server):
    url = f"{http_git}/hello"
    repo = git_server.repos["hello"]
    creds = Credentials(USER, PASSWORD)
    assert await resolve_ref(url, "v2", credentials=creds, policy=LOOPBACK) == repo.tags["v2"]
    assert (
        await resolve_ref(url, "main", credentials=creds, policy=LOOPBACK) == repo.branches["main"]
    )
    with pytest.raises(InvalidRequest, match="credentials"):
        await resolve_ref(url, "main", policy=LOOPBACK)
    with pytest.raises(InvalidRequest) as e:
        await resolve_ref(url, "main", credentials=Credentials(USER, "wrong"), policy=LOOPBACK)
    assert "wrong" not in str(e.value)


async def test_unreachable_and_not_git(http_git, git_server):
    with pytest.raises(Unavailable):
        await ls_remote("git://127.0.0.1:1/x", timeout=5, policy=LOOPBACK)
    with pytest.raises(Unavailable):
        await ls_remote("https://127.0.0.1:1/x", timeout=5, policy=LOOPBACK)
    with pytest.raises(InvalidRequest):
        await ls_remote(git_server.url("no-such-repo"), timeout=5, policy=LOOPBACK)


def test_pkt_line_parsing():
    sha = "a" * 40
    first = f"{sha} HEAD\0multi_ack symref=HEAD:refs/heads/main\n".encode()
    second = f"{sha} refs/heads/main\n".encode()
    data = b"001e# service=git-upload-pack\n0000"
    for line in (first, second):
        data += f"{len(line) + 4:04x}".encode() + line
    data += b"0000"
    assert parse_pkt_lines(data) == {"HEAD": sha, "refs/heads/main": sha}
    with pytest.raises(InvalidRequest, match="git server"):
        parse_pkt_lines(b"0016ERR access denied\n")
    assert pick_sha({"refs/tags/v1": "b" * 40, "refs/tags/v1^{}": sha}, "v1") == sha
    assert pick_sha({"refs/heads/x": sha}, "aaaa") == sha
    assert (
        pick_sha({"refs/heads/x": sha, "refs/heads/y": "a" * 39 + "b"}, "aaaa") is None
    )  # ambiguous
