"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s bench``, ``nox -s demo``, ``nox -s docs``,
``nox -s tests-3.10``.

Sessions reuse their virtualenvs (``nox.options.reuse_existing_virtualenvs``): the dependency set is
large (JupyterHub, repo2docker) and CI runs every session once on a fresh clone anyway.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]
# interpreters come from this machine only: never a Python build downloaded from the internet
# (nox before 2025 has neither the option nor the download)
if hasattr(nox.options, "download_python"):
    nox.options.download_python = "never"

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_python310() -> str | None:
    """A working Python 3.10: ``$R2D_PYTHON310``, else ``python3.10`` on PATH, else pyenv's.

    Each candidate is run, not only looked up: a pyenv shim ``python3.10`` is on PATH even when
    no 3.10 is selected, and fails when called.
    """
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [
        os.environ.get("R2D_PYTHON310", ""),
        shutil.which("python3.10") or "",
        *sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.10*", "bin", "python3.10"))),
        "/usr/bin/python3.10",
        "/usr/local/bin/python3.10",
    ]
    for candidate in filter(None, candidates):
        try:
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if version == "True":
            return candidate
    return None


#: the supported minimum (TLJH on Ubuntu 22.04 runs the plugin in the Hub's Python 3.10): what
#: breaks there and nowhere else (3.11+ APIs, stricter stdlib parsers); about a minute
PY310_TESTS = [
    "tests/test_aio.py",
    "tests/test_timestamps.py",
    "tests/test_urls.py",
    "tests/test_validation.py",
    "tests/test_schema.py",
    "tests/test_naming.py",
    "tests/test_scopes.py",
    "tests/test_env_settings.py",
    "tests/test_logs.py",
    "tests/test_netpolicy.py",
    "tests/test_refs.py",
    "tests/test_refs_hostile.py",
    "tests/test_registry_respx.py",
    "tests/test_registry_config.py",
    "tests/test_scheduler.py",
    "tests/test_cli_config.py",
    "tests/test_pages.py",
    # the plugin as TLJH loads it, and real Hubs running builds in their own event loop
    "tests/test_tljh_config.py",
    "tests/test_tljh.py",
    "tests/test_tljh_recipes.py",
]
#: the behaviour suite against the TLJH adapter only (the standalone service runs on the
#: image's Python, 3.11): authorization matrix, builds, images, events, UI pages (~25 s)
PY310_TLJH_SUITE = ["tests/test_service.py", "-k", "tljh and not recipes"]


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Every test, against real dockerd, git daemon, registry, JupyterHub and Chromium."""
    session.run("bash", "scripts/install-system.sh", external=True)
    _install(session, "test,oras,docs")
    args = session.posargs or ["-q"]
    session.run("python", "-m", "pytest", *args)


@nox.session(name="tests-3.10", python=find_python310() or "3.10")
def tests_310(session: nox.Session) -> None:
    """Python 3.10, the TLJH Hub's on Ubuntu 22.04: unit tests and the plugin on real Hubs.

    The tests are :data:`PY310_TESTS`, then :data:`PY310_TLJH_SUITE`; posargs replace both.
    ``./dev test`` runs this session when :func:`find_python310` finds an interpreter, and says
    so when it does not."""
    session.run("bash", "scripts/install-system.sh", external=True)
    _install(session, "test,oras")
    if session.posargs:
        session.run("python", "-m", "pytest", *session.posargs)
        return
    session.run("python", "-m", "pytest", "-q", *PY310_TESTS)
    session.run("python", "-m", "pytest", "-q", *PY310_TLJH_SUITE)


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
