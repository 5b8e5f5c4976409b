"""Red-team cases against the fetch stage: what a hostile repository's checkout can make the
service (or repo2docker, which runs on the service's host with the LocalProcessBuilder) read.

repo2docker reads files of the checkout on the host: ``apt.txt`` is pasted into the generated
Dockerfile (or echoed in its error), ``runtime.txt``, ``environment.yml``, ``requirements.txt``
are parsed. A symlink in the repository that points outside the checkout would make it read a
file of the host (``/etc/shadow``, the service's config, ``/proc/self/environ`` with the Hub API
token) and print it in the build log.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from r2d_core.fetch import FetchError
from tests.test_fetch import fetcher, git


@pytest.fixture
def served(git_server):
    """A new served repository (one commit) in the git daemon; returns (name, path)."""
    counter = iter(range(10_000))

    def make(prefix: str = "rt") -> tuple[str, Path]:
        name = f"{prefix}-{os.getpid()}-{next(counter)}"
        while name in git_server.repos:
            name = f"{prefix}-{os.getpid()}-{next(counter)}"
        return name, git_server.add_repo(name, {"README.md": f"# {name}\n"}).path

    return make


def _commit_links(path: Path, links: dict[str, str], files: dict[str, str] | None = None) -> str:
    for name, content in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
        git(path, "add", name)
    for name, target in links.items():
        link = path / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
        git(path, "add", name)
    git(path, "commit", "-q", "-m", "links")
    return git(path, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    "link, target",
    [
        ("apt.txt", "/etc/passwd"),  # absolute
        ("binder/apt.txt", "../../../../../../../../etc/passwd"),  # climbing out
        ("runtime.txt", "/proc/self/environ"),  # the process's environment (tokens)
        ("binder", "/etc"),  # a directory: binder/apt.txt would be /etc/apt.txt
        ("requirements.txt", "../repo2docker_config.py"),  # next to the checkout
    ],
)
def test_symlink_out_of_the_checkout_fails_the_fetch(git_server, served, tmp_path, link, target):
    name, path = served()
    head = _commit_links(path, {link: target})
    f = fetcher(tmp_path)
    with pytest.raises(FetchError, match=rf"{link!s}.*points outside the repository"):
        f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "o"), head)


def test_symlink_chain_out_of_the_checkout_fails(git_server, served, tmp_path):
    # a link to a link inside the checkout that points out: resolved to the end
    name, path = served()
    head = _commit_links(path, {"a": "b", "b": "/etc/passwd"})
    f = fetcher(tmp_path)
    with pytest.raises(FetchError, match="points outside the repository"):
        f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "o"), head)


def test_symlink_in_a_submodule_out_of_the_checkout_fails(git_server, served, tmp_path):
    from tests.test_fetch import add_submodule

    inner_name, inner = served("inner")
    inner_head = _commit_links(inner, {"apt.txt": "../../../../../etc/passwd"})
    outer_name, outer = served("outer")
    head = add_submodule(outer, f"../{inner_name}", "lib", inner_head)
    f = fetcher(tmp_path)
    with pytest.raises(FetchError, match="points outside the repository"):
        f.fetch(f.check(git_server.url(outer_name), "repository"), str(tmp_path / "o"), head)


def test_symlinks_inside_the_checkout_are_kept(git_server, served, tmp_path):
    name, path = served()
    head = _commit_links(
        path,
        {"binder/apt.txt": "../packages.txt", "docs": "binder", "dangling": "nothere"},
        files={"packages.txt": "curl\n"},
    )
    f = fetcher(tmp_path)
    dest = tmp_path / "o"
    f.fetch(f.check(git_server.url(name), "repository"), str(dest), head)
    assert (dest / "binder" / "apt.txt").read_text() == "curl\n"
    assert os.readlink(dest / "docs") == "binder"
    assert os.path.islink(dest / "dangling")


def test_symlinked_gitmodules_is_not_read(git_server, served, tmp_path):
    # git refuses a symlinked .gitmodules on checkout; either way the fetch stage never reads
    # a file outside the checkout through it
    name, path = served()
    secret = tmp_path / "secret"
    secret.write_text('[submodule "x"]\n\tpath = x\n\turl = file:///etc\n')

    # `git add` and `update-index` refuse it: write the tree by hand, as an attacker would
    def run(*args: str, stdin: str = "") -> str:
        return subprocess.run(
            ["git", *args], cwd=path, input=stdin, capture_output=True, text=True, check=True
        ).stdout.strip()

    blob = run("hash-object", "-w", "--stdin", stdin=str(secret))
    readme = run("rev-parse", "HEAD:README.md")
    tree = run(
        "mktree",
        stdin=f"120000 blob {blob}\t.gitmodules\n100644 blob {readme}\tREADME.md\n"
        f"160000 commit {'1' * 40}\tx\n",
    )
    head = git(path, "commit-tree", tree, "-p", "HEAD", "-m", "symlinked .gitmodules")
    git(path, "update-ref", "refs/heads/main", head)
    f = fetcher(tmp_path)
    with pytest.raises(FetchError, match=r"invalid path|points outside"):
        f.fetch(f.check(git_server.url(name), "repository"), str(tmp_path / "o"), head)


async def test_local_builds_inherit_none_of_the_services_secrets(git_server, tmp_path, monkeypatch):
    """The LocalProcessBuilder's build runs repo2docker, which reads the (hostile) repository:
    its environment must not hold the service's Hub API token or registry password."""
    import json
    import sys

    from r2d_core.builders import LocalProcessBuilder
    from r2d_core.engine import DockerEngine
    from r2d_core.models import Build

    secrets = {
        "JUPYTERHUB_API_TOKEN": "hub-token-secret",
        "JPY_API_TOKEN": "old-hub-token-secret",
        "R2D_REGISTRY_PASSWORD": "registry-secret",
        "JUPYTERHUB_CLIENT_ID": "service-r2d",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # kept: builds may need it
    dump = "import json, os, sys; print(json.dumps(dict(os.environ)))"
    builder = LocalProcessBuilder(
        engine=DockerEngine(host="unix:///nonexistent.sock"),
        command=[sys.executable, "-c", dump],
        allowed_repo_patterns=[r"^git://127\.0\.0\.1:\d+/"],
        allowed_networks=["127.0.0.0/8"],
    )
    repo = git_server.repos["hello"]
    build = Build(
        id="0123456789ab",
        owner="alice",
        name="hello",
        repo=git_server.url("hello"),
        ref="main",
        sha=repo.head,
        image="r2d-alice-hello:x",
    )
    process = await builder.start(build)
    lines = [line async for line in process.output()]
    assert await process.wait() == 0, lines
    await process.cleanup()
    env = json.loads(next(line for line in lines if line.startswith("{") and "PATH" in line))
    text = json.dumps(env)
    assert [k for k, v in secrets.items() if k in env or v in text] == []
    assert env["HTTPS_PROXY"] == "http://proxy.invalid:3128"
    assert env["DOCKER_HOST"] == "unix:///nonexistent.sock"
