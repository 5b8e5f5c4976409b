"""BuildManager against a real private dockerd and a real git daemon, through both builders."""

from __future__ import annotations

import asyncio
import time

import pytest
from traitlets.config import Config

from r2d_core import metrics
from r2d_core.builders import DockerBuilder, LocalProcessBuilder
from r2d_core.engine import DockerEngine
from r2d_core.errors import Conflict, InvalidRequest, NotFound, Unavailable, UnknownRef
from r2d_core.manager import BuildManager
from r2d_core.models import BuildState, parse_labels
from tests.harness import FAIL_LINES, HELLO_LINES, REPO2DOCKER_IMAGE, repo2docker_config
from tests.harness.githttp import PASSWORD, USER, GitHTTPServer
from tests.harness.hostile import HostileHTTPServer

pytestmark = [pytest.mark.docker]

LOOPBACK_GIT = [r"^git://127\.0\.0\.1:\d+/"]


def make_config(docker_host: str, builder: str, **manager: object) -> Config:
    c = Config()
    c.DockerEngine.host = docker_host
    c.BuildManager.allowed_repo_patterns = LOOPBACK_GIT
    c.BuildManager.allowed_networks = ["127.0.0.0/8"]
    c.BuildManager.reconnect_interval = 0.2
    c.BuildManager.builder_class = DockerBuilder if builder == "docker" else LocalProcessBuilder
    for key, value in manager.items():
        setattr(c.BuildManager, key, value)
    c.Builder.repo2docker_config = repo2docker_config(network="none")
    c.DockerBuilder.image = REPO2DOCKER_IMAGE
    c.DockerBuilder.network_mode = (
        "host"  # the build container fetches from the loopback git daemon
    )
    return c


class StartedManagers:
    """The managers a fixture starts from configs; :meth:`stop_all` at the fixture's end."""

    def __init__(self) -> None:
        self.managers: list[BuildManager] = []

    async def start(self, config: Config) -> BuildManager:
        m = BuildManager(config=config)
        await m.start()
        self.managers.append(m)
        return m

    async def stop_all(self) -> None:
        for m in self.managers:
            await m.stop()


@pytest.fixture
async def make_manager(docker_host, local_images, git_server):
    managers: list[BuildManager] = []

    async def factory(
        builder: str = "local", start: bool = True, **manager: object
    ) -> BuildManager:
        m = BuildManager(config=make_config(docker_host, builder, **manager))
        if start:
            await m.start()
        managers.append(m)
        return m

    yield factory
    for m in managers:
        for build in m.list_builds():
            if not build.done:
                try:
                    await m.cancel(build.id, wait=10)
                except Exception:
                    pass
        await m.stop()


