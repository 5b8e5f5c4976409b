"""The documentation builds with warnings as errors, and its generated references are complete."""

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
