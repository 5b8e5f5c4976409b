"""The fetch stage (r2d_core.fetch) against real git servers: git daemon and smart HTTP.

These run git for real, in-process (no Docker): what git is allowed to do (schemes, redirects,
addresses, submodules) and how credentials reach it. tests/test_manager.py runs the same stage
inside both builders.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from r2d_core.builders import Builder
from r2d_core.fetch import (
    Credentials,
    Fetcher,
    FetchError,
    git_environment,
    header_key,
    resolve_submodule_url,
)
from r2d_core.netpolicy import NetPolicy
from r2d_core.urls import parse_repo_url
from tests.harness.githttp import PASSWORD, USER, GitHTTPServer
from tests.harness.hostile import HostileHTTPServer

LOOPBACK = ["127.0.0.0/8"]
ANY_LOOPBACK_GIT = [r"^git://127\.0\.0\.1:\d+/"]
_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(cwd: Path, *args: str, **env: str) -> str:
    res = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **_GIT_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def add_submodule(repo: Path, url: str, path: str, sha: str) -> str:
    """Record a submodule (gitlink ``path`` at ``sha``, ``.gitmodules`` entry ``url``) without
    cloning it; returns the new HEAD."""
    git(repo, "config", "--file", ".gitmodules", f"submodule.{path}.path", path)
    git(repo, "config", "--file", ".gitmodules", f"submodule.{path}.url", url)
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sha},{path}")
    git(repo, "add", ".gitmodules")
    git(repo, "commit", "-q", "-m", f"submodule {path}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def served(git_server):
    """A new served repository ``top-N`` (one commit) in the git daemon; returns (name, path)."""
    counter = iter(range(10_000))

    def make(prefix: str = "top") -> tuple[str, Path]:
        while True:
            name = f"{prefix}-{os.getpid()}-{next(counter)}"
            if name not in git_server.repos:
                break
        repo = git_server.add_repo(name, {"README.md": f"# {name}\n"})
        return name, repo.path

    return make


def fetcher(tmp_path: Path, patterns=ANY_LOOPBACK_GIT, networks=LOOPBACK, **kw) -> Fetcher:
    return Fetcher(
        allowed_patterns=list(patterns),
        policy=NetPolicy(networks),
        home=str(tmp_path / "home"),
        **kw,
    )


@pytest.fixture
def private_http(git_server) -> Iterator[tuple[str, list[str]]]:
    """git http-backend behind basic auth over the git server's repositories: (base URL, seen)."""
    with GitHTTPServer(git_server.repos["hello"].path.parent) as host:
        yield host.base, host.seen


# -- how git runs ---------------------------------------------------------------------------------
def test_git_environment_is_whole_and_constant(tmp_path):
    url = parse_repo_url("https://git.example.org/org/repo.git")
    env = git_environment(url, str(tmp_path), ["192.0.2.7"])
    pairs = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert env["GIT_ALLOW_PROTOCOL"] == "https"  # one scheme: never file, ext, fd
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert pairs["http.followRedirects"] == "false"
    assert pairs["protocol.file.allow"] == "never"
    assert pairs["http.curloptResolve"] == "git.example.org:443:192.0.2.7"
    # nothing from the service's environment leaks into git's (HOME, proxies, GIT_* ...)
    assert set(env) - {"PATH"} == {k for k in env if k != "PATH"}
    assert "HOME" in env and env["HOME"] == str(tmp_path)
    assert not {"http_proxy", "HTTPS_PROXY", "GIT_DIR", "GIT_SSH"} & set(env)
    ipv6 = git_environment(url, str(tmp_path), ["2001:db8::1"])
    assert "git.example.org:443:[2001:db8::1]" in ipv6.values()


