"""A hostile OCI registry for the red-team tests: an untrusted registry server on a 127.0.0.1 free port.

:class:`HostileRegistry` speaks enough of the distribution API (catalog, tag lists, manifests,
blobs, monolithic uploads, deletes) from an in-memory store to be a working registry: the service's
real client pushes build records and listing snapshots to it and reads them back. Every attack is
a **route** put in front of that store (:meth:`HostileRegistry.route`): a handler that answers one
method and path pattern however the test likes (an endless body, a byte every second, a 100 000
deep JSON array, a Link header that never ends, a 401 naming a foreign token realm, a redirect).
The helpers on :class:`Handler` (``send``, ``send_json``, ``stream``, ``drip``) write such answers.

It runs in its own threads (``ThreadingHTTPServer``), so the event loop of the test is free to be
measured while it talks. ``requests`` records method, path and headers of every request, so a
test can prove what was (never) sent where: run a second instance as a "foreign host" to see
whether credentials reached it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_MANIFEST",
    "Handler",
    "HostileRegistry",
    "Seen",
    "deep_json",
    "sha256",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_PATH_RE = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs|tags)/(?P<rest>.*)$")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def deep_json(depth: int = 100_000) -> bytes:
    """A JSON document nested ``depth`` deep (``{"a":[[[...]]]}``): small on the wire, and a
    ``RecursionError`` (not a ``ValueError``) in Python's ``json`` module."""
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