async def wait_done(build, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async for _line in build.log.follow():
        if time.monotonic() > deadline:
            raise TimeoutError(f"build {build.id} still {build.state}")
    assert build.done, build.state


async def wait_for_line(build, text: str, timeout: float = 60) -> None:
    async def look() -> None:
        async for line in build.log.follow():
            if text in line.message:
                return
        raise AssertionError(f"{text!r} never appeared; state {build.state}, error {build.error}")

    await asyncio.wait_for(look(), timeout)


def messages(build) -> list[str]:
    return [line.message for line in build.log.lines()]


@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_build_labels_and_list(make_manager, git_server, builder, docker_host):
    m = await make_manager(builder)
    owner = f"alice-{builder}"
    result = await m.submit(repo=git_server.url("hello"), ref="main", owner=owner, name="hello")
    build = result.build
    assert build is not None and not result.skipped
    assert build.sha == git_server.repos["hello"].branches["main"]
    await wait_done(build)
    assert build.state == BuildState.BUILT, (build.error, messages(build)[-10:])
    lines = [m for m in messages(build) if "r2d-line" in m]
    assert len(lines) == HELLO_LINES
    phases = {line.phase for line in build.log.lines()}
    assert {"fetching", "building"} <= phases

    engine = DockerEngine(host=docker_host)
    try:
        info = await engine.inspect_image(build.image)
    finally:
        await engine.close()
    fields = parse_labels(info["Config"]["Labels"])
    assert (
        fields["owner"] == owner and fields["sha"] == build.sha and fields["build-id"] == build.id
    )
    assert fields["repo"] == git_server.url("hello") and fields["ref"] == "main"

    groups = await m.list_images([owner])
    assert [(g.owner, g.name) for g in groups] == [(owner, "hello")]
    assert groups[0].versions[0].reference == build.image
    assert groups[0].versions[0].local and groups[0].versions[0].size


async def test_skip_force_and_join(make_manager, git_server):
    m = await make_manager()
    repo = git_server.url("hello")
    first = await m.submit(repo=repo, ref="v1", owner="sam", name="hello")
    joined = await m.submit(
        repo=repo, ref=git_server.repos["hello"].tags["v1"], owner="sam", name="hello"
    )
    assert joined.joined and joined.build is first.build  # one build, both answered
    await wait_done(first.build)
    assert first.build.state == BuildState.BUILT

    again = await m.submit(repo=repo, ref="v1", owner="sam", name="hello")
    assert again.skipped and again.image.newest.sha == first.build.sha
    assert len(m.list_builds(["sam"])) == 1  # no container, no build started

    forced = await m.submit(repo=repo, ref="v1", owner="sam", name="hello", force=True)
    assert forced.build is not None and forced.build is not first.build
    await wait_done(forced.build)
    assert forced.build.state == BuildState.BUILT


async def test_annotated_tag_and_branch_resolve_to_commits(make_manager, git_server):
    m = await make_manager()
    repo = git_server.repos["hello"]
    r = await m.submit(repo=git_server.url("hello"), ref="v2", owner="tag-user", name="hello")
    assert r.build.sha == repo.tags["v2"]
    r2 = await m.submit(repo=git_server.url("hello"), ref="dev", owner="tag-user", name="hello-dev")
    assert r2.build.sha == repo.branches["dev"]
    await wait_done(r.build)
    await wait_done(r2.build)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"repo": "/etc"}, InvalidRequest),
        ({"repo": "file:///etc"}, InvalidRequest),
        ({"repo": "ext::sh -c id"}, InvalidRequest),
        ({"repo": "-oProxyCommand=id"}, InvalidRequest),
        ({"repo": "https://example.org/not-allowed"}, InvalidRequest),
        ({"ref": "--upload-pack=id"}, InvalidRequest),
        ({"ref": "no-such-branch"}, UnknownRef),
        ({"name": "bad name!"}, InvalidRequest),
        ({"owner": "a/b"}, InvalidRequest),
        ({"push": True}, InvalidRequest),  # no registry configured
    ],
)
async def test_bad_inputs_rejected_before_anything_runs(make_manager, git_server, kwargs, error):
    m = await make_manager()
    args = {
        "repo": git_server.url("hello"),
        "ref": "main",
        "owner": "mallory",
        "name": "x",
        **kwargs,
    }
    with pytest.raises(error):
        await m.submit(**args)
    assert m.list_builds() == []


async def test_failing_build_reports_last_lines(make_manager, git_server):
    m = await make_manager()
    build = (
        await m.submit(repo=git_server.url("fails"), ref="HEAD", owner="fay", name="fails")
    ).build
    await wait_done(build)
    assert build.state == BuildState.FAILED
    data = build.to_dict(last_lines=20)
    assert any(f"r2d-fail {FAIL_LINES}" in line for line in data["last_lines"])
    assert data["failed_step"] and "RUN" in data["failed_step"]
    # repo2docker's last line quotes the whole buildx command (labels and all): shown short
    assert any("docker buildx failed with exit status" in line for line in data["last_lines"])
    assert not any("--label" in line for line in data["last_lines"])
    assert data["error"]
    assert await m.list_images(["fay"]) == []


async def test_requirements_repo_fails_offline_without_pulling(make_manager, git_server):
    m = await make_manager()
    build = (await m.submit(repo=git_server.url("requirements"), owner="ray", name="reqs")).build
    await wait_done(build, timeout=180)
    assert build.state == BuildState.FAILED
    text = "\n".join(messages(build))
    assert "pull access denied" not in text and "docker.io" not in build.error


