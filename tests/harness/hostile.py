"""Hostile git servers for the security tests: small threaded servers on 127.0.0.1 free ports.

Each one plays a remote the service must survive: a smart-HTTP host that redirects elsewhere, one
that floods the ref advertisement with empty ``0004`` packets, one that drips a byte at a time,
and the same flood/drip over the git protocol. They run in their own threads, so a test's event
loop can be measured while they talk. Start them as context managers; ``requests`` counts what
each has been asked (to prove that a server was never contacted).
"""

from __future__ import annotations

import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .procs import InThread

__all__ = [
    "FLOOD_BYTES",
    "CountingHTTPServer",
    "HostileGitServer",
    "HostileHTTPServer",
]

#: what the flood servers send: just under 32 MiB (the old cap) of empty pkt-lines, then a flush
FLOOD_BYTES = 32 * 1024 * 1024 - 64 * 1024
_SERVICE_HEAD = b"001e# service=git-upload-pack\n0000"
_AD_TYPE = "application/x-git-upload-pack-advertisement"


def _send_flood(write: Any) -> int:
    """Send FLOOD_BYTES of empty ``0004`` packets, the last four a flush that ends the
    advertisement: under a 32 MiB cap, so a client without a packet bound parses all ~8M packets."""
    block = b"0004" * (64 * 1024 // 4)
    sent = 0
    while sent + len(block) < FLOOD_BYTES:
        write(block)
        sent += len(block)
    tail = b"0004" * ((FLOOD_BYTES - sent - 4) // 4) + b"0000"
    write(tail)
    return sent + len(tail)


def _send_drip(server: HostileHTTPServer | HostileGitServer, send: Any, head: bytes = b"") -> None:
    """Start a long pkt-line, then send it a byte every ``server.interval``, until the server stops
    or the client hangs up."""
    try:
        send(head + b"fff0")
        while not server.stopping.is_set():
            send(b"a")
            server.sent += 1
            time.sleep(server.interval)
    except OSError:
        pass  # the client hung up: what it should do


class _Handler(BaseHTTPRequestHandler):
    server: HostileHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        getattr(self, f"_{self.server.mode}")()

    def _redirect(self) -> None:
        self.send_response(301)
        self.send_header("Location", self.server.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _ok(self) -> None:  # a harmless answer: the counting server's
        body = b"not a git repository\n"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _flood(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", _AD_TYPE)
        self.send_header("Content-Length", str(len(_SERVICE_HEAD) + FLOOD_BYTES))
        self.end_headers()
        try:
            self.wfile.write(_SERVICE_HEAD)
            self.server.sent += _send_flood(self.wfile.write)
        except OSError:
            pass  # the client hung up: what it should do

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", _AD_TYPE)
        self.end_headers()

        def send(data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        _send_drip(self.server, send, _SERVICE_HEAD)

    def log_message(self, *args: Any) -> None:
        pass


class HostileHTTPServer(InThread, ThreadingHTTPServer):
    """A smart-HTTP "git host" in one of the modes ``redirect`` (301 to ``target`` + the same path),
    ``flood`` (a 32 MiB advertisement of ``0004`` packets) or ``drip`` (a byte every ``interval``)."""

    def __init__(
        self, mode: str, target: str = "", interval: float = 0.2, host: str = "127.0.0.1"
    ) -> None:
        super().__init__((host, 0), _Handler)
        self.mode, self.target, self.interval = mode, target, interval
        self.requests: list[str] = []
        self.sent = 0

    @property
    def base(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"

    def url(self, path: str = "repo") -> str:
        return f"{self.base}/{path}"


class CountingHTTPServer(HostileHTTPServer):
    """A server that must never be asked anything: it records requests and answers 404."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__("ok", host=host)


class _GitHandler(socketserver.BaseRequestHandler):
    server: HostileGitServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        try:
            sock.recv(4096)  # the upload-pack request
            self.server.requests += 1
            if self.server.mode == "flood":
                self.server.sent += _send_flood(sock.sendall)
            else:
                _send_drip(self.server, sock.sendall)
        except OSError:
            pass


class HostileGitServer(InThread, socketserver.ThreadingTCPServer):
    """A ``git://`` server that floods (``flood``) or drips (``drip``) its advertisement."""

    allow_reuse_address = True

    def __init__(self, mode: str, interval: float = 0.2) -> None:
        super().__init__(("127.0.0.1", 0), _GitHandler)
        self.mode, self.interval = mode, interval
        self.requests = 0
        self.sent = 0

    def url(self, path: str = "repo") -> str:
        return f"git://127.0.0.1:{self.port}/{path}"
