"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s bench``, ``nox -s demo``, ``nox -s docs``.

Sessions reuse their virtualenvs (``nox.options.reuse_existing_virtualenvs``): the dependency set is
large (JupyterHub, repo2docker) and CI runs every session once on a fresh clone anyway.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = os.path.dirname(os.path.abspath(__file__))


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Every test, against real dockerd, git daemon, registry, JupyterHub and Chromium."""
    session.run("bash", "scripts/install-system.sh", external=True)
    _install(session, "test,oras,docs")
    args = session.posargs or ["-q"]
    session.run("python", "-m", "pytest", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check; bandit (security findings; reasons in pyproject.toml and in
    `# nosec BXXX - why` comments)."""
    session.install("ruff", "bandit[toml]>=1.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("bandit", "-q", "-c", "pyproject.toml", "-r", "r2d_core", "r2d_tornado", "r2d_tljh")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print a table (targets are documented next to each row; not a pass/fail test)."""
    session.run("bash", "scripts/install-system.sh", external=True)
    _install(session, "test,oras")
    session.run("python", "-m", "tests.bench", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """A demo JupyterHub with the service on a private local Docker engine (Ctrl-C stops all)."""
    session.run("bash", "scripts/install-system.sh", external=True)
    _install(session, "test,oras")
    session.run("python", "-m", "tests.harness.demo", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors."""
    _install(session, "docs")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