@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_cancel_running(make_manager, git_server, builder, docker_host):
    m = await make_manager(builder)
    build = (
        await m.submit(repo=git_server.url("slow"), owner=f"carl-{builder}", name="slow")
    ).build
    await wait_for_line(build, "r2d-slow 2")
    cancelled = await m.cancel(build.id, by="carl")
    assert cancelled.state == BuildState.CANCELLED, (
        cancelled.state,
        cancelled.error,
        messages(build)[-5:],
    )
    assert build.log.closed
    assert await m.list_images([f"carl-{builder}"]) == []
    with pytest.raises(Conflict):
        await m.cancel(build.id)
    if builder == "docker":
        # the build container goes (removal may take a moment on a busy engine)
        engine = DockerEngine(host=docker_host)
        try:
            deadline = time.monotonic() + 10
            while True:
                containers = await engine.list_build_containers()
                ids = {c["Labels"].get("repo2docker-service.build-id") for c in containers}
                if build.id not in ids or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await engine.close()
        assert build.id not in ids


async def test_cancel_queued_never_starts(make_manager, git_server):
    m = await make_manager(max_concurrent_builds=1)
    running = (await m.submit(repo=git_server.url("slow"), owner="q1", name="slow")).build
    queued = (await m.submit(repo=git_server.url("hello"), owner="q2", name="hello")).build
    assert queued.state == BuildState.QUEUED and m.queue_position(queued) == 0
    await m.cancel(queued.id)
    assert queued.state == BuildState.CANCELLED and queued.started is None
    await m.cancel(running.id)


async def test_limits_with_ten_queued_builds(make_manager, git_server):
    m = await make_manager(max_concurrent_builds=2, max_builds_per_owner=1)
    owners = ["o1", "o2", "o3"]
    builds = []
    for i in range(10):
        r = await m.submit(
            repo=git_server.url("hello"), ref="main", owner=owners[i % 3], name=f"limit{i}"
        )
        builds.append(r.build)
    assert sum(b.state == BuildState.QUEUED for b in builds) >= 8
    await asyncio.gather(*(wait_done(b, timeout=300) for b in builds))
    assert all(b.state == BuildState.BUILT for b in builds), [(b.state, b.error) for b in builds]

    def max_overlap(items) -> int:
        events = sorted([(b.started, 1) for b in items] + [(b.finished, -1) for b in items])
        level = peak = 0
        for _, delta in events:
            level += delta
            peak = max(peak, level)
        return peak

    assert max_overlap(builds) == 2  # the global limit was reached and never exceeded
    for owner in owners:
        assert max_overlap([b for b in builds if b.owner == owner]) == 1


async def test_delete_image(make_manager, git_server, docker_host):
    m = await make_manager()
    build = (
        await m.submit(repo=git_server.url("hello"), ref="v1", owner="dora", name="hello")
    ).build
    await wait_done(build)
    with pytest.raises(NotFound):
        await m.delete_image("dora", "hello", tag="0" * 40)
    deletes = metrics.IMAGE_DELETES.labels("image", "deleted")
    before = deletes._value.get()
    result = await m.delete_image("dora", "hello")
    assert result == {"deleted": [build.image], "errors": []}
    assert deletes._value.get() - before == 1  # counted in r2d_image_deletes_total
    assert await m.list_images(["dora"]) == []
    engine = DockerEngine(host=docker_host)
    try:
        assert await engine.inspect_image(build.image) is None
    finally:
        await engine.close()
    with pytest.raises(NotFound):
        await m.delete_image("dora", "hello")


async def test_refuses_to_build_over_another_owners_image(make_manager, git_server, docker_host):
    m = await make_manager()
    victim = (
        await m.submit(repo=git_server.url("hello"), ref="v1", owner="victim", name="hello")
    ).build
    await wait_done(victim)
    sha = git_server.repos["hello"].tags["v1"]
    target = m.image_for("eve", "hello", sha)
    engine = DockerEngine(host=docker_host)
    try:
        # someone with engine access tags victim's image with the name eve's build would get
        await engine.client.images.tag(victim.image, target.rsplit(":", 1)[0], tag=sha)
        with pytest.raises(Conflict, match="did not build"):
            await m.submit(
                repo=git_server.url("hello"), ref="v1", owner="eve", name="hello", force=True
            )
        # and the mis-tagged image is not listed as eve's
        assert await m.list_images(["eve"]) == []
    finally:
        await engine.remove_image(target)
        await engine.close()


