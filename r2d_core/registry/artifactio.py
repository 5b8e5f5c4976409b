"""Raw manifest and blob calls of :class:`~r2d_core.registry.client.RegistryClient` (a mixin):
what OCI artifacts need beyond listing and deleting images — a manifest's descriptor, its bytes,
storing manifests, uploading, reading and deleting blobs. Same error handling and auth as every
other call (they go through the client's ``_request``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from ..errors import UpstreamError
from .models import MANIFEST_ACCEPT
from .names import _check_reference, _check_repository, _sha256
from .untrusted import loads, verify

if TYPE_CHECKING:
    from .client import RegistryClient

__all__ = ["ArtifactIO"]


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    data = loads(body, f"a {what}")
    if not isinstance(data, dict):
        raise UpstreamError(f"the registry sent a {what} that is not a JSON object")
    return data


class ArtifactIO:
    """Mixed into RegistryClient; every method checks names before sending anything."""

    async def _head_manifest(
        self: RegistryClient, repository: str, reference: str
    ) -> httpx.Response:
        """The checked ``HEAD`` of a manifest (what :meth:`head_manifest` and ``digest`` read)."""
        _check_repository(repository)
        _check_reference(reference)
        return await self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            what=f"looking up {repository}:{reference}",
            repository=repository,
        )

    async def head_manifest(
        self: RegistryClient, repository: str, reference: str
    ) -> tuple[str, str, int]:
        """(media type, digest, size) of a manifest: a descriptor for an OCI ``subject``."""
        response = await self._head_manifest(repository, reference)
        digest = response.headers.get("Docker-Content-Digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        size = response.headers.get("Content-Length") or ""
        if not digest or not media_type or not (size.isascii() and size.isdigit()):
            body = await self.raw_manifest(repository, reference)
            data = _json_object(body, "manifest")
            return str(data.get("mediaType") or media_type), _sha256(body), len(body)
        return media_type, digest, int(size or 0)

    async def raw_manifest(
        self: RegistryClient, repository: str, reference: str, *, accept: str = MANIFEST_ACCEPT
    ) -> bytes:
        """A manifest's bytes as stored (checked against its digest when asked by digest)."""
        return (await self._get_manifest(repository, reference, accept))[1]

    async def put_manifest(
        self: RegistryClient, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        _check_repository(repository)
        _check_reference(reference)
        await self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Content-Type": media_type},
            content=body,
            ok=(200, 201, 202),
            what=f"storing the manifest {repository}:{reference}",
            repository=repository,
        )
        self.invalidate(repository)
        return _sha256(body)

    async def upload_blob(self: RegistryClient, repository: str, data: bytes) -> str:
        """Upload a blob (monolithic: POST, then PUT with the digest) unless it is there already."""
        _check_repository(repository)
        digest = _sha256(data)
        exists = await self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            ok=(200, 404),
            what=f"looking up a blob of {repository}",
            repository=repository,
        )
        if exists.status_code == 200:
            return digest
        started = await self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            ok=(202,),
            what=f"starting a blob upload to {repository}",
            repository=repository,
        )
        location = started.headers.get("Location")
        if not location:
            raise UpstreamError(f"the registry started an upload to {repository} without Location")
        target = httpx.URL(self.url).join(location)
        if f"{target.scheme}://{target.netloc.decode()}" != self.url:
            raise UpstreamError(f"the registry's upload location for {repository} leaves it")
        # appended by hand: httpx's params= would drop the upload's own query (its _state)
        separator = "&" if "?" in str(target) else "?"
        await self._request(
            "PUT",
            f"{target}{separator}digest={digest}",
            headers={"Content-Type": "application/octet-stream"},
            content=data,
            ok=(201, 204),
            what=f"uploading a blob to {repository}",
            repository=repository,
        )
        return digest

    async def blob(self: RegistryClient, repository: str, digest: str, *, max_bytes: int) -> bytes:
        """A blob's bytes (at most ``max_bytes``), checked against its digest."""
        _check_repository(repository)
        _check_reference(digest)
        response = await self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            what=f"reading a blob of {repository}",
            repository=repository,
            max_bytes=max_bytes,  # read no further: a never-ending body stops here
        )
        return verify(response.content, digest, f"a blob of {repository}")

    async def delete_manifest(self: RegistryClient, repository: str, digest: str) -> None:
        """Delete a manifest by digest (its tags go with it); a missing one is no error."""
        _check_repository(repository)
        _check_reference(digest)
        await self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            ok=(200, 202, 204, 404),
            what=f"deleting a manifest of {repository}",
            repository=repository,
        )
        self.invalidate(repository)
        self._manifests.pop(digest)
        self._summaries.pop(digest)

    async def delete_blob(self: RegistryClient, repository: str, digest: str) -> None:
        """Unlink a blob from ``repository`` (a missing one is no error)."""
        _check_repository(repository)
        _check_reference(digest)
        await self._request(
            "DELETE",
            f"/v2/{repository}/blobs/{digest}",
            ok=(200, 202, 204, 404),
            what=f"deleting a blob of {repository}",
            repository=repository,
        )
