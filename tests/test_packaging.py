"""Installing from a checkout: the sdist carries the built UI, a wheel built from that sdist needs
no Node.js, and the wheel installed into a fresh venv serves the UI (docs/tutorials/jupyterhub.md).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run inside the fresh venv: serve the installed package's page and its bundle on loopback.
SERVE_SCRIPT = r"""
import asyncio, json, socket, sys, urllib.request
import r2d_tornado.handlers as h
from tornado import web

assert sys.prefix in h.__file__, ("not the installed copy", h.__file__)

class Base(web.RequestHandler):
    async def r2d_identify(self):
        return h.Identity("alice", "user", frozenset())
    def r2d_login_url(self):
        return "/hub/login"
    def r2d_xsrf_token(self):
        return "x"

async def main():
    from r2d_core.manager import BuildManager  # made, not started: the page needs no engine

    ctx = h.R2DContext(manager=BuildManager(), authorizer=None, base_url="/services/r2d/")
    handlers = [s for s in h.make_handlers("/services/r2d/", Base, ctx)
                if s[0].endswith("?$") or "static" in s[0]]
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
    web.Application(handlers).listen(port, "127.0.0.1")
    base = f"http://127.0.0.1:{port}/services/r2d/"
    def get(url):
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    status, page = await asyncio.to_thread(get, base)
    js = page.split('src="/services/r2d/static/')[1].split('"')[0]
    js_status, js_body = await asyncio.to_thread(get, base + "static/" + js)
    print(json.dumps({"status": status, "js": js, "js_status": js_status, "js_size": len(js_body)}))

asyncio.run(main())
"""


@pytest.mark.slow
def test_sdist_then_wheel_without_node_then_fresh_venv_serves_the_ui(tmp_path, monkeypatch):
    from hatchling.builders.sdist import SdistBuilder
    from hatchling.builders.wheel import WheelBuilder

    sdist = next(iter(SdistBuilder(str(ROOT)).build(directory=str(tmp_path / "dist"))))
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        assert f"{top}/r2d_tornado/static/dist/app.js" in names, "the sdist lacks the UI bundle"
        assert f"{top}/r2d_tornado/templates/page.html" in names
        tar.extractall(tmp_path / "src", filter="data")

    # no node, no npm on PATH: the bundle the sdist carries is fresh, so the hook runs nothing
    empty = tmp_path / "no-node"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    source = tmp_path / "src" / top
    wheel = next(
        iter(
            WheelBuilder(str(source)).build(directory=str(tmp_path / "dist"), versions=["standard"])
        )
    )
    assert "r2d_tornado/static/dist/app.js" in zipfile.ZipFile(wheel).namelist()
    monkeypatch.undo()

    # a fresh venv: the wheel itself, its dependencies taken from this environment (offline)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # appended after the venv's own site-packages (and its .pth files are not read), so the
    # editable checkout installed here cannot shadow the wheel
    Path(site, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        env={"PATH": str(empty), "HOME": str(tmp_path)},
    )
    out = subprocess.run(
        [str(python), "-c", SERVE_SCRIPT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": str(empty), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["status"] == 200 and served["js"].startswith("dist/app.js")
    assert served["js_status"] == 200 and served["js_size"] > 10_000, served
    # the console script exists in the venv (what a Hub's services[].command can point at)
    assert (venv / "bin" / "r2d-service").exists()
