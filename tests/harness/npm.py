"""npm packages for tests (real clients such as ``@jupyterhub/binderhub-client``), cached.

Each package set is installed once with the ordinary ``npm`` client into
``$R2D_HARNESS_CACHE/npm/<name>`` (a file lock makes concurrent runs install once); scripts run
with ``NODE_PATH`` pointing at its ``node_modules``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from .images import file_lock
from .procs import HarnessError, state_root

__all__ = ["BINDERHUB_CLIENT", "NODE", "npm_packages"]

NODE = shutil.which("node") or "/usr/bin/node"
#: the version jupyterhub-fancy-profiles 0.7 bundles
BINDERHUB_CLIENT = {"@jupyterhub/binderhub-client": "0.5.0"}


def npm_packages(name: str, packages: dict[str, str]) -> Path:
    """A directory whose ``node_modules`` holds ``packages`` (``{"pkg": "version"}``)."""
    base = Path(os.environ.get("R2D_HARNESS_CACHE") or state_root() / "cache") / "npm"
    key = "-".join(f"{p.replace('/', '+')}@{v}" for p, v in sorted(packages.items()))
    target = base / f"{name}-{key}"
    with file_lock(base / f"{name}.lock"):
        if (target / ".complete").exists():
            return target
        npm = shutil.which("npm")
        if npm is None:
            raise HarnessError("npm is not installed (apt-get install npm)")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        manifest = {"name": f"r2d-test-{name}", "private": True, "type": "module"}
        manifest["dependencies"] = packages  # type: ignore[assignment]
        (target / "package.json").write_text(json.dumps(manifest))
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode:
            raise HarnessError(f"npm install in {target} failed:\n{result.stderr[-2000:]}")
        (target / ".complete").write_text("")
    return target
