"""The library page's example (docs/howto/library.md) runs as written, without tornado."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "howto" / "library.md"

pytestmark = [pytest.mark.docker]

RUNNER = """
import asyncio, json, sys
from build_example import build_demo
from tests.test_manager import make_config

c = make_config({docker_host!r}, "local")
asyncio.run(build_demo(c, {repo!r}))
print("modules:", json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "tornado")))
"""


def example() -> str:
    blocks = re.findall(
        r"^```python\n(# example: build.py\n.*?)^```", PAGE.read_text(), re.M | re.S
    )
    assert len(blocks) == 1, "the page has one example"
    return blocks[0]


def test_library_example_builds_with_options_and_annotations(
    docker_host, local_images, git_server, tmp_path
):
    repo = git_server.url("hello")
    (tmp_path / "build_example.py").write_text(example())
    script = tmp_path / "run.py"
    script.write_text(RUNNER.format(docker_host=docker_host, repo=repo))
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "state: built " in lines or "state: built" in lines, out.stdout[-3000:]
    assert any(line.startswith("[fetching] Build options: ") for line in lines)
    assert any("r2d-line 20" in line for line in lines)  # the log, followed to its end
    images = [line for line in lines if line.startswith("image: ")]
    assert any(
        "-o" in line
        and "{'build_args': {'MODE': 'course'}}" in line
        and "'tljh.mem_limit': '2G'" in line
        for line in images
    ), images
    # r2d_core from another project: no tornado
    assert lines[-1] == "modules: []", lines[-1]