def test_credential_header_key_is_built_from_the_canonical_url_only(tmp_path):
    """Defect 1, the mechanism: a URL with gitconfig's special characters (percent-encoded, the
    only form the URL model lets through) gives a key git reads literally, as an env value.
    Even a key with quotes and brackets cannot open another section: git takes the section
    from before the first dot, the name from after the last."""
    url = parse_repo_url("http://127.0.0.1:9/o%22%5D%5Bcore%5Dfsmonitor=x/r.git")
    creds = Credentials("u", 'p@ss"]\n[core]\nfsmonitor=touch /tmp/PWNED')
    env = git_environment(url, str(tmp_path), ["127.0.0.1"], creds)
    keys = [env[f"GIT_CONFIG_KEY_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    assert header_key(url) in keys and header_key(url) == f"http.{url}.extraHeader"
    header = env[f"GIT_CONFIG_VALUE_{keys.index(header_key(url))}"]
    assert (
        header
        == "Authorization: Basic " + base64.b64encode(b"u:" + creds.password.encode()).decode()
    )
    assert "\n" not in header
    # git itself: no core.* setting exists, the header is scoped to exactly this URL
    listed = subprocess.run(
        ["git", "config", "--list"], env=env, capture_output=True, text=True, cwd=tmp_path
    ).stdout
    core = [line for line in listed.splitlines() if line.startswith("core.")]
    assert sorted(core) == ["core.askpass=", "core.fsmonitor=false", "core.hookspath=/dev/null"]
    got = subprocess.run(
        ["git", "config", "--get-urlmatch", "http.extraHeader", f"{url}/info/refs"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert got == header
    other = subprocess.run(
        ["git", "config", "--get-urlmatch", "http.extraHeader", "http://127.0.0.1:9/other.git"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert other == ""
    # and the key is literal: an env key with quote and bracket is not parsed as a section
    hostile = dict(env, GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0='http.x"][core]fsmonitor=y.z')
    hostile["GIT_CONFIG_VALUE_0"] = "v"
    listed = subprocess.run(
        ["git", "config", "--list"], env=hostile, capture_output=True, text=True, cwd=tmp_path
    ).stdout
    assert not [line for line in listed.splitlines() if line.startswith("core.")]


def test_config_text_never_holds_a_build_field():
    """repo2docker's Python config is admin text only: it takes no build at all."""
    import inspect

    assert list(inspect.signature(Builder.config_text).parameters) == ["self"]
    b = Builder(build_network="none", repo2docker_config="c.Repo2Docker.user_id = 1000")
    text = b.config_text()
    assert '["--network", "none"]' in text and "c.Repo2Docker.user_id = 1000" in text


def test_relative_submodule_urls_resolve_against_the_canonical_parent():
    parent = parse_repo_url("https://git.example.org/org/repo.git")
    assert resolve_submodule_url("../lib.git", parent) == "https://git.example.org/org/lib.git"
    assert resolve_submodule_url("./sub", parent) == "https://git.example.org/org/repo.git/sub"
    assert resolve_submodule_url("../../x/y", parent) == "https://git.example.org/x/y"
    assert resolve_submodule_url("git://h/x", parent) == "git://h/x"


# -- fetching from real servers -------------------------------------------------------------------
def test_fetch_checks_out_the_sha(git_server, tmp_path):
    repo = git_server.repos["hello"]
    dest = tmp_path / "out"
    f = fetcher(tmp_path)
    f.fetch(f.check(git_server.url("hello"), "repository"), str(dest), repo.tags["v1"])
    assert (dest / "VERSION").read_text() == "1\n"
    assert git(dest, "rev-parse", "HEAD") == repo.tags["v1"]
    # the checkout records the canonical URL; no hooks were installed
    assert git(dest, "remote", "get-url", "origin") == git_server.url("hello")
    hooks = dest / ".git" / "hooks"
    assert not hooks.exists() or not any(hooks.iterdir())


def test_internal_address_refused_unless_allowed(git_server, tmp_path):
    f = fetcher(tmp_path, networks=[])
    with pytest.raises(FetchError, match="internal network"):
        f.fetch(f.check(git_server.url("hello"), "repository"), str(tmp_path / "o"), "a" * 40)
    assert not (tmp_path / "o").exists()  # refused before git ran


def test_connection_is_pinned_to_the_checked_address(private_http, git_server, tmp_path):
    """git connects to the address the policy checked, never to what DNS says later: a name
    that does not resolve at all is fetched from the pinned address."""
    base, seen = private_http
    port = base.rsplit(":", 1)[1]

    class Pinned(NetPolicy):
        def resolve_checked_sync(self, host, port):  # what a rebinding name answered then
            assert host == "pinned.invalid"
            return ["127.0.0.1"]

    url = f"http://pinned.invalid:{port}/hello"
    f = Fetcher(
        allowed_patterns=[r"^http://pinned\.invalid:\d+/"],
        policy=Pinned(LOOPBACK),
        home=str(tmp_path / "home"),
        credentials=Credentials(USER, PASSWORD),
        credentials_origin=f"http://pinned.invalid:{port}",
    )
    f.fetch(f.check(url, "repository"), str(tmp_path / "o"), git_server.repos["hello"].head)
    assert (tmp_path / "o" / "VERSION").read_text() == "3\n"
    assert seen  # reached through the pin (pinned.invalid has no DNS answer)


def test_redirect_to_another_port_is_not_followed(private_http, git_server, tmp_path):
    """Defect 2 (build side): a 301 to another loopback server fails the fetch; the other
    server sees no request."""
    target, seen = private_http
    with HostileHTTPServer("redirect", target=target) as redirect:
        base = redirect.base
        f = fetcher(tmp_path, patterns=[rf"^{base}/"], credentials=Credentials(USER, PASSWORD))
        url = f.check(f"{base}/hello", "repository")
        f.credentials_origin = url.origin
        with pytest.raises(FetchError, match="git clone"):
            f.fetch(url, str(tmp_path / "o"), git_server.repos["hello"].head)
        assert redirect.requests  # it was asked, and answered 301
    assert seen == []


def test_submodules_allowed_and_refused(git_server, served, tmp_path):
    hello = git_server.repos["hello"]
    name, path = served()
    head = add_submodule(path, git_server.url("hello"), "lib", hello.tags["v2"])
    # allowed: fetched at the recorded commit
    f = fetcher(tmp_path)
    f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "ok"), head)
    assert (tmp_path / "ok" / "lib" / "VERSION").read_text() == "2\n"

    # the same repository when the allow-list admits only the top repository: fails, naming it
    only_top = [rf"^git://127\.0\.0\.1:\d+/{name}$"]
    f = fetcher(tmp_path, patterns=only_top)
    with pytest.raises(FetchError, match=r"submodule 'lib' .*not allowed"):
        f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "no"), head)

    # turned off: the checkout works, the submodule stays empty
    f = fetcher(tmp_path, patterns=only_top, submodules=False)
    f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "off"), head)
    assert list((tmp_path / "off" / "lib").iterdir()) == []


