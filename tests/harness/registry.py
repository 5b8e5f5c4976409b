"""A real Debian ``docker-registry`` (distribution 2.8) on loopback, for tests, benchmarks and the demo.

Three modes:

* ``"anonymous"``: no auth;
* ``"htpasswd"``: basic auth against a bcrypt htpasswd file of :attr:`RegistryServer.users`;
* ``"token"``: the registry's ``auth: token`` with :class:`TokenIssuer`, a small HTTP token server
  in this process that checks basic credentials and grants scopes from a permission table,
  signing RS256 JWTs with a test key whose self-signed certificate is the registry's
  ``rootcertbundle`` (key identified by an ``x5c`` chain or a libtrust ``kid``).

The registry runs as a child process stopped by its PID; its data and log live in a temporary
directory. Test data goes in through the registry's HTTP API (:class:`Pusher`): no Docker engine.

Run ``python -m tests.harness.registry [anonymous|htpasswd|token]`` to start one by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = [
    "DEFAULT_PERMISSIONS",
    "Grant",
    "PushedImage",
    "Pusher",
    "RegistryServer",
    "TokenIssuer",
    "free_port",
]

REGISTRY_BINARY = "/usr/bin/docker-registry"
SERVICE = "r2d-test-registry"
ISSUER = "r2d-test-issuer"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Grant:
    """``user`` may do ``actions`` on repositories matching the glob ``repositories``.

    ``user`` ``""`` is anonymous; action ``"*"`` is everything (distribution's wildcard).
    """

    user: str
    repositories: str
    actions: frozenset[str]


def _grant(user: str, repositories: str, *actions: str) -> Grant:
    return Grant(user, repositories, frozenset(actions))


#: admin: everything; alice: her own images; bob: his own images (no delete) and reading alice's
DEFAULT_PERMISSIONS: tuple[Grant, ...] = (
    _grant("admin", "*", "*"),
    _grant("alice", "r2d-alice-*", "pull", "push", "delete"),
    _grant("alice", "alice/*", "pull", "push", "delete"),
    _grant("bob", "r2d-bob-*", "pull", "push"),
    _grant("bob", "r2d-alice-*", "pull"),
)


# ---- signing key ---------------------------------------------------------------------------------
_KEY_LOCK = threading.Lock()
_KEY: tuple[Any, bytes, bytes] | None = None  # (private key, cert PEM, cert DER)


def _signing_key() -> tuple[Any, bytes, bytes]:
    """One RSA test key and self-signed certificate per process (generating one takes ~0.1 s)."""
    global _KEY
    with _KEY_LOCK:
        if _KEY is None:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.x509.oid import NameOID

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
            now = dt.datetime.now(dt.timezone.utc)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .sign(key, hashes.SHA256())
            )
            _KEY = (
                key,
                cert.public_bytes(serialization.Encoding.PEM),
                cert.public_bytes(serialization.Encoding.DER),
            )
        return _KEY


def libtrust_kid(public_key: Any) -> str:
    """The libtrust key ID distribution accepts in a JWT ``kid``: base32 of SHA-256(DER)[:30]."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


# ---- token issuer --------------------------------------------------------------------------------
class TokenIssuer:
    """A token server on 127.0.0.1 (a thread of this process) for the registry's ``auth: token``.

    ``requests`` records ``(user, scopes)`` of every token request for assertions;
    ``expires_in`` overrides the lifetime told to clients (the JWT itself lives ``token_ttl``);
    ``delay`` slows every answer down (to make concurrent requests overlap).
    """

    def __init__(
        self,
        users: dict[str, str],
        permissions: Iterable[Grant] = DEFAULT_PERMISSIONS,
        admins: Iterable[str] = ("admin",),
        *,
        key_id: str = "x5c",
        token_ttl: int = 300,
    ) -> None:
        if key_id not in ("x5c", "kid"):
            raise ValueError("key_id is 'x5c' or 'kid'")
        self.users = users
        self.permissions = list(permissions)
        self.admins = set(admins)
        self.key_id = key_id
        self.token_ttl = token_ttl
        self.expires_in: int | None = None
        self.delay = 0.0
        self.requests: list[tuple[str, tuple[str, ...]]] = []
        self._lock = threading.Lock()
        self._key, self.cert_pem, self._cert_der = _signing_key()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # the table
    def allowed(self, user: str, type_: str, name: str, actions: Iterable[str]) -> list[str]:
        wanted = [a for a in actions if a]
        if type_ == "registry":
            return ["*"] if name == "catalog" and user in self.admins else []
        if type_ != "repository":
            return []
        granted: set[str] = set()
        for grant in self.permissions:
            if grant.user == user and fnmatch.fnmatchcase(name, grant.repositories):
                granted |= grant.actions
        if "*" in granted:
            return wanted
        return [a for a in wanted if a in granted]

    def mint(self, user: str, access: list[dict[str, Any]], ttl: int | None = None) -> str:
        """A signed token for ``user`` with exactly ``access`` (no table check)."""
        import jwt

        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,  # a string: distribution 2.8 refuses a list
            "exp": now + (ttl if ttl is not None else self.token_ttl),
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        if self.key_id == "x5c":
            headers = {"x5c": [base64.b64encode(self._cert_der).decode()]}
        else:
            headers = {"kid": libtrust_kid(self._key.public_key())}
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    def fetches(self, scope: str | None = None) -> int:
        """How many token requests asked for ``scope`` (all requests when None)."""
        with self._lock:
            return sum(1 for _, scopes in self.requests if scope is None or scope in scopes)

    def _issue(self, query: dict[str, list[str]], authorization: str | None) -> tuple[int, Any]:
        user = ""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            try:
                name, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return 400, {"errors": [{"code": "UNAUTHORIZED", "message": "bad header"}]}
            if scheme.lower() != "basic" or self.users.get(name) != password or not password:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
            user = name
        if query.get("service", [SERVICE])[0] != SERVICE:
            return 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]}
        scopes = tuple(s for value in query.get("scope", []) for s in value.split())
        with self._lock:
            self.requests.append((user, scopes))
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            type_, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            granted = self.allowed(user, type_, name, actions)
            if granted:
                access.append({"type": type_, "name": name, "actions": granted})
        token = self.mint(user, access)
        lifetime = self.expires_in if self.expires_in is not None else self.token_ttl
        issued = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, {
            "token": token,
            "access_token": token,
            "expires_in": lifetime,
            "issued_at": issued,
        }

    def start(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/token":
                    self.send_error(404)
                    return
                if issuer.delay:
                    time.sleep(issuer.delay)
                status, body = issuer._issue(
                    parse_qs(parts.query), self.headers.get("Authorization")
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="r2d-test-issuer"')
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet in test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="r2d-token-issuer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


# ---- the registry --------------------------------------------------------------------------------
class RegistryServer:
    """A ``docker-registry serve`` child process on ``127.0.0.1:<free port>``."""

    def __init__(
        self,
        mode: str = "anonymous",
        *,
        users: dict[str, str] | None = None,
        permissions: Iterable[Grant] = DEFAULT_PERMISSIONS,
        admins: Iterable[str] = ("admin",),
        key_id: str = "x5c",
        workdir: str | None = None,
        access_log: bool = True,
        delete_enabled: bool = True,
        log_level: str = "info",
        port: int = 0,
    ) -> None:
        if mode not in ("anonymous", "htpasswd", "token"):
            raise ValueError("mode is 'anonymous', 'htpasswd' or 'token'")
        self.mode = mode
        self.users = (
            dict(users)
            if users is not None
            else {name: f"{name}-{secrets.token_hex(6)}" for name in ("admin", "alice", "bob")}
        )
        self.access_log = access_log
        self.delete_enabled = delete_enabled
        self.log_level = log_level
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="r2d-registry-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "registry.log"
        self.config_path = self.dir / "config.yml"
        #: 0 picks a free port at start (and keeps it across stop/start)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.issuer: TokenIssuer | None = None
        if mode == "token":
            self.issuer = TokenIssuer(self.users, permissions, admins, key_id=key_id)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def permissions(self) -> list[Grant]:
        """The token issuer's permission table (edit it in place); empty unless mode "token"."""
        return self.issuer.permissions if self.issuer is not None else []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __repr__(self) -> str:
        return f"RegistryServer(mode={self.mode!r}, url={self.url!r}, pid={self.pid})"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {
                "level": self.log_level,
                "formatter": "text",
                "accesslog": {"disabled": not self.access_log},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": self.delete_enabled},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": secrets.token_hex(16)},
        }
        if self.mode == "htpasswd":
            import bcrypt

            path = self.dir / "htpasswd"
            # cost 4 (the minimum): the registry checks the hash on every request
            lines = [
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4, b'2a')).decode()}"
                for user, pw in self.users.items()
            ]
            path.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "r2d-test-registry", "path": str(path)}}
        elif self.mode == "token":
            assert self.issuer is not None
            bundle = self.dir / "issuer.pem"
            bundle.write_bytes(self.issuer.cert_pem)
            config["auth"] = {
                "token": {
                    "realm": self.issuer.url,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(bundle),
                }
            }
        # JSON is YAML: no YAML library needed
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 15.0) -> RegistryServer:
        """Start (or restart, same port and data) the registry; returns self once it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if self.issuer is not None and not self.issuer.url:
            self.issuer.start()
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            if attempts > 1:
                self.port = free_port()
            self._write_config()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    response = httpx.get(f"{self.url}/v2/", timeout=1)
                    if response.status_code in (200, 401):
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            self._kill()
            if "address already in use" not in self.log_tail() or attempt == attempts - 1:
                break
        raise RuntimeError(f"docker-registry did not start:\n{self.log_tail()}")

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        """Stop the registry process (by its PID); data stay, so :meth:`start` brings it back."""
        self._kill()

    def close(self) -> None:
        """Stop the registry and the token issuer, and remove the temporary directory."""
        self._kill()
        if self.issuer is not None:
            self.issuer.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- admin access for test setup (independent of the client under test) --------------------
    def admin_headers(self, repository: str | None = None) -> dict[str, str]:
        """Headers that let the harness push/delete in ``repository`` (and read the catalog)."""
        if self.mode == "htpasswd":
            token = base64.b64encode(f"admin:{self.users['admin']}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        if self.mode == "token":
            assert self.issuer is not None
            access: list[dict[str, Any]] = [
                {"type": "registry", "name": "catalog", "actions": ["*"]}
            ]
            if repository:
                access.append({"type": "repository", "name": repository, "actions": ["*"]})
            return {"Authorization": f"Bearer {self.issuer.mint('admin', access)}"}
        return {}

    def pusher(self, concurrency: int = 8) -> Pusher:
        return Pusher(self, concurrency)


@dataclass
class PushedImage:
    repository: str
    tag: str
    digest: str
    media_type: str
    config_digest: str
    #: config + layers, compressed (what the client reports as size)
    size: int
    labels: dict[str, str] = field(default_factory=dict)
    architecture: str = "amd64"
    created: str = ""


class Pusher:
    """Uploads blobs and manifests straight through the registry API (``async with``)."""

    def __init__(self, server: RegistryServer, concurrency: int = 8) -> None:
        self.server = server
        self._http = httpx.AsyncClient(
            base_url=server.url,
            timeout=30,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self._limit = asyncio.Semaphore(concurrency)

    async def __aenter__(self) -> Pusher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _call(
        self, method: str, url: str, repository: str, expect: int, **kwargs: Any
    ) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), **self.server.admin_headers(repository)}
        async with self._limit:
            response = await self._http.request(method, url, headers=headers, **kwargs)
        if response.status_code != expect:
            raise RuntimeError(
                f"{method} {url}: HTTP {response.status_code} {response.text[:300]}"
                f"\n{self.server.log_tail(10)}"
            )
        return response

    async def blob(self, repository: str, data: bytes) -> str:
        """Upload one blob (monolithic: POST, then PUT with the digest); returns its digest."""
        digest = sha256_digest(data)
        head = await self._http.head(
            f"/v2/{repository}/blobs/{digest}", headers=self.server.admin_headers(repository)
        )
        if head.status_code == 200:
            return digest
        started = await self._call("POST", f"/v2/{repository}/blobs/uploads/", repository, 202)
        location = httpx.URL(self.server.url).join(started.headers["Location"])
        location = location.copy_merge_params({"digest": digest})
        await self._call(
            "PUT",
            str(location),
            repository,
            201,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    async def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        response = await self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            201,
            content=body,
            headers={"Content-Type": media_type},
        )
        digest = response.headers.get("Docker-Content-Digest", "")
        assert digest == sha256_digest(body), (digest, sha256_digest(body))
        return digest

    async def push_image(
        self,
        repository: str,
        tag: str,
        *,
        labels: dict[str, str] | None = None,
        oci: bool = False,
        layers: int = 1,
        layer_size: int = 512,
        architecture: str = "amd64",
        created: str = "2026-01-02T03:04:05.123456789Z",
        seed: str = "",
    ) -> PushedImage:
        """Push a small image (config with labels + ``layers`` random layers) as ``repository:tag``.

        ``oci=True`` writes an OCI image manifest, else a Docker v2 one (what buildx pushes).
        """
        labels = dict(labels or {})
        layer_blobs = [
            hashlib.sha256(f"{seed}{repository}:{tag}:{i}".encode()).digest() * (layer_size // 32)
            or b"\0"
            for i in range(layers)
        ]
        layer_digests = [await self.blob(repository, b) for b in layer_blobs]
        config = {
            "architecture": architecture,
            "os": "linux",
            "created": created,
            "config": {"Labels": labels, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": layer_digests},
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = await self.blob(repository, config_bytes)
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "size": len(config_bytes),
                "digest": config_digest,
            },
            "layers": [
                {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": len(b), "digest": d}
                for b, d in zip(layer_blobs, layer_digests, strict=True)
            ],
        }
        body = json.dumps(manifest, indent=3).encode()
        digest = await self.manifest(repository, tag, body, media_type)
        return PushedImage(
            repository=repository,
            tag=tag,
            digest=digest,
            media_type=media_type,
            config_digest=config_digest,
            size=len(config_bytes) + sum(len(b) for b in layer_blobs),
            labels=labels,
            architecture=architecture,
            created=created,
        )

    async def push_index(
        self, repository: str, tag: str, children: list[PushedImage], *, oci: bool = True
    ) -> str:
        """Push an index (manifest list) of already pushed ``children``; returns its digest."""
        entries = []
        for child in children:
            body = (
                await self._call(
                    "GET",
                    f"/v2/{repository}/manifests/{child.digest}",
                    repository,
                    200,
                    headers={"Accept": child.media_type},
                )
            ).content
            entries.append(
                {
                    "mediaType": child.media_type,
                    "size": len(body),
                    "digest": child.digest,
                    "platform": {"architecture": child.architecture, "os": "linux"},
                }
            )
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        return await self.manifest(repository, tag, json.dumps(index).encode(), media_type)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    import sys

    args = argv if argv is not None else sys.argv[1:]
    server = RegistryServer(args[0] if args else "anonymous")
    with server:
        print(f"registry {server.mode} at {server.url} (pid {server.pid}); users: {server.users}")
        print(f"log: {server.log_path}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)


if __name__ == "__main__":  # pragma: no cover
    main()