@dataclass(frozen=True)
class Seen:
    """One request the server got."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


Route = Callable[["Handler", "re.Match[str]"], None]


class Handler(BaseHTTPRequestHandler):
    server: HostileRegistry
    protocol_version = "HTTP/1.1"
    # headers and body are two writes: without this, Nagle + delayed ACK add 40 ms per answer
    disable_nagle_algorithm = True

    # ---- answers a route can give ---------------------------------------------------------------
    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self._write(body)

    def send_json(
        self, data: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self.send(status, json.dumps(data).encode(), headers)

    def stream(
        self,
        chunks: Iterable[bytes],
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        interval: float = 0.0,
    ) -> None:
        """A body without a length, ended by closing the connection: ``chunks`` may be endless
        (it stops when the client hangs up or the server stops)."""
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            for chunk in chunks:
                if self.server.stopping.is_set():
                    return
                self.wfile.write(chunk)
                self.wfile.flush()
                self.server.sent += len(chunk)
                if interval:
                    time.sleep(interval)
        except OSError:
            pass  # the client hung up: what it should do

    def drip(self, data: bytes, interval: float = 0.5, **kwargs: Any) -> None:
        """``data`` one byte every ``interval`` seconds (each read phase is short, the whole is not)."""
        self.stream((data[i : i + 1] for i in range(len(data))), interval=interval, **kwargs)

    def _write(self, body: bytes) -> None:
        try:
            self.wfile.write(body)
            self.server.sent += len(body)
        except OSError:
            pass

    # ---- dispatch -----------------------------------------------------------------------------
    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.server.requests.append(
            Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        )
        path = urlsplit(self.path).path
        for method, pattern, route in reversed(list(self.server.routes)):
            match = pattern.match(path)
            if match and method in (self.command, "*"):
                route(self, match)
                return
        self.server.honest(self, path)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle

    def log_message(self, *args: Any) -> None:
        pass


class HostileRegistry(ThreadingHTTPServer):
    """An in-memory registry on 127.0.0.1 whose answers tests take over route by route."""

    daemon_threads = True
    request_queue_size = 128  # the client opens 16 connections at once; the default backlog is 5

    def __init__(self, host: str = "127.0.0.1") -> None:
        # another loopback address (127.0.0.2) makes a "foreign host" for realm and redirect tests
        super().__init__((host, 0), Handler)
        self.routes: list[tuple[str, re.Pattern[str], Route]] = []
        self.requests: list[Seen] = []
        self.stopping = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()
        #: (repository, digest) -> bytes
        self.blobs: dict[tuple[str, str], bytes] = {}
        #: (repository, tag or digest) -> (media type, body)
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def host(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> HostileRegistry:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- attacks ------------------------------------------------------------------------------
    def route(self, method: str, pattern: str) -> Callable[[Route], Route]:
        """Decorator: answer ``method`` (``"*"``: any) on paths matching ``pattern`` with the
        function (the newest matching route wins)."""

        def add(fn: Route) -> Route:
            self.routes.append((method, re.compile(pattern), fn))
            return fn

        return add

    def seen(self, method: str | None = None, contains: str = "") -> list[Seen]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and contains in r.path
        ]

    # ---- content ------------------------------------------------------------------------------
    def put_blob(self, repository: str, data: bytes) -> str:
        digest = sha256(data)
        with self._lock:
            self.blobs[(repository, digest)] = data
        return digest

    def put_manifest(
        self, repository: str, reference: str | None, body: bytes | dict[str, Any], media_type: str
    ) -> str:
        """Store a manifest under its digest and, if given, a tag; returns its digest."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        digest = sha256(raw)
        with self._lock:
            self.manifests[(repository, digest)] = (media_type, raw)
            if reference is not None:
                self.manifests[(repository, reference)] = (media_type, raw)
        return digest

    def put_image(
        self, repository: str, tag: str, labels: dict[str, str] | None = None
    ) -> tuple[str, bytes]:
        """A one-layer Docker v2 image with ``labels``; returns (manifest digest, body)."""
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "2026-12-01T10:00:00Z",
                "config": {"Labels": labels or {}},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
        layer = secrets.token_bytes(64)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "digest": self.put_blob(repository, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": self.put_blob(repository, layer),
                    "size": len(layer),
                }
            ],
        }
        body = json.dumps(manifest).encode()
        return self.put_manifest(repository, tag, body, DOCKER_MANIFEST), body

    def put_artifact(
        self,
        repository: str,
        tag: str,
        *,
        artifact_type: str,
        layers: list[tuple[str, bytes]],
        annotations: dict[str, str] | None = None,
        embed: bool = False,
        subject: dict[str, Any] | None = None,
    ) -> str:
        """An OCI artifact (empty config, ``layers`` of (media type, bytes)) as the service writes
        them; ``embed`` also puts each layer's bytes into its descriptor (``data``)."""
        config = self.put_blob(repository, b"{}")
        descriptors = []
        for media_type, data in layers:
            descriptor: dict[str, Any] = {
                "mediaType": media_type,
                "digest": self.put_blob(repository, data),
                "size": len(data),
            }
            if embed:
                descriptor["data"] = base64.b64encode(data).decode()
            descriptors.append(descriptor)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": descriptors,
            "annotations": annotations or {},
        }
        if subject is not None:
            manifest["subject"] = subject
        return self.put_manifest(repository, tag, manifest, OCI_MANIFEST)

    # ---- the honest registry behind the routes ------------------------------------------------
    def repositories(self) -> list[str]:
        with self._lock:
            return sorted({repo for repo, _ in self.manifests} | {repo for repo, _ in self.blobs})

    def tags(self, repository: str) -> list[str]:
        with self._lock:
            return sorted(
                ref for repo, ref in self.manifests if repo == repository and ":" not in ref
            )

    def honest(self, h: Handler, path: str) -> None:
        if path in ("/v2", "/v2/"):
            return h.send_json({})
        if path == "/v2/_catalog":
            return h.send_json({"repositories": self.repositories()})
        match = _PATH_RE.match(path)
        if not match:
            return h.send_json({"errors": [{"code": "UNSUPPORTED"}]}, 404)
        repo, kind, rest = match["repo"], match["kind"], match["rest"]
        if kind == "tags" and rest == "list" and h.command == "GET":
            tags = self.tags(repo)
            if not tags:
                return h.send_json({"errors": [{"code": "NAME_UNKNOWN"}]}, 404)
            return h.send_json({"name": repo, "tags": tags})
        if kind == "manifests":
            return self._manifest(h, repo, rest)
        if kind == "blobs":
            return self._blob(h, repo, rest)
        return h.send_json({"errors": [{"code": "UNSUPPORTED"}]}, 405)

    def _manifest(self, h: Handler, repo: str, ref: str) -> None:
        if h.command == "PUT":
            digest = self.put_manifest(
                repo, None if ":" in ref else ref, h.body, h.headers["Content-Type"]
            )
            return h.send(
                201,
                headers={
                    "Docker-Content-Digest": digest,
                    "Location": f"/v2/{repo}/manifests/{digest}",
                },
            )
        with self._lock:
            found = self.manifests.get((repo, ref))
            if h.command == "DELETE" and found is not None:
                digest = sha256(found[1])
                for key in [
                    k for k, v in self.manifests.items() if k[0] == repo and sha256(v[1]) == digest
                ]:
                    del self.manifests[key]
                return h.send(202)
        if found is None:
            return h.send_json({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, 404)
        media_type, body = found
        h.send(200, body, {"Docker-Content-Digest": sha256(body)}, content_type=media_type)

    def _blob(self, h: Handler, repo: str, rest: str) -> None:
        if rest == "uploads/" and h.command == "POST":
            return h.send(
                202,
                headers={"Location": f"/v2/{repo}/blobs/uploads/{secrets.token_hex(8)}?_state=x"},
            )
        if rest.startswith("uploads/") and h.command == "PUT":
            [digest] = parse_qs(urlsplit(h.path).query)["digest"]
            if sha256(h.body) != digest:
                return h.send_json({"errors": [{"code": "DIGEST_INVALID"}]}, 400)
            self.put_blob(repo, h.body)
            return h.send(201, headers={"Docker-Content-Digest": digest})
        with self._lock:
            data = self.blobs.get((repo, rest))
            if h.command == "DELETE":
                self.blobs.pop((repo, rest), None)
                return h.send(202 if data is not None else 404)
        if data is None:
            return h.send_json({"errors": [{"code": "BLOB_UNKNOWN"}]}, 404)
        h.send(200, data, {"Docker-Content-Digest": rest}, content_type="application/octet-stream")
