"""The Docker engine, through aiodocker, with every failure translated into the core's errors.

Only what the service needs: images and containers carrying our labels, logs, archives. An engine
that is down gives :class:`~r2d_core.errors.Unavailable`; the next call simply tries again, so the
service recovers when the engine comes back, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from .errors import Conflict, NotFound, R2DError, Unavailable, UpstreamError
from .logs import LineSplitter
from .models import LABEL_PREFIX
from .naming import parse_reference

__all__ = ["DockerEngine", "docker_errors", "tar_files"]


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Translate aiodocker/aiohttp failures while doing ``what`` into :class:`R2DError`."""
    try:
        yield
    except R2DError:
        raise
    except DockerError as e:
        if e.status == 404:
            raise NotFound(f"{what}: not found ({e.message})") from None
        if e.status == 409:
            raise Conflict(f"{what}: {e.message}") from None
        if e.status == 900:  # aiodocker's "cannot connect"
            raise Unavailable(
                f"Docker engine unreachable while trying to {what}: {e.message}"
            ) from None
        raise UpstreamError(f"Docker engine refused to {what}: [{e.status}] {e.message}") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise Unavailable(f"Docker engine unreachable while trying to {what}: {e!r}") from None
    except Exception as e:
        # aiohttp's client errors (server disconnected mid-stream, ...) are not OSErrors
        if type(e).__module__.startswith("aiohttp"):
            raise Unavailable(
                f"Docker engine connection failed while trying to {what}: {e!r}"
            ) from None
        raise


