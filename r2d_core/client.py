"""A typed async client of the repo2docker-service REST API, for spawners, JupyterLab extensions
and scripts. httpx, Hub token auth, errors raised as the core's own exception classes.

::

    async with R2DClient("http://127.0.0.1:8000/services/repo2docker/", token) as r2d:
        result = await r2d.build("https://github.com/org/repo", ref="main")
        if result.build:
            async for line in r2d.follow(result.build["id"]):
                print(line.message)
        images = await r2d.images(owner="alice")
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    R2DError,
    RateLimited,
    Unauthorized,
    Unavailable,
    UpstreamError,
)

__all__ = ["BuildResult", "LogEvent", "R2DClient"]

_BY_STATUS: dict[int, type[R2DError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    502: UpstreamError,
    503: Unavailable,
}


@dataclass(frozen=True)
class LogEvent:
    """One line of a build log; ``omitted`` is set on a long log's truncation marker only
    (``{"lines", "bytes", "first", "last"}``: what its head-and-tail log leaves out)."""

    n: int
    phase: str
    message: str
    time: float | None = None
    omitted: dict[str, int] | None = None


@dataclass(frozen=True)
class BuildResult:
    """The answer to a build request: a build (new or joined), or the existing image."""

    build: dict[str, Any] | None
    image: dict[str, Any] | None
    skipped: bool
    joined: bool = False


class R2DClient:
    """Client of one service (``url`` is the service prefix, ending in ``/``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
        reconnect_delay: float = 1.0,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._headers = {"Authorization": f"token {token}"}
        self.reconnect_delay = reconnect_delay

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> R2DClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._client.request(
                method, self.url + path, headers=self._headers, **kwargs
            )
        except httpx.HTTPError as e:
            raise Unavailable(f"repo2docker-service unreachable at {self.url}: {e!r}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    # ---- API ----------------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        """Version, builder, registry, limits and the caller's permissions."""
        return await self._request("GET", "api/")

    async def images(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Images the caller may read (newest first), optionally of one owner."""
        params = {"owner": owner} if owner else None
        return (await self._request("GET", "api/images", params=params))["images"]

    async def image(self, owner: str, name: str) -> dict[str, Any]:
        return await self._request("GET", f"api/images/{owner}/{name}")

    async def delete_image(self, owner: str, name: str, tag: str | None = None) -> dict[str, Any]:
        params = {"tag": tag} if tag else None
        return await self._request("DELETE", f"api/images/{owner}/{name}", params=params)

    async def build(
        self,
        repo: str,
        ref: str = "HEAD",
        *,
        name: str | None = None,
        owner: str | None = None,
        push: bool = False,
        force: bool = False,
        credentials: tuple[str, str] | None = None,
        options: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> BuildResult:
        """Start (or join, or skip) a build. ``options``: repo2docker options the service's
        admin allows (see :meth:`info` ``["options"]``); ``annotations``: namespaced keys to short
        strings, stored with the image and returned by every answer about it."""
        body: dict[str, Any] = {"repo": repo, "ref": ref, "push": push, "force": force}
        if options:
            body["options"] = options
        if annotations:
            body["annotations"] = annotations
        if name:
            body["name"] = name
        if owner:
            body["owner"] = owner
        if credentials:
            body["credentials"] = {"username": credentials[0], "password": credentials[1]}
        data = await self._request("POST", "api/builds", json=body)
        if data.get("skipped"):
            return BuildResult(build=None, image=data["image"], skipped=True)
        return BuildResult(build=data, image=None, skipped=False, joined=bool(data.get("joined")))

    async def builds(
        self,
        owner: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """One page of builds, newest first (the service's default size without ``limit``).

        :meth:`all_builds` walks every page."""
        return (await self._builds_page(owner, state, limit, before))["builds"]

    async def all_builds(
        self, owner: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every build the caller may read, newest first, ``limit`` per request."""
        builds: list[dict[str, Any]] = []
        before = None
        while True:
            data = await self._builds_page(owner, state, limit, before)
            builds += data["builds"]
            before = data.get("next")
            if not before:
                return builds

    async def _builds_page(
        self, owner: str | None, state: str | None, limit: int | None, before: str | None
    ) -> dict[str, Any]:
        pairs = (("owner", owner), ("state", state), ("limit", limit), ("before", before))
        params = {k: v for k, v in pairs if v}
        return await self._request("GET", "api/builds", params=params or None)

    async def get_build(self, build_id: str) -> dict[str, Any]:
        return await self._request("GET", f"api/builds/{build_id}")

    async def cancel(self, build_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"api/builds/{build_id}")

    async def follow(
        self, build_id: str, since: int = 0, max_reconnects: int = 10
    ) -> AsyncIterator[LogEvent]:
        """The build's log lines from ``since``, live until the build ends.

        A dropped connection is resumed from the next line (``Last-Event-ID``): no line is lost
        or repeated.
        """
        cursor = since
        failures = 0
        while True:
            headers = {**self._headers, "Accept": "text/event-stream"}
            if cursor > 0:
                headers["Last-Event-ID"] = str(cursor - 1)
            try:
                async with self._client.stream(
                    "GET", self.url + f"api/builds/{build_id}/logs", headers=headers, timeout=None
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error(response)
                    event: str | None = None
                    current = -1
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            current = int(line[4:])
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event == "log":
                            if current >= cursor:
                                data = json.loads(line[6:])
                                yield LogEvent(
                                    current,
                                    data["phase"],
                                    data["message"],
                                    data.get("time"),
                                    data.get("omitted"),
                                )
                                cursor = current + 1
                                failures = 0
                        elif line.startswith("data: ") and event == "done":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > max_reconnects:
                    raise Unavailable(f"lost the log stream of build {build_id}") from None
                await asyncio.sleep(self.reconnect_delay)

    async def wait(self, build_id: str) -> dict[str, Any]:
        """Wait until the build ends; return its final state."""
        async for _line in self.follow(build_id, since=10**12):
            pass
        return await self.get_build(build_id)


def _error(response: httpx.Response) -> R2DError:
    try:
        body = response.json()
        message = body.get("message") or response.reason_phrase
    except ValueError:
        body, message = {}, response.text[:200] or response.reason_phrase
    cls = _BY_STATUS.get(
        response.status_code, UpstreamError if response.status_code >= 500 else InvalidRequest
    )
    details = (
        {k: v for k, v in body.items() if k not in ("error", "message")}
        if isinstance(body, dict)
        else {}
    )
    if cls is RateLimited:
        retry = response.headers.get("Retry-After")
        details.pop("retry_after", None)
        return RateLimited(message, retry_after=float(retry) if retry else None, **details)
    error = cls(message, **details)
    return error
