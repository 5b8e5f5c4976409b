"""Hatchling build hook: bundle the browser UI before a wheel (or editable install) is made.

The UI's sources live in ``r2d_tornado/frontend`` (an npm project); ``npm run build`` bundles them
with esbuild into ``r2d_tornado/static/dist`` (``app.js``, ``app.css`` and on-demand chunks), which
tornado serves. The bundle is gitignored, so a fresh clone has none: this hook runs
``npm ci && npm run build`` whenever the bundle is missing or older than any of its sources, and does
nothing otherwise (an sdist that carries a fresh bundle builds a wheel without Node.js).
``pyproject.toml`` lists the bundle as build ``artifacts`` so hatch packs it despite .gitignore.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

__all__ = ["BUNDLE_FILES", "FrontendBuildHook", "bundle_staleness", "needs_npm_ci"]

#: the npm project, relative to the repository root
FRONTEND_DIR = Path("r2d_tornado", "frontend")
#: where ``npm run build`` writes (see frontend/build.mjs)
DIST_DIR = Path("r2d_tornado", "static", "dist")
#: the entry files page.html loads; chunks come and go with them
BUNDLE_FILES = ("app.js", "app.css")
#: files outside src/ whose change changes the bundle
_PROJECT_FILES = ("package.json", "package-lock.json", "build.mjs", "tsconfig.json")


def _source_files(frontend: Path) -> Iterator[Path]:
    for name in _PROJECT_FILES:
        path = frontend / name
        if path.is_file():
            yield path
    src = frontend / "src"
    if src.is_dir():
        yield from (p for p in src.rglob("*") if p.is_file())


def bundle_staleness(root: str | os.PathLike[str]) -> str | None:
    """Why the bundle under ``root`` must be (re)built, or None when it is up to date.

    Up to date means every bundle file exists and none is older than any source file. Equal times
    count as fresh: a reproducible sdist gives all its files one and the same time.
    """
    root = Path(root)
    outputs = [root / DIST_DIR / name for name in BUNDLE_FILES]
    missing = [p.name for p in outputs if not p.is_file()]
    if missing:
        return f"{', '.join(missing)} missing in {DIST_DIR}"
    sources = list(_source_files(root / FRONTEND_DIR))
    if not sources:
        return None  # no sources to build from (an installed tree): the bundle is all there is
    newest = max(sources, key=lambda p: p.stat().st_mtime)
    oldest_output = min(p.stat().st_mtime for p in outputs)
    if newest.stat().st_mtime > oldest_output:
        return f"{newest.relative_to(root)} is newer than the bundle"
    return None


def needs_npm_ci(frontend: str | os.PathLike[str]) -> bool:
    """True unless node_modules was installed from the current package-lock.json.

    npm records what it installed in node_modules/.package-lock.json; when that is newer than the
    lock file and package.json, ``npm ci`` (which deletes and refetches everything) is skipped.
    """
    frontend = Path(frontend)
    installed = frontend / "node_modules" / ".package-lock.json"
    if not installed.is_file():
        return True
    stamp = installed.stat().st_mtime
    return any(
        (frontend / name).stat().st_mtime > stamp
        for name in ("package-lock.json", "package.json")
        if (frontend / name).is_file()
    )


class FrontendBuildHook(BuildHookInterface):
    """Builds the UI bundle for the wheel and sdist targets (editable installs included)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        reason = bundle_staleness(root)
        if reason is None:
            self.app.display_debug("repo2docker-service UI bundle is up to date")
            return
        frontend = root / FRONTEND_DIR
        if not (frontend / "package.json").is_file():
            raise RuntimeError(
                f"The UI bundle must be built ({reason}), but {FRONTEND_DIR}/package.json is "
                "missing: build from a git checkout or a complete sdist."
            )
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                f"The UI bundle must be built ({reason}) and that needs npm: install Node.js 18 or "
                "newer with npm (Debian: apt-get install nodejs npm), then build again."
            )
        self.app.display_info(f"Building the repo2docker-service UI: {reason}")
        if needs_npm_ci(frontend):
            self._run([npm, "ci", "--no-audit", "--no-fund"], frontend)
        self._run([npm, "run", "build"], frontend)
        still = bundle_staleness(root)
        if still is not None:
            raise RuntimeError(f"npm run build finished, but the UI bundle is not usable: {still}")

    def _run(self, cmd: list[str], cwd: Path) -> None:
        self.app.display_info(f"$ npm {' '.join(cmd[1:])}")
        result = subprocess.run(cmd, cwd=cwd, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[1:])} failed with exit status {result.returncode} in {cwd}; "
                "its output is above."
            )
