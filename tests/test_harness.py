"""The harness itself: private dockerd, local images, git daemon, repo2docker builds with them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from traitlets.config import Config, PyFileConfigLoader

from tests.harness import (
    BUSYBOX_IMAGE,
    DEBIAN_IMAGE,
    FAIL_EXIT_CODE,
    FAIL_LINES,
    HELLO_LINES,
    QUICK_LINES,
    QUICK_SECONDS,
    REPO2DOCKER_IMAGE,
    REPO2DOCKER_VERSION,
    Dockerd,
    DockerdError,
    GitServer,
    HarnessError,
    ManagedProcess,
    async_wait_for,
    cache_dir,
    cleanup_stale_runs,
    free_port,
    new_run_dir,
    repo2docker_config,
    wait_for,
)
from tests.harness.procs import mounts_under, pid_alive

REPO2DOCKER_CLI = str(Path(sys.executable).parent / "jupyter-repo2docker")
#: the tests run as root, and repo2docker refuses root as the image's user
IMAGE_USER = ["--user-id", "1000", "--user-name", "jovyan"]


def r2d_messages(output: str) -> list[str]:
    """The text lines of repo2docker's ``--json-logs`` output (non-JSON lines kept as they are)."""
    lines = []
    for raw in output.splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            lines.append(raw)
            continue
        lines.extend(str(record.get("message", "")).splitlines())
    return lines


def numbered(lines: list[str], word: str) -> list[int]:
    """The N of every ``#<step> <seconds> r2d-<word> N`` line: buildx's live output of a RUN.

    (On failure buildx repeats the step's last lines in a summary without the ``#<step>`` prefix;
    those are not counted.)
    """
    pattern = re.compile(rf"^#\d+ \d+\.\d+ r2d-{word} (\d+)$")
    return [int(m.group(1)) for line in lines if (m := pattern.search(line.rstrip()))]


# ---- process plumbing ----------------------------------------------------------------------------


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_for_returns_value_and_times_out_with_log_tail():
    t0 = time.monotonic()
    assert wait_for(lambda: time.monotonic() - t0 > 0.1 and "done", 5, "thing") == "done"
    with pytest.raises(TimeoutError, match=r"(?s)widget not ready after 0.2s.*last words"):
        wait_for(lambda: False, 0.2, "widget", log_tail=lambda: "last words")


async def test_async_wait_for_accepts_async_predicates():
    calls = 0

    async def ready() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    assert await async_wait_for(ready, 5, "async thing", interval=0.01) is True
    with pytest.raises(TimeoutError, match="never"):
        await async_wait_for(lambda: asyncio.sleep(0, result=False), 0.1, "never")


def test_managed_process_escalates_to_sigkill(tmp_path):
    # ignores SIGTERM: stop() must fall back to SIGKILL after the timeout
    proc = ManagedProcess(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo started; while true; do sleep 0.1; done"],
        tmp_path / "stubborn.log",
        pidfile=tmp_path / "stubborn.pid",
    ).start()
    wait_for(lambda: "started" in proc.log_tail(), 5, "stubborn output")
    pid = proc.pid
    assert (tmp_path / "stubborn.pid").read_text().strip() == str(pid)
    t0 = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - t0 < 5
    assert not pid_alive(pid)
    assert not (tmp_path / "stubborn.pid").exists()


def test_managed_process_exit_is_reported_with_log_tail(tmp_path):
    proc = ManagedProcess("failing", ["sh", "-c", "echo boom >&2; exit 4"], tmp_path / "f.log")
    proc.start()
    wait_for(lambda: not proc.running(), 5, "failing process exit")
    with pytest.raises(HarnessError, match=r"(?s)failing exited with status 4.*boom"):
        proc.check_running()
    with pytest.raises(HarnessError, match="cannot start"):
        ManagedProcess("missing", ["/nonexistent/binary"], tmp_path / "m.log").start()


