"""Fixture git repositories served read-only by ``git daemon`` on 127.0.0.1.

The repositories are made fresh for each :class:`GitServer` (shas differ between runs; tests read
them from ``server.repos[name]``). Build output lines are printed with ``printf 'r2d-%s ...' line``
so the command that buildx echoes (``#5 [2/2] RUN ...``) never itself matches ``r2d-line N``:
counting matching lines in a log counts exactly the lines the build printed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .images import BUSYBOX_IMAGE
from .procs import HarnessError, ManagedProcess, free_port, new_run_dir, remove_tree, wait_for

__all__ = [
    "FAIL_EXIT_CODE",
    "FAIL_LINES",
    "FIXTURES",
    "HELLO_LINES",
    "QUICK_LINES",
    "QUICK_SECONDS",
    "SLOW_SECONDS",
    "FixtureRepo",
    "GitServer",
]

#: lines ``r2d-line 1`` .. ``r2d-line 20`` printed by the ``hello`` build
HELLO_LINES = 20
#: lines ``r2d-fail 1`` .. ``r2d-fail 5`` printed by ``fails`` before its RUN exits with 3
FAIL_LINES = 5
FAIL_EXIT_CODE = 3
#: ``slow`` prints ``r2d-slow N`` once a second for this long (cancel / restart tests)
SLOW_SECONDS = 120
#: ``quick`` prints ``r2d-quick 1``, sleeps this long, then ``r2d-quick 2`` and ``3`` (benchmarks)
QUICK_SECONDS = 3
QUICK_LINES = 3

#: the fixture repositories every GitServer serves
FIXTURES = ("hello", "fails", "slow", "quick", "requirements")

_GIT_ENV = {
    # the host's git configuration must not change what the fixtures look like
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "R2D Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
    "GIT_COMMITTER_NAME": "R2D Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


def _dockerfile(run: str) -> str:
    return f"FROM {BUSYBOX_IMAGE}\nCOPY . /srv/repo\nRUN {run}\n"


def _lines(word: str, count: int, sleep: str) -> str:
    return f"for i in $(seq 1 {count}); do printf 'r2d-%s %s\\n' {word} \"$i\"; sleep {sleep}; done"


@dataclass
class FixtureRepo:
    """What a test needs to know about one served repository."""

    name: str
    path: Path
    branches: dict[str, str] = field(default_factory=dict)
    #: tag name → commit sha (annotated tags peeled)
    tags: dict[str, str] = field(default_factory=dict)
    #: the sha ``HEAD`` (the default branch, ``main``) points to
    head: str = ""
    #: the history of ``main`` (HEAD), oldest first: ``commits[-1] == head``
    commits: list[str] = field(default_factory=list)


class GitServer:
    """``git daemon`` serving fixture repositories at ``url(name)`` = ``git://127.0.0.1:PORT/name``.

    Usage::

        with GitServer() as git:
            git.url("hello"); git.repos["hello"].tags["v2"]
            git.add_commit("hello", {"NEWS": "moved"})   # moves main, returns the new sha
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else new_run_dir("git")
        self.base = self.dir / "repos"
        self.port: int | None = None
        self.repos: dict[str, FixtureRepo] = {}
        self.process: ManagedProcess | None = None
        self._clock = 1_700_000_000  # deterministic, increasing commit dates

    # -- git plumbing ----------------------------------------------------------------------------

    def _git(self, repo: Path, *args: str, date: int | None = None) -> str:
        env = dict(os.environ, **_GIT_ENV)
        if date is not None:
            env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{date} +0000"
        res = subprocess.run(
            ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise HarnessError(f"git {' '.join(args)} in {repo} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def _tick(self) -> int:
        self._clock += 60
        return self._clock

    def _commit(self, repo: Path, files: Mapping[str, str], message: str) -> str:
        for rel, text in files.items():
            target = repo / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self._git(repo, "add", "--all")
        self._git(repo, "commit", "-q", "--allow-empty", "-m", message, date=self._tick())
        return self._git(repo, "rev-parse", "HEAD")

    def _refresh(self, name: str) -> FixtureRepo:
        """Re-read branches, tags, head and commits of ``name`` from git itself."""
        path = self.base / name
        branches = {}
        for line in self._git(
            path, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads"
        ).splitlines():
            branch, sha = line.split()
            branches[branch] = sha
        tags = {}
        for line in self._git(
            path,
            "for-each-ref",
            "--format=%(refname:short) %(*objectname) %(objectname)",
            "refs/tags",
        ).splitlines():
            parts = line.split()
            tags[parts[0]] = parts[1]  # peeled sha for annotated tags, else the object itself
        commits = self._git(path, "rev-list", "--reverse", "--topo-order", "HEAD").splitlines()
        repo = FixtureRepo(
            name=name,
            path=path,
            branches=branches,
            tags=tags,
            head=self._git(path, "rev-parse", "HEAD"),
            commits=commits,
        )
        self.repos[name] = repo
        return repo

    # -- repositories ----------------------------------------------------------------------------

    def add_repo(
        self, name: str, files: Mapping[str, str], message: str = "initial"
    ) -> FixtureRepo:
        """Create one more served repository with a single commit on ``main``."""
        path = self.base / name
        if path.exists():
            raise HarnessError(f"repository {name} exists already")
        path.mkdir(parents=True)
        self._git(path, "init", "-q", "-b", "main")
        self._commit(path, files, message)
        return self._refresh(name)

    def add_commit(
        self,
        name: str,
        files: Mapping[str, str] | None = None,
        *,
        branch: str = "main",
        message: str | None = None,
    ) -> str:
        """Commit ``files`` (default: a changed ``CHANGES`` file) on ``branch``; returns the sha.

        A branch that does not exist yet starts at the current ``HEAD``. The served repository's
        checked-out branch (what ``HEAD`` advertises) stays ``main``.
        """
        path = self.base / name
        current = self._git(path, "rev-parse", "--abbrev-ref", "HEAD")
        if branch != current:
            exists = self._git(path, "branch", "--list", branch)
            self._git(path, "checkout", "-q", *([] if exists else ["-b"]), branch)
        try:
            n = len(self.repos[name].commits) + 1 if name in self.repos else 1
            sha = self._commit(
                path, files or {"CHANGES": f"change {n}\n"}, message or f"change {n} on {branch}"
            )
        finally:
            if branch != current:
                self._git(path, "checkout", "-q", current)
        self._refresh(name)
        return sha

    def _make_fixtures(self) -> None:
        # hello: 3 commits on main (v1 = first, lightweight; v2 = second, annotated), dev = +1
        hello = self.base / "hello"
        hello.mkdir(parents=True)
        self._git(hello, "init", "-q", "-b", "main")
        files = {
            "Dockerfile": _dockerfile(_lines("line", HELLO_LINES, "0.02")),
            "README.md": "# hello\n\nA fixture repository of repo2docker-service's tests.\n",
            "VERSION": "1\n",
        }
        first = self._commit(hello, files, "hello: first")
        self._git(hello, "tag", "v1", first)
        second = self._commit(hello, {"VERSION": "2\n"}, "hello: second")
        self._git(hello, "tag", "-a", "v2", "-m", "release 2", second, date=self._tick())
        self._commit(hello, {"VERSION": "3\n"}, "hello: third")
        self._git(hello, "checkout", "-q", "-b", "dev")
        self._commit(hello, {"DEV": "work in progress\n"}, "hello: dev work")
        self._git(hello, "checkout", "-q", "main")
        self._refresh("hello")

        fail_run = _lines("fail", FAIL_LINES, "0.02") + f"; exit {FAIL_EXIT_CODE}"
        self.add_repo("fails", {"Dockerfile": _dockerfile(fail_run)})
        self.add_repo("slow", {"Dockerfile": _dockerfile(_lines("slow", SLOW_SECONDS, "1"))})
        # r2d-quick 1, a pause, r2d-quick 2 and 3 (printf repeats its format for extra arguments)
        fmt = "'r2d-%s %s\\n'"
        quick_run = f"printf {fmt} quick 1; sleep {QUICK_SECONDS}; printf {fmt} quick 2 quick 3"
        self.add_repo("quick", {"Dockerfile": _dockerfile(quick_run)})
        self.add_repo("requirements", {"requirements.txt": "numpy\n", "README.md": "# needs pip\n"})

    # -- lifecycle -------------------------------------------------------------------------------

    def url(self, name: str) -> str:
        if self.port is None:
            raise HarnessError("GitServer not started")
        return f"git://127.0.0.1:{self.port}/{name}"

    def ls_remote(self, name: str, timeout: float = 10) -> dict[str, str]:
        """``git ls-remote URL`` as ``{ref: sha}`` (through the daemon, like a client would)."""
        res = subprocess.run(
            ["git", "ls-remote", self.url(name)],
            env=dict(os.environ, **_GIT_ENV),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if res.returncode != 0:
            raise HarnessError(f"git ls-remote {self.url(name)} failed: {res.stderr.strip()}")
        refs = {}
        for line in res.stdout.splitlines():
            sha, ref = line.split("\t")
            refs[ref] = sha
        return refs

    def start(self, timeout: float = 15) -> GitServer:
        if not self.repos:
            self._make_fixtures()
        for attempt in range(3):  # another process may grab the free port before the daemon
            self.port = free_port()
            argv = [
                "git",
                "daemon",
                "--export-all",
                f"--base-path={self.base}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                "--reuseaddr",
                "--informative-errors",
                str(self.base),
            ]
            self.process = ManagedProcess(
                "git daemon",
                argv,
                self.dir / "git-daemon.log",
                env=dict(os.environ, **_GIT_ENV),
                pidfile=self.dir / "git-daemon.pid",
                reap_group=True,
            ).start()

            def ready() -> bool:
                assert self.process is not None
                self.process.check_running()
                try:
                    return "HEAD" in self.ls_remote("hello", timeout=2)
                except (HarnessError, subprocess.TimeoutExpired):
                    return False

            try:
                wait_for(ready, timeout, f"git daemon on port {self.port}", interval=0.05,
                         log_tail=self.process.log_tail)  # fmt: skip
                return self
            except (HarnessError, TimeoutError) as e:
                self.process.stop(timeout=5)
                # a lost race for the port makes the daemon exit at once: try another port
                if attempt == 2 or isinstance(e, TimeoutError):
                    raise HarnessError(f"git daemon did not start: {e}") from None
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
            self.process = None
        if self._own_dir:
            remove_tree(self.dir)

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<GitServer 127.0.0.1:{self.port} {sorted(self.repos)}>"
