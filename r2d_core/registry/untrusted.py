"""Reading what a registry sends: it is a remote server, hence untrusted (docs/explanation/security-registry.md).

Three small checks every registry answer goes through, in one place:

* :func:`loads`: JSON that is not JSON, or nested so deep that Python's parser raises
  ``RecursionError`` (not a ``ValueError``: 100 000 ``[`` are 100 kB), is an
  :class:`~r2d_core.errors.UpstreamError`, never an exception the HTTP layer answers 500 to;
* :func:`verify`: content fetched by digest matches it, for every algorithm the OCI spec
  registers (``sha256``, ``sha512``); content whose digest cannot be checked is refused;
* :class:`BoundedStream`: a response body that stops at a byte limit (httpx reads bodies whole,
  401s and redirect hops included, so the bound sits in the stream);
* :func:`clean`: text from the registry (error messages, header values) shown in our messages
  is cut short and has no control characters, so it cannot forge log lines or terminal output.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import httpx

from ..errors import UpstreamError

__all__ = [
    "BoundedStream",
    "Refused",
    "TooLarge",
    "check_digest",
    "checked_header",
    "clean",
    "loads",
    "verify",
]

#: the digest algorithms content can be checked against (OCI image spec, "registered algorithms")
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def loads(body: bytes | str, what: str) -> Any:
    """``body`` parsed as JSON; :class:`UpstreamError` naming ``what`` if it is not usable JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError(f"the registry sent {what} that is not usable JSON") from None


def check_digest(body: bytes, digest: str) -> bool | None:
    """Whether ``body`` has ``digest``; None if its algorithm is not one we can compute."""
    algorithm, _, hexdigest = digest.partition(":")
    if _ALGORITHMS.get(algorithm) != len(hexdigest):
        return None
    return hashlib.new(algorithm, body).hexdigest() == hexdigest


def verify(body: bytes, digest: str, what: str) -> bytes:
    """``body`` if it has ``digest``; else :class:`UpstreamError` (unknown algorithms too)."""
    matches = check_digest(body, digest)
    if matches is None:
        raise UpstreamError(
            f"the registry named {what} by a digest of an algorithm that cannot be checked "
            f"({clean(digest.partition(':')[0], 20)!r}); only sha256 and sha512 are accepted"
        )
    if not matches:
        raise UpstreamError(f"the registry sent {what} not matching its digest")
    return body


def clean(text: str, limit: int = 200) -> str:
    """``text`` without control characters (each run becomes a space), at most ``limit`` long."""
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TooLarge(Exception):
    """A registry answer went past its byte limit (raised while httpx reads the body)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class Refused(Exception):
    """An answer refused before its body is read (a compression we did not ask for)."""


class BoundedStream(httpx.AsyncByteStream):
    """A response body that raises :class:`TooLarge` past ``limit`` bytes: httpx reads bodies
    whole (``aread``), intermediate 401 and redirect answers included, so the bound must sit in
    the stream itself."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> Any:
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._limit:
                raise TooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def checked_header(response: httpx.Response, body: bytes, what: str) -> str:
    """The digest of a manifest fetched by tag: its ``Docker-Content-Digest`` when that matches
    the body, the body's sha256 when the header is absent or of an algorithm we cannot compute;
    a header that does not match is refused (HEAD answers would not match what we cached)."""
    header = response.headers.get("Docker-Content-Digest")
    if header:
        matches = check_digest(body, header)
        if matches:
            return header
        if matches is False:
            raise UpstreamError(
                f"the registry's digest header for {what} does not match the manifest it sent"
            )
    return "sha256:" + hashlib.sha256(body).hexdigest()