async def test_restart_finds_images_and_running_docker_build(make_manager, git_server):
    first = await make_manager("docker")
    built = (
        await first.submit(repo=git_server.url("hello"), ref="v1", owner="rita", name="hello")
    ).build
    await wait_done(built)
    running = (await first.submit(repo=git_server.url("slow"), owner="rita", name="slow")).build
    await wait_for_line(running, "r2d-slow 3")
    before = [line.message for line in running.log.lines()]
    await first.stop()  # the service goes away; the build container keeps running

    second = await make_manager("docker")
    images = await second.list_images(["rita"])
    assert [g.name for g in images] == ["hello"]
    again = second.get_build(running.id)
    assert again.recovered and not again.done and again.sha == running.sha
    await wait_for_line(again, "r2d-slow 5")
    replayed = [line.message for line in again.log.lines()]
    assert replayed[: len(before)] == before  # the whole log, read again from Docker
    old = second.get_build(built.id)  # finished builds come back from their containers too
    assert old.state == BuildState.BUILT
    # a second request for the running build joins it instead of starting another
    joined = await second.submit(repo=git_server.url("slow"), owner="rita", name="slow")
    assert joined.joined and joined.build is again
    await second.cancel(again.id)
    assert again.state == BuildState.CANCELLED


async def test_engine_down_then_back_without_restart(git_server, local_images, tmp_path):
    from tests.harness import Dockerd

    dockerd = Dockerd()
    c = make_config(dockerd.host, "local")
    m = BuildManager(config=c)
    await m.start()  # the engine is not running: start still succeeds
    assert not m.ready
    with pytest.raises(Unavailable):
        await m.submit(repo=git_server.url("hello"), owner="uma", name="hello")
    with pytest.raises(Unavailable):
        await m.list_images()
    dockerd.start()
    try:
        deadline = time.monotonic() + 20
        while not m.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert m.ready
        assert await m.list_images() == []
        assert (await m.health())["docker"]
    finally:
        await m.stop()
        dockerd.stop()


async def test_forced_rebuild_replaces_or_restores_the_image(make_manager, git_server, docker_host):
    m = await make_manager()
    repo = git_server.url("hello")
    first = (await m.submit(repo=repo, ref="v2", owner="fred", name="hello")).build
    await wait_done(first)
    engine = DockerEngine(host=docker_host)
    try:

        async def build_id_label() -> str:
            info = await engine.inspect_image(first.image)
            return parse_labels(info["Config"]["Labels"])["build-id"]

        assert await build_id_label() == first.id
        # a forced rebuild really builds (repo2docker alone would reuse the existing tag)
        forced = (await m.submit(repo=repo, ref="v2", owner="fred", name="hello", force=True)).build
        await wait_done(forced)
        assert forced.state == BuildState.BUILT
        assert await build_id_label() == forced.id
        # a forced rebuild that does not finish leaves the previous image in place
        again = (await m.submit(repo=repo, ref="v2", owner="fred", name="hello", force=True)).build
        await m.cancel(again.id)
        assert again.state == BuildState.CANCELLED
        assert await build_id_label() == forced.id
        assert [g.name for g in await m.list_images(["fred"])] == ["hello"]
    finally:
        await engine.close()


