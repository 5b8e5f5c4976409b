"""Ref resolution against hostile servers (tests/harness/hostile.py) and the network policy.

Every server here listens on 127.0.0.1; nothing connects to a private-range or public address
(the tests that name such addresses prove that no connection is even attempted)."""

from __future__ import annotations

import asyncio
import os
import time

import httpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d_core.errors import InvalidRequest, RefTimeout
from r2d_core.models import Credentials
from r2d_core.netpolicy import NetPolicy
from r2d_core.refs import (
    MAX_ADVERTISEMENT,
    AdvertisementParser,
    gitcli,
    parse_pkt_lines,
    resolve_ref,
)
from r2d_core.urls import parse_repo_url
from tests.harness.hostile import (
    FLOOD_BYTES,
    CountingHTTPServer,
    HostileGitServer,
    HostileHTTPServer,
)

LOOPBACK = NetPolicy(["127.0.0.0/8"])
#: the most the event loop may stall while a hostile server is read
MAX_LAG = 0.2
#: an outer bound, so that code without a total deadline fails instead of hanging the suite
HANG = 30


async def _with_lag(coro):
    """Run ``coro`` while a ticker measures the event loop's worst stall; (result or error, lag)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - start - 0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    try:
        outcome = await asyncio.wait_for(coro, HANG)
    except Exception as e:
        outcome = e
    finally:
        done.set()
        await ticker
    return outcome, max(lags)


async def test_redirect_is_not_followed_and_the_target_sees_nothing():
    with (
        CountingHTTPServer() as other,
        HostileHTTPServer("redirect", target=f"http://127.0.0.1:{other.port}") as redirecting,
    ):
        with pytest.raises(InvalidRequest) as e:
            await resolve_ref(redirecting.url("repo"), "main", policy=LOOPBACK, timeout=10)
        assert redirecting.requests  # it was asked
        assert other.requests == []  # the redirect target never was
    message = str(e.value)
    assert "redirects (301)" in message and "not followed" in message
    assert f"http://127.0.0.1:{other.port}/repo" in message  # the URL to submit instead


async def test_redirect_to_garbage_names_no_url():
    with HostileHTTPServer("redirect", target="javascript:alert(1)//") as redirecting:
        with pytest.raises(InvalidRequest) as e:
            await resolve_ref(redirecting.url("repo"), "main", policy=LOOPBACK, timeout=10)
    assert "elsewhere" in str(e.value) and "javascript" not in str(e.value)


@pytest.mark.parametrize("kind", ["http", "git"])
async def test_flood_is_cut_at_the_cap_and_the_loop_stays_responsive(kind):
    server = HostileHTTPServer("flood") if kind == "http" else HostileGitServer("flood")
    with server:
        start = time.monotonic()
        outcome, lag = await _with_lag(
            resolve_ref(server.url("repo"), "main", policy=LOOPBACK, timeout=HANG)
        )
        elapsed = time.monotonic() - start
    assert isinstance(outcome, InvalidRequest), outcome
    assert "advertisement" in str(outcome)
    assert lag < MAX_LAG, f"the event loop stalled {lag:.3f} s"
    assert elapsed < 3  # refused at the packet bound, not after reading 32 MiB
    assert server.sent < FLOOD_BYTES  # we hung up early


@pytest.mark.parametrize("kind", ["http", "git"])
async def test_slow_drip_ends_at_the_total_deadline(kind):
    server = (
        HostileHTTPServer("drip", interval=0.1)
        if kind == "http"
        else HostileGitServer("drip", interval=0.1)
    )
    with server:
        start = time.monotonic()
        outcome, lag = await _with_lag(
            resolve_ref(server.url("repo"), "main", policy=LOOPBACK, timeout=1.5)
        )
        elapsed = time.monotonic() - start
    assert isinstance(outcome, RefTimeout), outcome
    assert outcome.status == 504 and outcome.code == "ref_timeout"
    assert 1.4 < elapsed < 5, elapsed
    assert lag < MAX_LAG


async def test_loopback_refused_by_default_before_any_request(git_server):
    """With allowed_networks=[] a host resolving to loopback is refused, by name or by address."""
    with CountingHTTPServer() as other:
        for url in (
            f"http://localhost:{other.port}/repo",
            f"http://127.0.0.1:{other.port}/repo",
            f"http://[::ffff:127.0.0.1]:{other.port}/repo",
        ):
            with pytest.raises(InvalidRequest, match="internal network") as e:
                await resolve_ref(url, "main", timeout=10)
            if "localhost" in url:  # the user learns nothing about what the name resolves to
                assert "127.0.0.1" not in str(e.value) and "::1" not in str(e.value)
        assert other.requests == []
    with pytest.raises(InvalidRequest, match="internal network"):
        await resolve_ref(git_server.url("hello"), "main", timeout=10)
    with pytest.raises(InvalidRequest, match="internal network"):
        await resolve_ref(git_server.url("hello"), "abcdef1", timeout=10)  # the clone path too


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/repo",
        "git://192.168.1.1/repo",
        "http://172.16.0.1/repo",
        "https://100.64.0.1/repo",
        "https://[fd00::1]/repo",
        "https://[::ffff:169.254.169.254]/repo",
        "ssh://git@10.1.2.3/repo",
    ],
)
async def test_internal_addresses_refused_without_connecting(url, monkeypatch):
    async def no_connect(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(asyncio, "open_connection", no_connect)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", no_connect)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_connect)
    for ref in ("main", "abc1234"):
        with pytest.raises(InvalidRequest, match="internal network") as e:
            await resolve_ref(url, ref, policy=LOOPBACK, timeout=5)
        host = parse_repo_url(url).host
        assert host not in str(e.value).replace(f"{host} is on", "")


def test_pinned_git_env():
    url = parse_repo_url("https://git.example/org/repo")
    env = gitcli._pinned_git_env(url, Credentials("u", "p"), ["192.0.2.7", "2001:db8::7"])
    configs = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert configs["http.followRedirects"] == "false"
    assert configs["http.curloptResolve"] == "git.example:443:192.0.2.7,[2001:db8::7]"
    assert configs["http.https://git.example/.extraHeader"].startswith("Authorization: Basic ")
    assert env["GIT_ALLOW_PROTOCOL"] == "https"
    assert not {"http_proxy", "https_proxy", "HTTPS_PROXY", "HTTP_PROXY"} & set(env)
    git = parse_repo_url("git://git.example/repo")
    assert gitcli._git_cli_url(git, ["192.0.2.7"]) == "git://192.0.2.7:9418/repo"
    ssh = gitcli._pinned_git_env(parse_repo_url("ssh://git@git.example/r"), None, ["192.0.2.7"])
    assert ssh["GIT_SSH_COMMAND"].endswith("-o HostName=192.0.2.7 -o HostKeyAlias=git.example")


def test_credentials_key_is_built_from_the_canonical_url_only():
    env = gitcli.git_env("HTTPS://Git.Example:443//org/repo", Credentials("u", "p"))
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example/.extraHeader"
    with pytest.raises(InvalidRequest):
        gitcli.git_env('https://[v1.a"][core]x=y;@github.com/r', Credentials("u", "p"))


# ---- the parser ---------------------------------------------------------------------------------
def _advertisement(names: list[str], smart_http: bool = True) -> tuple[bytes, dict[str, str]]:
    data = bytearray(b"001e# service=git-upload-pack\n0000" if smart_http else b"")
    expected = {}
    for i, name in enumerate(names):
        sha = f"{i:040x}"
        line = f"{sha} {name}" + ("\0multi_ack side-band-64k" if i == 0 else "") + "\n"
        data += f"{len(line) + 4:04x}".encode() + line.encode()
        expected[name] = sha
    data += b"0000"
    return bytes(data), expected


@settings(max_examples=50)
@given(
    st.lists(st.from_regex(r"\Arefs/heads/[a-z]{1,12}\Z"), min_size=1, max_size=30, unique=True),
    st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=50),
    st.booleans(),
)
def test_parser_is_independent_of_chunking(names, cuts, smart_http):
    data, expected = _advertisement(names, smart_http)
    parser = AdvertisementParser(smart_http=smart_http)
    pos, i = 0, 0
    while pos < len(data) and not parser.done:
        size = cuts[i % len(cuts)]
        parser.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    assert parser.done and parser.refs == expected
    assert parse_pkt_lines(data) == expected


def test_parser_bounds():
    flood = b"001e# service=git-upload-pack\n0000" + b"0004" * 200_000
    with pytest.raises(InvalidRequest, match="more than 100000 lines"):
        parse_pkt_lines(flood)
    with pytest.raises(InvalidRequest, match="larger than 4 MiB"):
        AdvertisementParser().feed(b"0" * (MAX_ADVERTISEMENT + 1))
    for garbage in (b"<html>", b"00zz", b"0003", b"0001"):
        with pytest.raises(InvalidRequest, match="git protocol"):
            parse_pkt_lines(garbage + b"0000")
    with pytest.raises(InvalidRequest, match="git server: denied"):
        parse_pkt_lines(b"000eERR denied")
    with pytest.raises(InvalidRequest, match="git protocol"):  # smart HTTP without its header
        AdvertisementParser(smart_http=True).feed(b"0009hello0000")


def test_a_large_real_advertisement_parses():
    names = [f"refs/heads/branch-{i}" for i in range(50_000)]
    data, expected = _advertisement(names)
    assert len(data) < MAX_ADVERTISEMENT
    assert parse_pkt_lines(data) == expected


_FAKE_SSH = """#!/bin/sh
# stands in for ssh: records its arguments, then runs the remote command locally
printf '%s\\n' "$@" > {log}
for last; do :; done
exec sh -c "$last"
"""


async def test_ssh_ls_remote_is_pinned_to_the_checked_address(git_server, tmp_path, monkeypatch):
    """ssh:// goes through the git CLI with the same rules; ssh is told the checked address
    (HostName) and keeps the name for its known_hosts (HostKeyAlias). A stand-in ssh on PATH
    runs git-upload-pack locally, so no sshd is needed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ssh-args"
    (bin_dir / "ssh").write_text(_FAKE_SSH.format(log=log))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # git_env passes PATH on
    repo = git_server.repos["hello"]
    url = f"ssh://git@localhost{repo.path}"
    assert await resolve_ref(url, "v2", policy=LOOPBACK, timeout=20) == repo.tags["v2"]
    args = log.read_text().splitlines()
    assert "HostName=127.0.0.1" in args and "HostKeyAlias=localhost" in args, args
    assert "git@localhost" in args
    with pytest.raises(InvalidRequest, match="internal network"):  # and the default refuses it
        await resolve_ref(url, "v2", timeout=20)
