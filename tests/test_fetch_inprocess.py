"""repo2docker runs in the fetch stage's own process (imported while git clones), not exec'd.

The stage is run as the LocalProcessBuilder runs it (``python -I -m r2d_core.fetch``), with a
stand-in entry point from the standard library (``json.tool:main``, a console script that prints
its input) where the real repo2docker would take seconds; a real build checks the process itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from r2d_core.builders import Builder, LocalProcessBuilder
from r2d_core.docker_builder import DockerBuilder
from r2d_core.fetch import SPEC_ENV
from r2d_core.models import Build, BuildState
from tests.test_manager import make_manager, wait_done  # noqa: F401 - fixture

LOOPBACK_GIT = [r"^git://127\.0\.0\.1:\d+/"]


def _stage(git_server, tmp_path: Path, **spec: object) -> subprocess.CompletedProcess[str]:
    repo = git_server.repos["hello"]
    full = {
        "repo": git_server.url("hello"),
        "sha": repo.tags["v1"],
        "dest": str(tmp_path / "repo"),
        "home": str(tmp_path / "home"),
        "allowed_patterns": LOOPBACK_GIT,
        "allowed_networks": ["127.0.0.0/8"],
        "exec_env": {"R2D_TEST_EXTRA": "1"},
        **spec,
    }
    return subprocess.run(
        [sys.executable, "-I", "-m", "r2d_core.fetch"],
        env={SPEC_ENV: json.dumps(full), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_entry_point_runs_in_the_stage_after_the_fetch(git_server, tmp_path):
    data = tmp_path / "in.json"
    data.write_text('{"b":1,"a":[2]}')
    # the exec'd command would fail without output: what runs is the entry point, in-process
    proc = _stage(
        git_server,
        tmp_path,
        exec=["false"],
        entry="json.tool:main",
        entry_argv=["json.tool", "--sort-keys", "--compact", str(data)],
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[-1]) == {"a": [2], "b": 1}
    assert lines[-1] == '{"a":[2],"b":1}'  # its own argv (--sort-keys --compact) was used
    # after the fetch: the stage's own lines come first, the checkout is there
    assert any("Fetched" in json.loads(line)["message"] for line in lines[:-1])
    assert (tmp_path / "repo" / "VERSION").read_text() == "1\n"


def test_the_entry_points_exit_status_is_the_stages(git_server, tmp_path):
    proc = _stage(
        git_server,
        tmp_path,
        exec=["true"],
        entry="json.tool:main",
        entry_argv=["json.tool", str(tmp_path / "missing.json")],
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # argparse's, via SystemExit
    assert "missing.json" in proc.stderr


def test_an_entry_point_that_cannot_be_imported_falls_back_to_the_exec(git_server, tmp_path):
    proc = _stage(
        git_server,
        tmp_path,
        exec=["sh", "-c", 'echo "exec\'d with $R2D_TEST_EXTRA"'],
        entry="r2d_no_such_module.anywhere:main",
        entry_argv=["x"],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "exec'd with 1"


def test_a_failed_fetch_runs_nothing(git_server, tmp_path):
    data = tmp_path / "in.json"
    data.write_text("{}")
    proc = _stage(
        git_server,
        tmp_path,
        sha="0" * 40,
        exec=["sh", "-c", "echo ran"],
        entry="json.tool:main",
        entry_argv=["json.tool", str(data)],
    )
    assert proc.returncode == 1
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["phase"] == "failed"
    assert "ran" not in proc.stdout and "{}" not in proc.stdout


def _build() -> Build:
    return Build(
        id="b1",
        owner="o",
        name="n",
        repo="git://127.0.0.1:9/r",
        ref="main",
        sha="a" * 40,
        image="r2d-x:" + "a" * 40,
    )


def test_only_the_default_command_runs_in_process(tmp_path):
    local = LocalProcessBuilder()
    spec = local.fetch_spec(_build(), str(tmp_path), list(local.command))
    assert spec["entry"] == "repo2docker.__main__:main"
    # the same arguments as the exec, under the console script's name
    assert spec["entry_argv"] == ["jupyter-repo2docker", *spec["exec"][3:]]
    docker = DockerBuilder()
    spec = docker.fetch_spec(_build(), "/tmp/x", ["jupyter-repo2docker"])  # nosec B108
    assert spec["entry_argv"][1:] == spec["exec"][1:]
    # an admin's own command, or in_process off: exec'd
    custom = LocalProcessBuilder(command=["/opt/r2d/bin/jupyter-repo2docker"])
    assert "entry" not in custom.fetch_spec(_build(), str(tmp_path), list(custom.command))
    off = LocalProcessBuilder(in_process=False)
    assert "entry" not in off.fetch_spec(_build(), str(tmp_path), list(off.command))
    assert Builder().entry_point(["jupyter-repo2docker"]) is None


def test_in_process_can_be_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("R2D_IN_PROCESS", "0")
    assert LocalProcessBuilder().in_process is False
    monkeypatch.setenv("R2D_IN_PROCESS", "1")
    assert LocalProcessBuilder().in_process is True


@pytest.mark.docker
@pytest.mark.parametrize("in_process", [True, False])
async def test_a_real_build_runs_repo2docker_in_the_fetch_stages_process(
    make_manager,  # noqa: F811 - the fixture imported above
    git_server,
    in_process,
):
    """While repo2docker builds, the build's process is still the fetch stage (in-process), or
    has become ``python -m repo2docker`` (exec'd), and the build succeeds either way."""
    m = await make_manager("local")
    m.builder.in_process = in_process
    seen: list[list[str]] = []
    watchers: list[asyncio.Task[None]] = []
    original = m.builder.start

    async def start(build):
        process = await original(build)

        async def watch() -> None:
            path = Path(f"/proc/{process.proc.pid}/cmdline")
            while process.proc.returncode is None:
                try:
                    argv = [a.decode() for a in path.read_bytes().split(b"\0") if a]
                except OSError:
                    return
                if argv:  # (an exiting process's cmdline reads empty)
                    seen.append(argv)
                await asyncio.sleep(0.02)

        watchers.append(asyncio.ensure_future(watch()))
        return process

    m.builder.start = start
    build = (
        await m.submit(
            repo=git_server.url("hello"), ref="main", owner="inproc", name="h", force=True
        )
    ).build
    assert build is not None
    await wait_done(build)
    await asyncio.gather(*watchers)
    assert build.state == BuildState.BUILT, build.error
    assert seen
    exec_d = [argv for argv in seen if argv[1:3] == ["-m", "repo2docker"]]
    if in_process:
        assert not exec_d, exec_d[:1]
        assert all(argv[1:4] == ["-I", "-m", "r2d_core.fetch"] for argv in seen), seen[-1]
    else:
        assert exec_d, seen[-1]


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [("None", 0, ""), ("3", 3, ""), ("'no image'", 1, "no image\n"), ("sys.exit(4)", 4, "")],
)
def test_the_fast_exit_keeps_what_an_exit_does(code, status, stderr):
    """After the entry point returns, the stage skips the interpreter's module teardown but still
    waits for non-daemon threads, runs atexit handlers and flushes buffered output."""
    script = f"""
import atexit, sys, threading, time
from r2d_core.fetch import run_in_process
atexit.register(lambda: print("atexit ran"))
def late():
    time.sleep(0.3)
    print("thread done")
threading.Thread(target=late).start()
sys.stdout.write("buffered, no newline")
run_in_process(lambda: {code}, ["prog"], {{"PATH": "/usr/bin:/bin"}})
print("not reached")
"""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == status
    assert proc.stdout == "buffered, no newlinethread done\natexit ran\n"
    assert proc.stderr == stderr