def _docker(docker_host: str, *args: str) -> bytes:
    import os
    import subprocess

    from tests.harness.dockerd import docker_cli

    env = dict(os.environ, DOCKER_HOST=docker_host)
    res = subprocess.run([docker_cli(), *args], env=env, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


def _assert_no_secret_in_build_container(docker_host: str, build, secrets: list[bytes]) -> None:
    """docker inspect (Env, Cmd, Labels), docker diff and docker cp of every changed path."""
    import json

    name = f"r2d-build-{build.id}"
    info = json.loads(_docker(docker_host, "inspect", name))[0]
    shown = json.dumps([info["Config"]["Env"], info["Config"]["Cmd"], info["Config"]["Labels"]])
    for secret in secrets:
        assert secret.decode() not in shown
    changed = []
    for line in _docker(docker_host, "diff", name).decode().splitlines():
        kind, _, path = line.partition(" ")
        if kind in ("A", "C"):
            changed.append(path)
    assert not [p for p in changed if p.rsplit("/", 1)[-1] in ("gitconfig", ".gitconfig")]
    assert not [p for p in changed if "credentials" in p]
    # copy out every top-most changed path (a directory brings everything below it)
    tops = [p for p in changed if not any(p.startswith(q + "/") for q in changed if q != p)]
    checkout = "/tmp/repo2docker-service"  # the checkout is there: the scan must cover it
    assert any(checkout == p or checkout.startswith(p + "/") for p in tops), tops
    for path in tops:
        data = _docker(docker_host, "cp", f"{name}:{path}", "-")
        for secret in secrets:
            assert secret not in data, f"{secret!r} found in {path} of the build container"


@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_private_repository_with_credentials(
    make_manager, git_server, docker_host, builder, tmp_path
):
    """A repository behind HTTP basic auth (git http-backend), at a path with gitconfig's
    special characters (percent-encoded: the only form the URL model admits): the credentials
    reach git for the ref and the clone, and nowhere else: not the log, labels or API answer,
    not the build container's Env/Cmd/Labels or filesystem (docker inspect/diff/cp), no file
    of the LocalProcessBuilder (issue 9, defects 1 and 9)."""
    import base64
    import os

    from r2d_core.models import Credentials

    # http-backend gets the raw request path: serve hello under a name with %22, %5D and %5B
    root = tmp_path / "git-root"
    root.mkdir()
    odd = "we%22ird%5D%5Bcore%5Dfsmonitor=x.git"
    (root / odd).symlink_to(git_server.repos["hello"].path)
    server = GitHTTPServer(root).start()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    secrets = [PASSWORD.encode(), token]
    started = time.time()
    try:
        url = server.url(odd)
        m = await make_manager(builder, allowed_repo_patterns=[r"^http://127\.0\.0\.1:\d+/"])
        with pytest.raises(InvalidRequest, match="credentials"):
            await m.submit(repo=url, ref="v1", owner=f"pat-{builder}", name="private")
        build = (
            await m.submit(
                repo=url,
                ref="v1",
                owner=f"pat-{builder}",
                name="private",
                credentials=Credentials(USER, PASSWORD),
            )
        ).build
        await wait_done(build)
        assert build.state == BuildState.BUILT, (build.error, messages(build)[-5:])
        assert PASSWORD not in "\n".join(messages(build))
        assert (
            PASSWORD not in str(build.to_dict()) and build.credentials is None
        )  # dropped when done
        engine = DockerEngine(host=docker_host)
        try:
            info = await engine.inspect_image(build.image)
        finally:
            await engine.close()
        assert PASSWORD not in str(info["Config"]["Labels"])
        if builder == "docker":
            _assert_no_secret_in_build_container(docker_host, build, secrets)
            # git ran unprivileged (DockerBuilder.fetch_uid): the checkout is nobody's
            import io
            import tarfile

            data = _docker(
                docker_host,
                "cp",
                f"r2d-build-{build.id}:/tmp/repo2docker-service/repo/VERSION",
                "-",
            )
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                assert [m.uid for m in tar.getmembers()] == [65534]
        else:
            # no file anywhere under the temporary directory holds them (the build's own
            # directory is gone), and no gitconfig was written
            import tempfile

            leftovers = [
                d
                for d in os.listdir(tempfile.gettempdir())
                if d.startswith(f"r2d-build-{build.id}")
            ]
            assert leftovers == []
            for dirpath, _dirs, files in os.walk(tempfile.gettempdir()):
                for f in files:
                    path = os.path.join(dirpath, f)
                    try:
                        st = os.lstat(path)
                        if st.st_mtime < started or not os.path.isfile(path):
                            continue
                        with open(path, "rb") as fh:
                            data = fh.read(1 << 22)
                    except OSError:
                        continue
                    for secret in secrets:
                        assert secret not in data, f"{secret!r} in {path}"
    finally:
        server.stop()


@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_redirect_is_not_followed_by_git_in_the_build(
    make_manager, git_server, builder, tmp_path
):
    """An allowed smart-HTTP URL answering 301 to another loopback port: git in the build does
    not follow it, and the other server sees no request (issue 9, defect 2, build side). A full
    sha skips the service's own ref lookup, so only the build fetches."""
    target = GitHTTPServer(git_server.repos["hello"].path.parent).start()
    redirect = HostileHTTPServer("redirect", target=target.base).start()
    try:
        port = redirect.port
        m = await make_manager(builder, allowed_repo_patterns=[rf"^http://127\.0\.0\.1:{port}/"])
        build = (
            await m.submit(
                repo=redirect.url("hello"),
                ref=git_server.repos["hello"].head,
                owner=f"red-{builder}",
                name="hello",
            )
        ).build
        await wait_done(build)
        assert redirect.requests and target.seen == []  # the redirect target was never asked
        assert build.state == BuildState.FAILED
        assert "git clone" in (build.error or ""), build.error
        assert await m.list_images([f"red-{builder}"]) == []
    finally:
        redirect.stop()
        target.stop()


def _repo_with_submodule(git_server, name: str, sub_url: str, sha: str) -> str:
    """A served repository whose build prints ``r2d-sub <VERSION of the submodule>``; its
    submodule ``lib`` points at ``sub_url`` at ``sha``. Returns its HEAD."""
    from tests.harness import BUSYBOX_IMAGE
    from tests.test_fetch import add_submodule

    dockerfile = (
        f"FROM {BUSYBOX_IMAGE}\nCOPY . /srv/repo\n"
        "RUN printf 'r2d-sub %s\\n' \"$(cat /srv/repo/lib/VERSION)\"\n"
    )
    repo = git_server.add_repo(name, {"Dockerfile": dockerfile})
    return add_submodule(repo.path, sub_url, "lib", sha)


@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_submodules_allowed_are_built_refused_fail_naming_them(
    make_manager, git_server, builder
):
    """Submodule URLs are held to the allow-list: an allowed one (relative, resolved against
    the parent) is built; one the allow-list does not admit fails the build naming it, although
    its server is reachable (today's main fetched it)."""
    import secrets as _secrets

    tag = f"{builder}-{_secrets.token_hex(3)}"
    m = await make_manager(
        builder, allowed_repo_patterns=[rf"^git://127\.0\.0\.1:\d+/(ok|bad|lib)-{tag}$"]
    )
    lib = git_server.add_repo(f"lib-{tag}", {"VERSION": "2\n"})
    _repo_with_submodule(git_server, f"ok-{tag}", f"../lib-{tag}", lib.head)
    build = (await m.submit(repo=git_server.url(f"ok-{tag}"), owner=f"s-{tag}", name="ok")).build
    await wait_done(build)
    assert build.state == BuildState.BUILT, (build.error, messages(build)[-5:])
    assert any("r2d-sub 2" in line for line in messages(build)), messages(build)[-8:]

    # hello is served by the same reachable daemon, but not on the allow-list
    hello = git_server.repos["hello"]
    _repo_with_submodule(git_server, f"bad-{tag}", git_server.url("hello"), hello.tags["v2"])
    build = (await m.submit(repo=git_server.url(f"bad-{tag}"), owner=f"s-{tag}", name="bad")).build
    await wait_done(build)
    assert build.state == BuildState.FAILED, messages(build)[-5:]
    assert "submodule 'lib'" in build.error and "not allowed" in build.error, build.error
    assert [g.name for g in await m.list_images([f"s-{tag}"])] == ["ok"]


ISSUE_9_INJECTION = 'https://[v1.a"][core]fsmonitor=touch${IFS}PWNED;@github.com/attacker/repo.git'


@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_gitconfig_injection_runs_nothing(make_manager, git_server, docker_host, builder):
    """Issue 9, defect 1. The issue's URL with credentials and a full sha is refused at
    validation. Below validation, the mechanism: a builder handed that kind of URL directly
    (pointed at a reachable anonymous server, as today's main would clone it) refuses it in the
    fetch stage, and the fsmonitor command never runs (no PWNED file anywhere)."""
    from r2d_core.models import Build, Credentials

    m = await make_manager(builder)
    sha = git_server.repos["hello"].head
    with pytest.raises(InvalidRequest):
        await m.submit(
            repo=ISSUE_9_INJECTION,
            ref=sha,
            owner="mallory",
            name="x",
            credentials=Credentials("x", "x"),
        )
    assert m.list_builds(["mallory"]) == []  # (a docker manager also recovers older builds)

    server = GitHTTPServer(git_server.repos["hello"].path.parent, anonymous=True).start()
    port = server.port
    try:
        # as the issue's, but the command leaves the checkout (repo2docker removes that) first
        raw = f'http://[v1.a"][core]fsmonitor=cd${{IFS}}..&&touch${{IFS}}PWNED;@127.0.0.1:{port}/hello'
        build = Build(
            id=f"inject{builder}",
            owner="mallory",
            name="x",
            repo=raw,  # never validated: straight to the builder
            ref=sha,
            sha=sha,
            image=f"r2d-test-inject-{builder}:{sha}",
            credentials=Credentials(USER, PASSWORD),
        )
        m.builder.allowed_repo_patterns = [r"^http://"]
        process = await m.builder.start(build)
        lines = [line async for line in process.output()]
        status = await process.wait()
        if builder == "docker":
            changed = _docker(docker_host, "diff", f"r2d-build-{build.id}").decode()
            await m.builder.forget(build)
            assert "PWNED" not in changed  # today's main: /tmp/PWNED
        else:
            import os

            found = [f for _d, _s, files in os.walk(process.workdir) for f in files]
            await process.cleanup()
            assert "PWNED" not in found
        text = "\n".join(lines)
        assert status != 0 and "Fetching the repository failed" in text, lines[-5:]
    finally:
        server.stop()


async def test_tenancy_one_engine_shares_local_images_and_cache_mounts(make_manager, git_server):
    """The documented residual risk of one engine for several owners (docs/explanation/
    security-tenancy.md): BuildKit's docker driver resolves ``FROM`` against the engine's image
    store, so bob's build can start ``FROM`` alice's local image and read what it holds, and
    ``RUN --mount=type=cache`` caches are shared engine-wide. If this test starts failing, the
    engine isolates owners: update the page."""
    import secrets as _secrets

    from tests.harness import BUSYBOX_IMAGE

    tag = _secrets.token_hex(3)
    m = await make_manager()
    writer = (
        f"FROM {BUSYBOX_IMAGE}\nCOPY . /srv/repo\n"
        f"RUN --mount=type=cache,id=shared-{tag},target=/c echo alice-secret-{tag} > /c/note\n"
    )
    git_server.add_repo(f"alice-{tag}", {"Dockerfile": writer, "SECRET": f"alice-file-{tag}\n"})
    alice = (
        await m.submit(repo=git_server.url(f"alice-{tag}"), owner=f"alice-{tag}", name="a")
    ).build
    await wait_done(alice)
    assert alice.state == BuildState.BUILT, (alice.error, messages(alice)[-5:])

    reader = (
        f"FROM {alice.image}\n"
        f"RUN --mount=type=cache,id=shared-{tag},target=/c "
        'printf \'r2d-read %s %s\\n\' "$(cat /srv/repo/SECRET)" "$(cat /c/note)"\n'
    )
    git_server.add_repo(f"bob-{tag}", {"Dockerfile": reader})
    bob = (await m.submit(repo=git_server.url(f"bob-{tag}"), owner=f"bob-{tag}", name="b")).build
    await wait_done(bob)
    assert bob.state == BuildState.BUILT, (bob.error, messages(bob)[-5:])
    assert any(f"r2d-read alice-file-{tag} alice-secret-{tag}" in line for line in messages(bob)), (
        messages(bob)[-8:]
    )


async def test_a_build_container_that_never_started_is_removed_at_recovery(
    make_manager, git_server, docker_host
):
    """The service stopped between creating a build container (credentials file copied in)
    and starting it: the next service process removes it instead of keeping it as history."""
    from r2d_core.engine import tar_files
    from r2d_core.models import Build, build_labels

    m = await make_manager("docker")
    sha = git_server.repos["hello"].head
    build = Build(
        id="neverstarted1",
        owner="nora",
        name="hello",
        repo=git_server.url("hello"),
        ref="main",
        sha=sha,
        image=m.image_for("nora", "hello", sha),
    )
    engine = DockerEngine(host=docker_host)
    try:
        cid = await engine.create_container(
            {"Image": REPO2DOCKER_IMAGE, "Cmd": ["true"], "Labels": build_labels(build, "build")},
            name=f"r2d-build-{build.id}",
        )
        secret = {"/tmp/repo2docker-service/credentials.json": (b'{"password": "x"}', 0o600)}
        await engine.put_archive(cid, "/", tar_files(secret))
        recovered = await m.builder.recover()
        assert build.id not in [r.fields.get("build-id") for r in recovered]
        ids = {c["Id"] for c in await engine.list_build_containers()}
        assert cid not in ids
    finally:
        await engine.remove_container(f"r2d-build-{build.id}")
        await engine.close()