def test_relative_and_nested_submodules(git_server, served, tmp_path):
    inner_name, inner = served("inner")
    inner_head = add_submodule(inner, "../hello", "deep", git_server.repos["hello"].tags["v1"])
    outer_name, outer = served("outer")
    head = add_submodule(outer, f"../{inner_name}", "mid", inner_head)
    f = fetcher(tmp_path)
    f.fetch(f.check(git_server.url(outer_name), "repository"), str(tmp_path / "o"), head)
    assert (tmp_path / "o" / "mid" / "deep" / "VERSION").read_text() == "1\n"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc",
        "/srv/git/hello",
        "ext::sh -c touch% /tmp/pwned",
        "https://example.invalid/not-on-the-list.git",
    ],
)
def test_submodule_urls_outside_the_model_or_list_fail_naming_them(
    git_server, served, tmp_path, url
):
    name, path = served()
    head = add_submodule(path, url, "bad", git_server.repos["hello"].head)
    f = fetcher(tmp_path)
    with pytest.raises(FetchError, match="submodule 'bad'"):
        f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "o"), head)


def test_git_allow_protocol_blocks_file_submodules_in_git_itself(git_server, served, tmp_path):
    """Below the URL model: even git's own submodule machinery, run with our environment,
    refuses a file:// submodule (GIT_ALLOW_PROTOCOL names only the fetched scheme)."""
    hello = git_server.repos["hello"]
    name, path = served()
    head = add_submodule(path, f"file://{hello.path}", "lib", hello.head)
    dest = tmp_path / "o"
    git(tmp_path, "clone", "-q", git_server.url(name), str(dest))
    git(dest, "checkout", "-q", head)
    env = git_environment(parse_repo_url(git_server.url(name)), str(tmp_path / "home"))
    # even with protocol.file.allow=always from the command line, GIT_ALLOW_PROTOCOL wins
    res = subprocess.run(
        ["git", "-c", "protocol.file.allow=always", "submodule", "update", "--init"],
        cwd=dest, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode != 0
    assert "transport 'file' not allowed" in res.stderr
    assert not (dest / "lib" / "VERSION").exists()


def test_build_fields_never_reach_a_dockerfile_repo2docker_generates(tmp_path):
    """repo2docker pastes its ``--label`` values into ``LABEL k="v"`` lines of the Dockerfiles
    its buildpacks generate: the build's labels (owner, name, repo, ref: user-sent) must not go
    that way. They reach ``docker buildx build`` as ``--label k=v`` argv elements instead, from
    JSON in the environment (config_text is constant)."""
    import json

    from repo2docker.__main__ import make_r2d
    from repo2docker.buildpacks.base import BaseImage

    from r2d_core.builders import LABELS_ENV
    from r2d_core.models import Build

    owner = 'q"uote x="y'
    build = Build(
        id="b1",
        owner=owner,
        name="label-name",
        repo="https://git.example.org/org/label-repo.git",
        ref="label-ref",
        sha="a" * 40,
        image="r2d-x:" + "a" * 40,
    )
    b = Builder(build_network="none")
    spec = b.fetch_spec(build, str(tmp_path), ["jupyter-repo2docker"])
    config = tmp_path / "repo2docker_config.py"
    config.write_text(spec["config"]["text"])
    argv = spec["exec"][1:]
    assert not [a for a in argv if owner in a or "label-repo" in a or "label-ref" in a]
    (tmp_path / "repo").mkdir()
    r2d = make_r2d(argv)
    pack = BaseImage(base_image="r2d-test/debian:bookworm")
    pack.labels.update(r2d.labels)
    dockerfile = pack.render()
    assert owner not in dockerfile and "label-repo" not in dockerfile
    # ... and the labels do reach buildx, exactly, through the constant config text
    env = dict(spec["exec_env"])
    assert json.loads(env[LABELS_ENV])["repo2docker-service.owner"] == owner
    from traitlets.config import Config, PyFileConfigLoader

    old = os.environ.get(LABELS_ENV)
    os.environ[LABELS_ENV] = env[LABELS_ENV]
    try:
        loaded: Config = PyFileConfigLoader(str(config)).load_config()
    finally:
        if old is None:
            del os.environ[LABELS_ENV]
        else:
            os.environ[LABELS_ENV] = old
    args = loaded.DockerEngine.extra_buildx_build_args
    assert args[:2] == ["--network", "none"]
    assert f"repo2docker-service.owner={owner}" in args
    assert args[args.index(f"repo2docker-service.owner={owner}") - 1] == "--label"


def test_a_dripping_server_is_given_up_on_at_the_deadline(tmp_path):
    """The fetch stage's total time is bounded (Builder.fetch_timeout): a git server that
    drips a byte at a time fails the fetch at the deadline, not never."""
    import time

    from tests.harness.hostile import HostileGitServer

    with HostileGitServer("drip", interval=0.1) as server:
        f = fetcher(tmp_path, deadline=time.monotonic() + 2)
        t0 = time.monotonic()
        with pytest.raises(FetchError, match="took too long"):
            f.fetch(f.check(server.url(), "repository"), str(tmp_path / "o"), "a" * 40)
        assert time.monotonic() - t0 < 10
        assert server.requests == 1


def test_git_output_is_kept_bounded():
    """What git prints (a hostile server's "remote:" lines reach its stderr) is kept bounded:
    the head of stdout (with an overflow flag), the tail of stderr."""
    from r2d_core.fetch import _Drain

    for keep in ("head", "tail"):
        proc = subprocess.Popen(
            ["sh", "-c", "head -c 300000 /dev/zero; printf END"], stdout=subprocess.PIPE
        )
        drain = _Drain(proc.stdout, 1000, keep=keep)
        proc.wait()
        drain.join()
        assert len(drain.data) == 1000
        assert drain.data.endswith(b"END") == (keep == "tail")
        assert drain.overflow == (keep == "head")


def test_repository_over_the_byte_budget_fails(git_server, tmp_path):
    """Builder.fetch_max_bytes: the object stores of all clones count against one budget."""
    repo = git_server.repos["hello"]
    f = fetcher(tmp_path, max_bytes=1000)
    with pytest.raises(FetchError, match="larger than 1000 bytes"):
        f.fetch(f.check(git_server.url("hello"), "repository"), str(tmp_path / "o"), repo.head)
    f = fetcher(tmp_path, max_bytes=10_000_000)
    f.fetch(f.check(git_server.url("hello"), "repository"), str(tmp_path / "ok"), repo.head)


@pytest.mark.parametrize("host", ["[::1]", "pinned6.invalid"])
def test_ipv6_literal_and_ipv6_pin(git_server, tmp_path, host):
    """IPv6: a literal host is fetched as it is (the checked address is the literal); a name
    pinned to an IPv6 address reaches it through ``http.curloptResolve`` with brackets."""

    class Pinned6(NetPolicy):
        def resolve_checked_sync(self, name, port):
            if name == "pinned6.invalid":
                return ["::1"]
            return super().resolve_checked_sync(name, port)

    with GitHTTPServer(git_server.repos["hello"].path.parent, host="::1") as server:
        url = f"http://{host}:{server.port}/hello"
        f = Fetcher(
            allowed_patterns=[r"^http://(\[::1\]|pinned6\.invalid):\d+/"],
            policy=Pinned6(["::1/128"]),
            home=str(tmp_path / "home"),
            credentials=Credentials(USER, PASSWORD),
            credentials_origin=f"http://{host}:{server.port}",
        )
        f.fetch(f.check(url, "repository"), str(tmp_path / "o"), git_server.repos["hello"].head)
        assert (tmp_path / "o" / "VERSION").read_text() == "3\n" and server.seen


def test_credentials_go_to_the_repository_origin_only(git_server, served, tmp_path):
    """A submodule on the repository's own origin gets the credentials (a private org's
    submodules); one on another origin never sees them, even though the allow-list admits it."""
    root = git_server.repos["hello"].path.parent
    with GitHTTPServer(root) as s1, GitHTTPServer(root) as s2:
        own, other, base1, base2 = s1.auths, s2.auths, s1.base, s2.base
        hello = git_server.repos["hello"]
        name, path = served()
        head = add_submodule(path, "../hello", "lib", hello.tags["v2"])
        patterns = [r"^http://127\.0\.0\.1:\d+/"]
        f = fetcher(tmp_path, patterns=patterns, credentials=Credentials(USER, PASSWORD))
        url = f.check(f"{base1}/{name}", "repository")
        f.credentials_origin = url.origin
        f.fetch(url, str(tmp_path / "same"), head)
        assert (tmp_path / "same" / "lib" / "VERSION").read_text() == "2\n"
        assert own and all(a and a.startswith("Basic ") for a in own[1:])

        name2, path2 = served()
        head2 = add_submodule(path2, f"{base2}/hello", "lib", hello.tags["v2"])
        f = fetcher(tmp_path, patterns=patterns, credentials=Credentials(USER, PASSWORD))
        url = f.check(f"{base1}/{name2}", "repository")
        f.credentials_origin = url.origin
        with pytest.raises(FetchError, match="submodule 'lib'"):
            f.fetch(url, str(tmp_path / "other"), head2)
        assert other and not any(other)  # asked, but never with the credentials


_FAKE_SSH = """#!/bin/sh
# stands in for ssh: records its arguments, then runs the remote command locally
printf '%s\\n' "$@" >> {log}
for last; do :; done
exec sh -c "$last"
"""


def test_ssh_connects_to_the_checked_address(git_server, tmp_path, monkeypatch):
    """ssh://: git is given the checked address in place of the name (no shell line carries
    it: GIT_SSH_COMMAND is a constant). A stand-in ssh on PATH runs git-upload-pack locally."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ssh-args"
    (bin_dir / "ssh").write_text(_FAKE_SSH.format(log=log))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    repo = git_server.repos["hello"]
    f = fetcher(tmp_path, patterns=[r"^ssh://git@localhost/"])
    f.fetch(
        f.check(f"ssh://git@localhost{repo.path}", "repository"), str(tmp_path / "o"), repo.head
    )
    assert (tmp_path / "o" / "VERSION").read_text() == "3\n"
    args = log.read_text().splitlines()
    assert any(a in ("git@127.0.0.1", "git@::1") for a in args), args
    assert not [a for a in args if "localhost" in a]
    assert git(tmp_path / "o", "remote", "get-url", "origin") == f"ssh://git@localhost{repo.path}"