def tar_files(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar archive of ``{path: (content, mode)}`` for ``put_archive``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


class DockerEngine(LoggingConfigurable):
    """Connection to the Docker engine that runs builds and stores images."""

    host = Unicode(
        config=True,
        help="""Docker engine URL, e.g. ``unix:///var/run/docker.sock`` (the default) or
        ``tcp://127.0.0.1:2375``. Defaults to the ``DOCKER_HOST`` environment variable.""",
    )

    @default("host")
    def _default_host(self) -> str:
        return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    timeout = Float(
        30.0,
        config=True,
        help="Timeout in seconds for ordinary Docker API calls (default 30; streams have none).",
    )

    _client: aiodocker.Docker | None = None

    @property
    def socket_path(self) -> str | None:
        """The unix socket path of :attr:`host`, if it is one (to mount into build containers)."""
        return self.host[len("unix://") :] if self.host.startswith("unix://") else None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            import aiohttp

            self._client = aiodocker.Docker(
                url=self.host,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def ping(self) -> None:
        with docker_errors("ping"):
            await asyncio.wait_for(self._ping(), self.timeout)

    async def _ping(self) -> None:
        async with self.client._query("_ping") as response:
            await response.read()

    # ---- images -----------------------------------------------------------------------------
    async def list_images(self) -> list[dict[str, Any]]:
        """Images carrying our owner label (one entry per image id, with all its tags)."""
        with docker_errors("list images"):
            return await asyncio.wait_for(
                self.client.images.list(filters={"label": [f"{LABEL_PREFIX}owner"]}), self.timeout
            )

    async def inspect_image(self, reference: str) -> dict[str, Any] | None:
        """The image's inspect document, or None when there is no such image."""
        try:
            with docker_errors(f"inspect image {reference}"):
                return await asyncio.wait_for(self.client.images.inspect(reference), self.timeout)
        except NotFound:
            return None

    async def tag_image(self, image_id: str, reference: str) -> None:
        """Give the image ``image_id`` the name ``reference`` (``repository:tag``)."""
        repository, _, tag = reference.rpartition(":")
        with docker_errors(f"tag image {reference}"):
            await asyncio.wait_for(
                self.client.images.tag(image_id, repository, tag=tag), self.timeout
            )

    async def push_image(
        self, repository: str, tag: str, auth: dict[str, str] | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Push ``repository:tag`` through the engine; yields its progress records.

        Credentials travel only in the ``X-Registry-Auth`` header of this one request. Closing
        this iterator (or cancelling the task reading it) closes the connection, which is what
        makes the engine stop the push: aiodocker's own ``images.push(stream=True)`` leaves the
        response open until garbage collection, and the engine goes on pushing meanwhile.
        """
        from aiodocker.utils import compose_auth_header

        headers = {"X-Registry-Auth": "placeholder"}  # anonymous pushes need some header
        if auth is not None:
            headers["X-Registry-Auth"] = compose_auth_header(auth, repository.partition("/")[0])
        async for record in self._progress(
            f"images/{repository}/push", {"tag": tag}, headers, f"push {repository}:{tag}"
        ):
            yield record

    async def pull_image(self, reference: str) -> AsyncIterator[dict[str, Any]]:
        """Pull ``reference`` (``repository:tag`` or ``repository@digest``) through the engine,
        anonymously; yields its progress records (an ``error`` record is the engine's failure).
        Closing the iterator closes the connection, which stops the engine's pull."""
        parsed = parse_reference(reference)
        # one tag (without one, the engine would pull every tag of the repository)
        params = {"fromImage": parsed.repository, "tag": parsed.digest or parsed.tag or "latest"}
        headers = {"X-Registry-Auth": "placeholder"}
        async for record in self._progress("images/create", params, headers, f"pull {reference}"):
            yield record

    async def _progress(
        self, path: str, params: dict[str, str], headers: dict[str, str], what: str
    ) -> AsyncIterator[dict[str, Any]]:
        """``POST path`` and the engine's progress records (a push, a pull); the connection is
        closed when the iterator is (aiodocker's own streams leave it open until collected)."""
        from aiodocker.jsonstream import json_stream_stream

        with docker_errors(what):
            async with self.client._query(
                path,
                "POST",
                params=params,
                headers=headers,
                timeout=self.client._resolve_long_running_timeout(None),
            ) as response:
                try:
                    async for record in json_stream_stream(response):
                        yield record
                finally:
                    response.close()

    async def remove_image(self, reference: str) -> None:
        """Remove one tag (and the image, if that was its last tag)."""
        with docker_errors(f"remove image {reference}"):
            await asyncio.wait_for(
                self.client.images.delete(reference, noprune=False), self.timeout
            )

    async def list_dangling_images(self) -> list[dict[str, Any]]:
        """Untagged images carrying our owner label (never anybody else's images)."""
        filters = {"dangling": ["true"], "label": [f"{LABEL_PREFIX}owner"]}
        with docker_errors("list dangling images"):
            return await asyncio.wait_for(self.client.images.list(filters=filters), self.timeout)

    # ---- disk and caches (raw API: aiodocker wraps none of these) ----------------------------
    async def info(self) -> dict[str, Any]:
        """``GET /info`` (``DockerRootDir``, ``Driver``, ...)."""
        with docker_errors("read the engine's info"):
            return await asyncio.wait_for(self.client._query_json("info"), self.timeout)

    async def disk_usage(self) -> dict[str, Any]:
        """``GET /system/df``: what images, containers, volumes and the build cache take."""
        with docker_errors("read the engine's disk usage"):
            return await asyncio.wait_for(self.client._query_json("system/df"), self.timeout)

    async def prune_build_cache(self, keep_storage: int) -> dict[str, Any]:
        """``POST /build/prune?keep-storage=N``: BuildKit drops its least recently used cache
        until at most ``keep_storage`` bytes are left (API 1.39+, dockerd 18.09+)."""
        with docker_errors("prune the build cache"):
            return await asyncio.wait_for(
                self.client._query_json(
                    "build/prune", method="POST", params={"keep-storage": str(keep_storage)}
                ),
                # pruning a large cache takes a while: a generous bound, still a bound
                max(self.timeout, 300.0),
            )

    async def containers_by_image(self) -> dict[str, list[dict[str, Any]]]:
        """Every container on the engine (running or not), grouped by its image id."""
        with docker_errors("list containers"):
            containers = await asyncio.wait_for(
                self.client._query_json("containers/json", params={"all": "1"}), self.timeout
            )
        grouped: dict[str, list[dict[str, Any]]] = {}
        for container in containers:
            grouped.setdefault(container.get("ImageID", ""), []).append(container)
        return grouped

    # ---- containers -------------------------------------------------------------------------
    async def list_build_containers(self) -> list[dict[str, Any]]:
        with docker_errors("list build containers"):
            containers = await asyncio.wait_for(
                self.client.containers.list(
                    all=True, filters={"label": [f"{LABEL_PREFIX}build-id"]}
                ),
                self.timeout,
            )
            return [c._container for c in containers]

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        with docker_errors(f"inspect container {container_id[:12]}"):
            container = self.client.containers.container(container_id)
            return await asyncio.wait_for(container.show(), self.timeout)

    async def create_container(self, config: dict[str, Any], name: str | None = None) -> str:
        with docker_errors("create a build container"):
            container = await asyncio.wait_for(
                self.client.containers.create(config, name=name), self.timeout
            )
            return container.id

    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        with docker_errors("copy files into the build container"):
            await self.client.containers.container(container_id).put_archive(path, data)

    async def write_stdin(self, container_id: str, data: bytes) -> None:
        """Write ``data`` to the stdin of a container created with ``OpenStdin`` and
        ``StdinOnce``, then close it (its process reads to the end of it). Works before and
        after the start: the two can be asked at once. The bytes travel on this one attach
        connection only: they are in no container setting, file or log (``docker inspect``,
        ``diff``, ``cp`` and ``logs`` show nothing of them)."""
        from aiodocker.stream import Stream
        from yarl import URL

        async def setup() -> tuple[URL, None, bool]:
            query = {"stdin": 1, "stdout": 0, "stderr": 0, "stream": 1}
            # aiodocker's own attach() inspects the container first (for its Tty): one more
            # round trip; ours are created without a TTY
            return URL(f"containers/{container_id}/attach").with_query(query), None, False

        stream = Stream(self.client, setup)
        with docker_errors("write to the build container's stdin"):
            try:
                await asyncio.wait_for(stream.write_in(data), self.timeout)
            finally:
                await stream.close()

    async def start_container(self, container_id: str) -> None:
        with docker_errors("start the build container"):
            await asyncio.wait_for(
                self.client.containers.container(container_id).start(), self.timeout
            )

    async def wait_container(self, container_id: str) -> int:
        with docker_errors("wait for the build container"):
            result = await self.client.containers.container(container_id).wait(timeout=None)
            return int(result.get("StatusCode", -1))

    async def kill_container(self, container_id: str) -> None:
        try:
            with docker_errors("kill the build container"):
                await asyncio.wait_for(
                    self.client.containers.container(container_id).kill(), self.timeout
                )
        except (NotFound, Conflict):
            pass  # gone already, or not running: both mean "stopped"

    async def remove_container(self, container_id: str) -> None:
        try:
            with docker_errors("remove the build container"):
                await asyncio.wait_for(
                    self.client.containers.container(container_id).delete(force=True), self.timeout
                )
        except (NotFound, Conflict):
            pass  # already gone, or removal already in progress

    async def container_output(self, container_id: str, follow: bool = True) -> AsyncIterator[str]:
        """The container's output (stdout and stderr), split into lines, from the start.

        Streamed in both cases, never read whole: with ``follow=False`` (a container that has
        stopped) Docker ends the stream after the last line. Lines are bounded (see
        :class:`~r2d_core.logs.LineSplitter`): output without newlines cannot grow without limit,
        and a last line without a newline is kept.
        """
        container = self.client.containers.container(container_id)
        splitter = LineSplitter()
        with docker_errors("read build logs"):
            # aiodocker only streams with follow=True (follow=False reads the whole log into a
            # list); for a stopped container both give the same lines
            stream = container.log(stdout=True, stderr=True, follow=True)
            async for chunk in stream:
                for line in splitter.feed(chunk):
                    yield line
        last = splitter.flush()
        if last is not None:
            yield last