def test_cleanup_stale_runs_removes_only_dead_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("R2D_HARNESS_STATE", str(tmp_path))
    dead = _dead_pid()
    stale = tmp_path / f"dockerd-{dead}-abc123"
    (stale / "data").mkdir(parents=True)
    mine = new_run_dir("git")
    orphan = tmp_path / f"git-{dead}-def456"  # its owner died, but its daemon still runs
    orphan.mkdir()
    (orphan / "git-daemon.pid").write_text(f"{os.getpid()}\n")
    other = tmp_path / "cache"
    other.mkdir()
    assert cleanup_stale_runs() == [stale]
    assert not stale.exists() and mine.is_dir() and orphan.is_dir() and other.is_dir()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_repo2docker_config_text_loads_as_a_config_file(tmp_path):
    path = tmp_path / "repo2docker_config.py"
    path.write_text(repo2docker_config(network="host"))
    config = PyFileConfigLoader(path.name, path=str(tmp_path)).load_config()
    assert isinstance(config, Config)
    providers = [cls.__name__ for cls in config.Repo2Docker.content_providers]
    assert providers == ["Local", "Git"]
    assert config.DockerEngine.extra_buildx_build_args == ["--network", "host"]
    assert config.Repo2Docker.base_image == DEBIAN_IMAGE


# ---- dockerd -------------------------------------------------------------------------------------


@pytest.mark.docker
def test_dockerd_answers_and_has_no_bridge(dockerd):
    assert dockerd.ping()
    assert dockerd.host == f"unix://{dockerd.socket_path}"
    assert len(str(dockerd.socket_path)) < 100
    assert int(dockerd.pidfile.read_text()) == dockerd.pid
    networks = {n["Name"] for n in dockerd.api("GET", "/networks")}
    assert networks == {"host", "none"}
    info = dockerd.api("GET", "/info")
    assert info["ServerVersion"].startswith("20.10")
    assert info["Driver"] == dockerd.storage_driver
    assert info["DockerRootDir"] == str(dockerd.data_root)
    # DOCKER_HOST only ever reaches subprocess environments
    assert os.environ.get("DOCKER_HOST") != dockerd.host


@pytest.mark.docker
def test_dockerd_stop_unmounts_and_removes_everything():
    engine = Dockerd(seed=False).start()
    assert engine.startup_seconds is not None and engine.startup_seconds < 10
    try:
        containerd = engine._containerd_pid()
        assert containerd is not None, "dockerd 20.10 should start its own containerd"
        assert str(engine.exec_root) in Path(f"/proc/{containerd}/cmdline").read_text()
        # a host-network container makes dockerd mount the nsfs under netns/default
        assert engine.docker("images", "-q").stdout == ""  # seed=False: no image at all
        engine.docker("import", "-", "r2d-test/empty:1", input=_empty_tar())
        engine.docker(
            "run", "--rm", "--pull", "never", "--network", "host", "r2d-test/empty:1", "/none",
            check=False,
        )  # fmt: skip
        assert str(engine.exec_root / "netns" / "default") in engine.mounts()
        pid = engine.pid
    finally:
        engine.stop()
    assert not pid_alive(pid) and not pid_alive(containerd)
    assert not engine.dir.exists()
    assert mounts_under(engine.dir.parent) == [] or all(
        not m.startswith(str(engine.dir)) for m in mounts_under(engine.dir.parent)
    )


def _empty_tar() -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    return buf.getvalue()


@pytest.mark.docker
def test_dockerd_failure_reports_log_tail():
    engine = Dockerd(extra_args=["--no-such-flag"], seed=False)
    with pytest.raises(DockerdError, match=r"(?s)exited with status.*no-such-flag"):
        engine.start()
    engine.stop()
    assert not engine.dir.exists()


# ---- images --------------------------------------------------------------------------------------


