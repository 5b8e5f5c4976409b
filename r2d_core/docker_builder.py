"""The :class:`DockerBuilder`: each build runs in a container on the engine (see
:mod:`r2d_core.builders` for what all builders share)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

from traitlets import CaselessStrEnum, Dict, Float, Int, Unicode, default

from . import aio
from .builders import (
    Builder,
    BuildProcess,
    RecoveredBuild,
    _credentials_json,
    fetch_bootstrap,
)
from .engine import DockerEngine
from .errors import Misconfigured, NotFound, UpstreamError
from .fetch import SPEC_ENV
from .models import Build, build_labels, parse_labels, parse_time
from .sizes import env_choice

__all__ = ["DockerBuilder"]


#: DockerBuilder.pull_policy's values, the default first
PULL_POLICIES = ("ifnotpresent", "always", "never")


# ------------------------------------------------------------------------------------------------
class _ContainerProcess(BuildProcess):
    def __init__(
        self,
        engine: DockerEngine,
        container_id: str,
        follow: bool = True,
        exit_nonce: str | None = None,
    ) -> None:
        self.exit_nonce = exit_nonce
        self.engine = engine
        self.container_id = container_id
        self.follow = follow
        self._exit: asyncio.Task[int] | None = None

    def _wait_task(self) -> asyncio.Task[int]:
        """The engine's ``wait`` for this container, asked once while the log is read (so the
        exit status is there when the log ends, not one more request later); asked again after
        it failed (lost contact)."""
        task = self._exit
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._exit = asyncio.ensure_future(self.engine.wait_container(self.container_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def output(self) -> AsyncIterator[str]:
        self._wait_task()
        return self.engine.container_output(self.container_id, follow=self.follow)

    async def wait(self) -> int:
        return await self._wait_task()

    async def cancel(self) -> None:
        await self.engine.kill_container(self.container_id)

    reattachable = True

    async def exists(self) -> bool:
        try:
            await self.engine.inspect_container(self.container_id)
        except NotFound:
            return False
        return True

    async def oom_killed(self) -> bool:
        info = await self.engine.inspect_container(self.container_id)
        return bool(info.get("State", {}).get("OOMKilled"))


class DockerBuilder(Builder):
    """Run repo2docker in a container on the engine, with the engine's socket mounted.

    The build container is labelled like the image it makes, so a restarted service finds it, reads
    its whole log again from Docker and follows it to the end.
    """

    kind = "docker"
    _config_dir = "/tmp/repo2docker-service"  # nosec B108  # inside the build container, made for this build alone

    image = Unicode(
        "quay.io/jupyterhub/repo2docker:2026.4.0",
        config=True,
        help="""Image with ``jupyter-repo2docker``, the docker CLI and its buildx plugin. Default
        ``quay.io/jupyterhub/repo2docker:2026.4.0``. Env: ``R2D_REPO2DOCKER_IMAGE``.""",
    )

    @default("image")
    def _default_image(self) -> str:
        return os.environ.get("R2D_REPO2DOCKER_IMAGE", "quay.io/jupyterhub/repo2docker:2026.4.0")

    pull_policy = CaselessStrEnum(
        PULL_POLICIES,
        PULL_POLICIES[0],
        config=True,
        help="""When the service pulls :attr:`image` (anonymously, through the engine):
        ``ifnotpresent`` (the default) before a build when the engine does not have it;
        ``always`` before every build (a moving tag stays current; builds starting together
        share one pull); ``never`` (pull it yourself: a build then fails saying so). The pull
        is a line of the build's log. A private image: pull it on the engine yourself, with
        ``never``. Env ``R2D_BUILDER_PULL_POLICY``.""",
    )

    @default("pull_policy")
    def _default_pull_policy(self) -> str:
        return env_choice("R2D_BUILDER_PULL_POLICY", PULL_POLICIES, PULL_POLICIES[0])

    pull_timeout = Float(
        600.0,
        config=True,
        help="""Seconds a pull of :attr:`image` may take before the build waiting for it fails
        (default 600).""",
    )

    python = Unicode(
        "python3",
        config=True,
        help="""Python interpreter (3.8 or newer) of :attr:`image` that runs the fetch stage
        (standard library only). Default ``python3`` (on the ``PATH`` of repo2docker's
        images).""",
    )

    fetch_uid = Int(
        65534,
        allow_none=True,
        config=True,
        help="""uid (and gid) git runs as in the build container's fetch stage (default 65534,
        ``nobody``): git, which parses what remote servers send, then cannot use the engine
        socket mounted for repo2docker. None: git runs as the image's user (root).""",
    )

    network_mode = Unicode(
        "",
        config=True,
        help="""Network mode of the build container (it fetches the repository): e.g. ``host``.
        Default: empty, the engine's default network. Env: ``R2D_BUILD_CONTAINER_NETWORK``.""",
    )

    @default("network_mode")
    def _default_network_mode(self) -> str:
        return os.environ.get("R2D_BUILD_CONTAINER_NETWORK", "")

    docker_socket = Unicode(
        config=True,
        help="""Host path of the engine's socket, mounted into build containers at
        ``/var/run/docker.sock``. Default: the socket of ``DockerEngine.host``.""",
    )

    @default("docker_socket")
    def _default_docker_socket(self) -> str:
        return self.engine.socket_path if self.engine else "/var/run/docker.sock"

    extra_host_config = Dict(
        config=True,
        help="""Extra Docker ``HostConfig`` for build containers (e.g. ``{"Memory": 4294967296}``).
        Default: none.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pull_lock = asyncio.Lock()
        #: pulls done: a build that waited for the lock while one ran does not pull again
        self._pulls = 0

    def entry_point(self, command: list[str]) -> str | None:
        # the image's jupyter-repo2docker is repo2docker's console script; if the image's
        # `python` cannot import it, the fetch stage execs the command instead
        return self.repo2docker_entry if list(command) == ["jupyter-repo2docker"] else None

    async def _create(self, build: Build, config: dict[str, Any]) -> str:
        """The build container, :attr:`image` pulled first as :attr:`pull_policy` says: with
        ``ifnotpresent`` only when the engine answers that it has no such image (no request
        more for a build whose image is there)."""
        name = f"r2d-build-{build.id}"
        if self.pull_policy == "always":
            await self._pull_shared(build, again=True)
        try:
            return await self.engine.create_container(config, name=name)
        except NotFound:
            if await self.engine.inspect_image(self.image) is not None:
                raise  # not the image that is missing
            if self.pull_policy == "never":
                raise Misconfigured(
                    f"the builder image {self.image} is not on the Docker engine and "
                    "c.DockerBuilder.pull_policy is 'never': pull it on the engine "
                    f"(docker pull {self.image}), or set c.DockerBuilder.image"
                ) from None
        await self._pull_shared(build, again=False)
        return await self.engine.create_container(config, name=name)

    async def _pull_shared(self, build: Build, *, again: bool) -> None:
        """Pull :attr:`image` (``again``: even when the engine has it), or :class:`Misconfigured`
        saying what to do. One pull at a time; builds that waited for one do not pull again."""
        generation = self._pulls
        async with self._pull_lock:
            if self._pulls != generation:
                return  # pulled while this build waited for the lock
            if not again and await self.engine.inspect_image(self.image) is not None:
                return
            build.log.append("fetching", f"Pulling the builder image {self.image}")
            try:
                async with aio.timeout(self.pull_timeout):
                    await self._pull()
            except asyncio.TimeoutError:
                raise Misconfigured(
                    f"pulling the builder image {self.image} took more than "
                    f"{self.pull_timeout:g} s: pull it on the engine yourself, or raise "
                    "c.DockerBuilder.pull_timeout"
                ) from None
            self._pulls += 1

    async def _pull(self) -> None:
        pulled = self.engine.pull_image(self.image)
        try:
            async for record in pulled:
                if record.get("error"):
                    raise Misconfigured(
                        f"the builder image {self.image} could not be pulled: "
                        f"{str(record['error'])[:300]} (pull it on the engine yourself with "
                        "pull_policy 'never', or set c.DockerBuilder.image)"
                    )
        except (UpstreamError, NotFound) as e:
            # the engine answered (it could not pull: no such image, a registry it cannot
            # reach): not "unavailable"; an engine that does not answer stays Unavailable
            raise Misconfigured(
                f"the builder image {self.image} could not be pulled: {e}"
            ) from None
        finally:
            await pulled.aclose()  # type: ignore[attr-defined]

    async def start(self, build: Build) -> BuildProcess:
        credentials = build.credentials
        spec = self.fetch_spec(
            build,
            self._config_dir,
            ["jupyter-repo2docker"],
            credentials_stdin=credentials is not None,
        )
        spec["git_uid"] = self.fetch_uid
        # the build ends on the stage's exit line, not ~40 ms later when the engine has taken the
        # container down; known to this process and the stage only (not after a restart: then
        # the engine's exit status is waited for)
        nonce = spec["exit_nonce"] = secrets.token_urlsafe(16)
        # printed by the bootstrap before it compiles the fetch stage (which then does not)
        spec["announce"] = f"Fetching {build.repo} at {build.sha}"
        env = [
            "DOCKER_HOST=unix:///var/run/docker.sock",
            "PYTHONUNBUFFERED=1",
            f"{SPEC_ENV}={json.dumps(spec)}",
        ]
        host_config: dict[str, Any] = {
            "Binds": [f"{self.docker_socket}:/var/run/docker.sock"],
            "AutoRemove": False,
        }
        if self.network_mode:
            host_config["NetworkMode"] = self.network_mode
        host_config.update(self.extra_host_config)
        labels = build_labels(build, "build")
        config = {
            "Image": self.image,
            "Cmd": [self.python, "-I", "-c", fetch_bootstrap()],
            "Env": env,
            "Labels": labels,
            "HostConfig": host_config,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
            # credentials: on stdin, closed after the one write (not in Env, Cmd, Labels, files)
            **({"OpenStdin": True, "StdinOnce": True} if credentials is not None else {}),
        }
        container_id = await self._create(build, config)
        try:
            steps = [self.engine.start_container(container_id)]
            if credentials is not None:  # at once: the fetch stage waits for them
                steps.append(self.engine.write_stdin(container_id, _credentials_json(credentials)))
            for result in await asyncio.gather(*steps, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        except BaseException:
            await self.engine.remove_container(container_id)
            raise
        return _ContainerProcess(self.engine, container_id, exit_nonce=nonce)

    async def recover(self) -> list[RecoveredBuild]:
        ours = [
            (summary, fields)
            for summary in await self.engine.list_build_containers()
            if (fields := parse_labels(summary.get("Labels"))) is not None
        ]
        # a few inspects at a time, not one after the other: a restart with hundreds of finished
        # build containers answers its first request sooner (the engine serves them in parallel)
        limit = asyncio.Semaphore(8)

        async def inspect(container_id: str) -> dict[str, Any] | None:
            async with limit:
                try:
                    return await self.engine.inspect_container(container_id)
                except NotFound:
                    return None  # removed since the listing

        infos = await asyncio.gather(*(inspect(summary["Id"]) for summary, _ in ours))
        recovered = []
        for (summary, fields), info in zip(ours, infos, strict=True):
            if info is None:
                continue
            state = info.get("State", {})
            if state.get("Status") == "created":
                # never started (the previous process stopped between create and start): it
                # has no log worth keeping, and may hold a credentials file the fetch stage
                # would have deleted first thing
                await self.engine.remove_container(summary["Id"])
                continue
            running = bool(state.get("Running"))
            recovered.append(
                RecoveredBuild(
                    fields=fields,
                    process=_ContainerProcess(self.engine, summary["Id"], follow=running),
                    running=running,
                    started=parse_time(state.get("StartedAt")),
                    finished=None if running else parse_time(state.get("FinishedAt")),
                    exit_code=None if running else state.get("ExitCode"),
                    oom_killed=bool(state.get("OOMKilled")),
                )
            )
        return recovered

    async def forget(self, build: Build) -> None:
        # Right after a kill the engine may still hold the container's filesystem ("device or
        # resource busy"): try again briefly rather than leave a dead container behind.
        for attempt in range(10):
            try:
                await self.engine.remove_container(f"r2d-build-{build.id}")
                return
            except UpstreamError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
