"""DockerBuilder.pull_policy: the builder image pulled through the real engine from a real
docker-registry on loopback (the engine pulls from nowhere else here), or a build that fails
saying what to do."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from r2d_core.manager import BuildManager
from r2d_core.models import BuildState
from tests.harness import REPO2DOCKER_IMAGE
from tests.registry_fixtures import serve_registry
from tests.test_manager import StartedManagers, make_config, wait_done

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@pytest.fixture(scope="module")
def builder_registry():
    yield from serve_registry("anonymous")


@pytest.fixture
async def pull_manager(docker_host, local_images, git_server):
    started = StartedManagers()

    async def factory(image: str, policy: str) -> BuildManager:
        c: Config = make_config(docker_host, "docker")
        c.DockerBuilder.image = image
        c.DockerBuilder.pull_policy = policy
        return await started.start(c)

    yield factory
    await started.stop_all()


def _published(dockerd, registry, tag: str) -> str:
    """The harness's repo2docker image pushed to the loopback registry as ``tag``, and that
    name removed from the engine again (the layers stay: the image under its own name)."""
    image = f"{registry.url.removeprefix('http://')}/r2d-builders/repo2docker:{tag}"
    dockerd.docker("tag", REPO2DOCKER_IMAGE, image)
    dockerd.docker("push", image)
    dockerd.docker("rmi", image)
    return image


async def _fails_sparing_the_engine(m: BuildManager, git_server, name: str, error: str) -> None:
    """A build of ``m`` fails with ``error`` in its message, and the engine is not marked
    unavailable (it answered: the image is the problem)."""
    build = (await m.submit(repo=git_server.url("hello"), owner="pully", name=name)).build
    await wait_done(build)
    assert build.state == BuildState.FAILED
    assert error in (build.error or "")
    assert m.ready, m._last_error


def _present(dockerd, image: str) -> bool:
    return dockerd.docker("image", "inspect", image, check=False).returncode == 0


async def test_a_missing_builder_image_is_pulled_before_the_build(
    pull_manager, dockerd, builder_registry, git_server
):
    image = _published(dockerd, builder_registry, "ifnotpresent")
    assert not _present(dockerd, image)
    m = await pull_manager(image, "ifnotpresent")
    build = (await m.submit(repo=git_server.url("hello"), owner="pully", name="hello")).build
    await wait_done(build)
    assert build.state == BuildState.BUILT, build.error
    lines = [line.message for line in build.log.lines()]
    assert f"Pulling the builder image {image}" in lines
    assert _present(dockerd, image)
    # present now: the next build does not pull
    again = (await m.submit(repo=git_server.url("hello"), ref="v1", owner="pully", name="h2")).build
    await wait_done(again)
    assert again.state == BuildState.BUILT, again.error
    assert not [line for line in again.log.lines() if "Pulling" in line.message]


async def test_never_fails_the_build_saying_what_to_do(
    pull_manager, dockerd, builder_registry, git_server
):
    image = _published(dockerd, builder_registry, "never")
    m = await pull_manager(image, "never")
    await _fails_sparing_the_engine(
        m, git_server, "never", "pull_policy is 'never': pull it on the engine"
    )
    assert not _present(dockerd, image)  # nothing was pulled


async def test_a_pull_that_fails_fails_the_build_not_the_engine(pull_manager, dockerd, git_server):
    # a loopback registry port where nothing listens: the engine's pull fails at once
    from tests.harness.procs import free_port

    image = f"127.0.0.1:{free_port()}/r2d-builders/repo2docker:gone"
    m = await pull_manager(image, "ifnotpresent")
    await _fails_sparing_the_engine(
        m, git_server, "gone", f"the builder image {image} could not be pulled"
    )


async def test_an_image_the_registry_does_not_have_fails_the_build_not_the_engine(
    pull_manager, builder_registry, git_server
):
    # the registry answers (manifest unknown): the engine's 404 is the image's, not the engine's
    image = f"{builder_registry.url.removeprefix('http://')}/r2d-builders/nothing:here"
    m = await pull_manager(image, "ifnotpresent")
    await _fails_sparing_the_engine(
        m, git_server, "nothing", f"the builder image {image} could not be pulled"
    )


async def test_always_pulls_again(pull_manager, dockerd, builder_registry, git_server):
    image = _published(dockerd, builder_registry, "always")
    dockerd.docker("pull", image)  # present already: "always" pulls anyway
    m = await pull_manager(image, "always")
    build = (await m.submit(repo=git_server.url("hello"), owner="pully", name="always")).build
    await wait_done(build)
    assert build.state == BuildState.BUILT, build.error
    assert f"Pulling the builder image {image}" in [line.message for line in build.log.lines()]