@pytest.mark.docker
def test_local_images_exist(dockerd, local_images):
    assert local_images == {
        "busybox": BUSYBOX_IMAGE,
        "debian": DEBIAN_IMAGE,
        "repo2docker": REPO2DOCKER_IMAGE,
    }
    listed = set(dockerd.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
    assert set(local_images.values()) <= listed
    out = dockerd.docker(
        "run", "--rm", "--pull", "never", "--network", "none", BUSYBOX_IMAGE,
        "sh", "-c", "echo $(seq 1 3); id -un; test -d /tmp && ls /bin/busybox",
    ).stdout.split()  # fmt: skip
    assert out == ["1", "2", "3", "root", "/bin/busybox"]
    out = dockerd.docker(
        "run", "--rm", "--pull", "never", "--network", "none", DEBIAN_IMAGE,
        "sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME",
    ).stdout.strip()  # fmt: skip
    assert out == "bookworm"


@pytest.mark.docker
def test_repo2docker_image_runs_offline(dockerd, local_images):
    def run(*cmd: str) -> str:
        return dockerd.docker(
            "run", "--rm", "--pull", "never", "--network", "none", REPO2DOCKER_IMAGE, *cmd
        ).stdout  # fmt: skip

    assert run("jupyter-repo2docker", "--version").strip() == REPO2DOCKER_VERSION
    assert "github.com/docker/buildx" in run("docker", "buildx", "version")
    assert run("pwd").strip() == "/srv"
    assert run("git", "--version").startswith("git version")


@pytest.mark.docker
def test_images_are_cached_and_seed_survives_engine_use(local_images):
    cache = cache_dir()
    assert (cache / "busybox.tar").is_file() and (cache / "debian.tar").is_file()
    seed = cache / "seed-overlay2"
    if not seed.is_dir():
        pytest.skip("the engine does not use overlay2 here")
    # the busybox layer's /etc/passwd in the seed, shared by hard link with every seeded engine
    passwd = [
        p
        for p in seed.glob("overlay2/*/diff/etc/passwd")
        if (p.parent.parent / "bin/busybox").exists()
    ]
    assert len(passwd) == 1
    before = hashlib.sha256(passwd[0].read_bytes()).hexdigest()
    t0 = time.monotonic()
    engine = Dockerd(seed=True).start()
    started = time.monotonic() - t0
    try:
        # writes and deletes in a container, a commit, then removing the image altogether
        engine.docker(
            "run", "--name", "scribble", "--pull", "never", "--network", "none", BUSYBOX_IMAGE,
            "sh", "-c", "echo intruder:x:1:1::/:/bin/sh >> /etc/passwd && rm /bin/ls",
        )  # fmt: skip
        engine.docker("commit", "scribble", "r2d-test/scribbled:1")
        engine.docker("rm", "scribble")
        engine.docker("rmi", "-f", "r2d-test/scribbled:1", BUSYBOX_IMAGE)
    finally:
        engine.stop()
    assert hashlib.sha256(passwd[0].read_bytes()).hexdigest() == before
    assert started < 10, f"a seeded engine took {started:.1f}s to start"
    # and the seed still gives a complete engine
    with Dockerd(seed=True) as again:
        out = again.docker(
            "run", "--rm", "--pull", "never", "--network", "none", BUSYBOX_IMAGE,
            "sh", "-c", "grep -c intruder /etc/passwd; ls /bin/ls",
        check=False).stdout.split()  # fmt: skip
    assert out == ["0", "/bin/ls"]


# ---- git daemon ----------------------------------------------------------------------------------


def test_hello_fixture_refs(git_server):
    repo = git_server.repos["hello"]
    refs = git_server.ls_remote("hello")
    assert len(repo.commits) == 3 and len(set(repo.commits)) == 3
    assert refs["HEAD"] == refs["refs/heads/main"] == repo.head == repo.commits[-1]
    assert refs["refs/heads/dev"] == repo.branches["dev"] != repo.head
    # lightweight v1 on the first commit, annotated v2 (a tag object) on the second
    assert refs["refs/tags/v1"] == repo.tags["v1"] == repo.commits[0]
    assert "refs/tags/v1^{}" not in refs
    assert refs["refs/tags/v2^{}"] == repo.tags["v2"] == repo.commits[1]
    assert refs["refs/tags/v2"] != repo.commits[1]
    assert set(refs) == {
        "HEAD", "refs/heads/main", "refs/heads/dev",
        "refs/tags/v1", "refs/tags/v2", "refs/tags/v2^{}",
    }  # fmt: skip
    # dev is one commit on top of main
    parent = subprocess.run(
        ["git", "rev-parse", f"{repo.branches['dev']}^"],
        cwd=repo.path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert parent == repo.head


@pytest.mark.parametrize("name", ["fails", "slow", "quick", "requirements"])
def test_other_fixtures_have_one_branch(git_server, name):
    repo = git_server.repos[name]
    refs = git_server.ls_remote(name)
    assert refs == {"HEAD": repo.head, "refs/heads/main": repo.head}
    assert repo.branches == {"main": repo.head} and repo.commits == [repo.head]
    assert git_server.url(name) == f"git://127.0.0.1:{git_server.port}/{name}"


def test_git_server_stop_leaves_nothing():
    server = GitServer().start()
    port, pid, directory = server.port, server.process.pid, server.dir
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    server.stop()
    assert not pid_alive(pid) and not directory.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_add_commit_moves_a_branch(git_server):
    repo = git_server.add_repo("moving", {"README.md": "one\n"})
    first = repo.head
    second = git_server.add_commit("moving", {"README.md": "two\n"})
    assert second != first
    assert git_server.ls_remote("moving")["refs/heads/main"] == second
    assert git_server.repos["moving"].commits == [first, second]
    # a new branch starts at main's tip; main and HEAD stay where they were
    side = git_server.add_commit("moving", {"SIDE": "x\n"}, branch="side")
    refs = git_server.ls_remote("moving")
    assert refs["refs/heads/side"] == side and refs["HEAD"] == refs["refs/heads/main"] == second
    assert git_server.repos["moving"].branches == {"main": second, "side": side}


# ---- repo2docker through the harness -------------------------------------------------------------


def run_repo2docker_cli(
    r2d_env: dict[str, str], config: Path, url: str, ref: str, image: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            REPO2DOCKER_CLI, "--config", str(config), "--json-logs", "--no-run",
            *IMAGE_USER, "--image-name", image, "--ref", ref, url,
        ],
        env=r2d_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.docker
def test_bare_repo2docker_cli_builds_hello(
    dockerd, local_images, git_server, repo2docker_config_file, r2d_env
):
    repo = git_server.repos["hello"]
    t0 = time.monotonic()
    res = run_repo2docker_cli(
        r2d_env, repo2docker_config_file, git_server.url("hello"), repo.head, "r2d-test/hello:t"
    )
    elapsed = time.monotonic() - t0
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-3000:]
    assert numbered(r2d_messages(output), "line") == list(range(1, HELLO_LINES + 1))
    phases = {json.loads(line).get("phase") for line in output.splitlines() if line.startswith("{")}
    assert {"fetching", "building"} <= phases
    inspect = json.loads(dockerd.docker("image", "inspect", "r2d-test/hello:t").stdout)[0]
    assert inspect["Config"]["Labels"]["repo2docker.ref"] == repo.head
    print(f"bare CLI build of hello: {elapsed:.1f}s")


@pytest.mark.docker
def test_failing_repo_reports_its_lines(local_images, git_server, repo2docker_config_file, r2d_env):
    repo = git_server.repos["fails"]
    res = run_repo2docker_cli(
        r2d_env, repo2docker_config_file, git_server.url("fails"), repo.head, "r2d-test/fails:t"
    )
    output = res.stdout + res.stderr
    assert res.returncode != 0
    assert numbered(r2d_messages(output), "fail") == list(range(1, FAIL_LINES + 1))
    assert f"exit code: {FAIL_EXIT_CODE}" in output
    assert '"phase": "failed"' in output


@pytest.mark.docker
def test_requirements_repo_fails_offline_without_pulling(
    dockerd, local_images, git_server, repo2docker_config_file, r2d_env
):
    before = set(dockerd.docker("images", "-a", "--format", "{{.ID}}").stdout.split())
    log_size = dockerd.log_path.stat().st_size
    repo = git_server.repos["requirements"]
    res = run_repo2docker_cli(
        r2d_env, repo2docker_config_file, git_server.url("requirements"), repo.head,
        "r2d-test/requirements:t",
    )  # fmt: skip
    output = res.stdout + res.stderr
    assert res.returncode != 0, output[-3000:]
    # it got as far as apt inside the build on the local Debian base, and failed there
    assert f"FROM {DEBIAN_IMAGE}" in output or DEBIAN_IMAGE in output
    assert re.search(r"Temporary failure resolving|Could not resolve|apt-get.*exit code", output), (
        output[-3000:]
    )
    # nothing was pulled: no image appeared and the engine never asked a registry
    after = set(dockerd.docker("images", "-a", "--format", "{{.ID}}").stdout.split())
    assert after == before
    with open(dockerd.log_path, "rb") as fh:
        fh.seek(log_size)
        engine_log = fh.read().decode(errors="replace")
    assert "registry-1.docker.io" not in engine_log and "pull" not in engine_log.lower()
    assert "buildpack-deps" not in output


@pytest.mark.docker
def test_repo2docker_image_builds_hello_in_a_container(
    dockerd, local_images, git_server, repo2docker_config_file
):
    repo = git_server.repos["hello"]
    image = "r2d-test/hello:in-container"
    res = dockerd.docker(
        "run", "--rm", "--pull", "never", "--network", "host",
        "-v", f"{dockerd.socket_path}:/var/run/docker.sock",
        "-v", f"{repo2docker_config_file}:/etc/r2d/repo2docker_config.py:ro",
        REPO2DOCKER_IMAGE,
        "jupyter-repo2docker", "--config", "/etc/r2d/repo2docker_config.py", "--json-logs",
        "--no-run", *IMAGE_USER, "--image-name", image, "--ref", repo.commits[0],
        git_server.url("hello"),
        check=False,
    )  # fmt: skip
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-3000:]
    assert numbered(r2d_messages(output), "line") == list(range(1, HELLO_LINES + 1))
    inspect = json.loads(dockerd.docker("image", "inspect", image).stdout)[0]
    assert inspect["Config"]["Labels"]["repo2docker.ref"] == repo.commits[0]


@pytest.mark.docker
def test_quick_and_slow_fixtures_pace_their_output(
    local_images, git_server, repo2docker_config_file, r2d_env
):
    t0 = time.monotonic()
    res = run_repo2docker_cli(
        r2d_env, repo2docker_config_file, git_server.url("quick"),
        git_server.repos["quick"].head, "r2d-test/quick:t",
    )  # fmt: skip
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-3000:]
    assert numbered(r2d_messages(output), "quick") == list(range(1, QUICK_LINES + 1))
    assert time.monotonic() - t0 >= QUICK_SECONDS
    # slow: one line a second; stop the client after two lines (the build is cancelled with it)
    proc = subprocess.Popen(
        [
            REPO2DOCKER_CLI, "--config", str(repo2docker_config_file), "--json-logs", "--no-run",
            *IMAGE_USER, "--image-name", "r2d-test/slow:t", git_server.url("slow"),
        ],
        env=r2d_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    seen: dict[int, float] = {}
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            for n in numbered(r2d_messages(line), "slow"):
                seen[n] = time.monotonic()
            if len(seen) >= 2:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert sorted(seen) == [1, 2]
    assert 0.5 < seen[2] - seen[1] < 2.5
