"""A private smart-HTTP git host for the tests: ``git http-backend`` (CGI) behind HTTP basic auth
on a free loopback port (IPv4 or IPv6), served from a thread::

    with GitHTTPServer(root) as host:          # root: a folder of bare repositories
        url = host.url("hello")                # http://127.0.0.1:PORT/hello
        Credentials(USER, PASSWORD)            # what it lets in
        host.seen, host.auths                  # every request's path and Authorization header

``anonymous=True`` lets every request in. A host that redirects every request elsewhere is
:class:`tests.harness.hostile.HostileHTTPServer` in mode ``redirect``.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .procs import InThread

__all__ = ["PASSWORD", "USER", "GitHTTPServer"]

USER, PASSWORD = "reader", "s3cret-token"
_EXPECTED = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class _Handler(BaseHTTPRequestHandler):
    server: GitHTTPServer

    def do_GET(self) -> None:
        self._backend(b"")

    def do_POST(self) -> None:  # the fetch itself (git-upload-pack)
        self._backend(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _backend(self, body_in: bytes) -> None:
        self.server.seen.append(self.path)
        self.server.auths.append(self.headers.get("Authorization"))
        if not self.server.anonymous and self.headers.get("Authorization") != _EXPECTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body_in)),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_USER": USER,
            "PATH": os.environ["PATH"],
        }
        out = subprocess.run(
            ["git", "http-backend"], env=env, input=body_in, capture_output=True, timeout=60
        ).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class GitHTTPServer(InThread, ThreadingHTTPServer):
    """``git http-backend`` over the bare repositories in ``root``, behind basic auth
    (:data:`USER`, :data:`PASSWORD`) unless ``anonymous``; ``host`` ``"::1"`` for IPv6."""

    def __init__(self, root: str, *, host: str = "127.0.0.1", anonymous: bool = False) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), _Handler)
        self.root, self.anonymous = str(root), anonymous
        self.seen: list[str] = []
        self.auths: list[str | None] = []

    @property
    def base(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"
