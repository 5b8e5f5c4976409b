"""The documentation builds with warnings as errors, its generated references are complete, and
what it tells a new admin (settings, variables, snippets, paths, recipes) holds against the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("myst_parser", reason="docs extras not installed (pip install .[docs])")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = (DOCS / "reference" / "config.md").read_text()
    for trait in (
        "BuildManager.max_concurrent_builds",
        "DockerBuilder.image",
        "Registry.url",
        "LifecyclePolicy.keep_versions",
        "BuildOptions.allowed",
        "R2DPlugin.path",
    ):
        assert trait in config
    api = (DOCS / "reference" / "rest-api.md").read_text()
    assert "`GET /api/builds/{build_id}/logs`" in api
    assert (tmp_path / "index.html").exists()


# ---- what a new admin copies from the docs holds against the code ---------------------------------

ROOT = DOCS.parent
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]
#: generated from the code: checked by building them, not here
GENERATED = {DOCS / "reference" / "config.md", DOCS / "reference" / "rest-api.md"}


def _pages() -> list[Path]:
    return [p for p in PAGES if p not in GENERATED]


def _reference():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import traits_reference
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return traits_reference


def _documented_classes() -> dict[str, type]:
    ref = _reference()
    return {cls.__name__: cls for cls in map(ref._load, ref.CLASSES)}


def test_config_reference_shows_the_defaults_admins_get(monkeypatch):
    # settings whose default comes from a @default method (an env variable, another setting)
    monkeypatch.setenv("R2D_MAX_CONCURRENT_BUILDS", "7")  # the reference ignores the environment
    text = _reference().render()
    for entry in (
        "`BuildManager.max_concurrent_builds`\n: *Int*, default `2`.",
        "`BuildManager.build_timeout`\n: *Float*, default `3600.0`.",
        "`BuildManager.image_prefix`\n: *Unicode*, default `'r2d-'`.",
        "`LifecyclePolicy.prune_dangling_images`\n: *Bool*, default `True`.",
        "`LifecyclePolicy.prune_interval`\n: *Float*, default `3600.0`.",
        "`LifecyclePolicy.keep_failed_records`\n: *Int*, default `200`.",
        "`Registry.timeout`\n: *Float*, default `10.0`.",
        "`DockerEngine.host`\n: *Unicode*, default `'unix:///var/run/docker.sock'`.",
        "`BuildManager.builder_class`\n: *Type*, default `'r2d_core.builders.LocalProcessBuilder'`.",
        # depends on this machine (the Python running the service): not printed as a value
        "`LocalProcessBuilder.command`\n: *List*, default computed at start (see below).",
    ):
        assert entry in text, entry
    assert sys.executable not in text


def test_generate_config_lists_every_documented_class():
    from r2d_tornado.app import R2DService

    text = R2DService().generate_config_file()
    for name in _documented_classes():
        if name != "R2DPlugin":  # the TLJH plugin's own settings, not the service's
            assert f"\n# {name}(" in text, f"r2d-service generate-config lacks {name}"
