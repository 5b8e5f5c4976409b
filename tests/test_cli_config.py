"""``r2d-service generate-config`` and ``generate-hub-config --name binder`` (no Hub needed)."""

from __future__ import annotations

import os
import subprocess
import sys

from traitlets.config import Config


def _run(*args: str, cwd: str | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-m", "r2d_tornado.app", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    ).stdout


def test_generate_config_has_every_class(tmp_path):
    out = tmp_path / "r2d_service_config.py"
    _run("generate-config", "--output", str(out))
    text = out.read_text()
    for option in (
        "c.BuildManager.allowed_repo_patterns",
        "c.DockerBuilder.image",
        "c.Registry.url",
        "c.Registry.password",
        "c.RepoProviders.url_templates",
    ):
        assert f"# {option}" in text, option
    # the file is a valid config file as written
    c = Config()
    exec(compile(text, str(out), "exec"), {"c": c, "get_config": lambda: c})


def test_generate_hub_config_for_fancy_profiles():
    out = _run("generate-hub-config", "--name", "binder")
    c = Config()
    exec(compile(out, "hub_config", "exec"), {"c": c})
    (service,) = c.JupyterHub.services
    assert service["name"] == "binder"
    # an absolute command: the Hub's PATH need not include the service's venv
    command = service["command"][0]
    assert os.path.isabs(command) and os.access(command, os.X_OK), command
    user = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    # fancy-profiles creates its token with POST /hub/api/users/<name>/tokens: 'self' holds
    # tokens!user; the token then carries the build scope of the user's own namespace
    assert {"self", "access:services!service=binder", "custom:repo2docker:build!user"} <= set(
        user["scopes"]
    )
    assert "/services/binder/build/gh/" in out and "setup_ui(c)" in out
    # other names get no fancy-profiles notes (fancy-profiles only ever calls 'binder')
    assert "setup_ui" not in _run("generate-hub-config", "--name", "repo2docker")
