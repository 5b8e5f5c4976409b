"""Connections held to the network policy: an httpx client whose connection pool connects only
to checked addresses (:class:`CheckedBackend`), and a checked TCP connection for ``git://``."""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref

import httpcore
import httpx

from ..errors import InvalidRequest, Unavailable
from ..netpolicy import AddressRefused, NetPolicy, NetPolicyError, ResolveFailed
from ..urls import RepoURL

__all__ = ["CheckedBackend", "CheckedTransport"]

log = logging.getLogger(__package__)  # "r2d_core.refs", as before the split

_USER_AGENT = "git/2.39 (repo2docker-service)"


def _refused(url: RepoURL, error: NetPolicyError) -> InvalidRequest | Unavailable:
    if isinstance(error, AddressRefused):
        log.warning("refused %s: %s resolves to %s", url.canonical, url.host, error.address)
        return InvalidRequest(str(error), field="repo")
    if isinstance(error, ResolveFailed) and error.temporary:
        return Unavailable(str(error))
    return InvalidRequest(str(error), field="repo")


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows.

    The host is resolved and checked here (refused if any address is internal), the TCP connection
    goes to the checked address, and the connected peer is checked once more. TLS is then started
    by the connection with the original host name, so certificates are verified as usual.
    """

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve_checked(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,  # type: ignore[arg-type]
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
                continue
            peer = stream.get_extra_info("server_addr")
            try:
                self.policy.check_ip(peer[0] if peer else address, host)
            except AddressRefused:
                await stream.aclose()
                raise
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        raise httpcore.ConnectError("unix sockets are not repository hosts")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with :class:`CheckedBackend` under its connection pool (no proxies)."""

    def __init__(self, policy: NetPolicy, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=20,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=CheckedBackend(policy),
        )


#: one client per event loop and policy (connections are bound to the loop that opened them)
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


_ssl_context: ssl.SSLContext | None = None


async def _client(policy: NetPolicy) -> httpx.AsyncClient:
    global _ssl_context
    if _ssl_context is None:  # loading the CA bundle takes tens of ms: not on the loop
        _ssl_context = await asyncio.to_thread(httpx.create_ssl_context, trust_env=False)
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = tuple(str(n) for n in policy.allowed_networks)
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = httpx.AsyncClient(
            transport=CheckedTransport(policy, _ssl_context),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(None),  # the caller's total deadline bounds every exchange
            headers={"User-Agent": _USER_AGENT},
        )
    return client


async def _open_checked(
    url: RepoURL, policy: NetPolicy
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = url.effective_port
    addresses = await policy.resolve_checked(url.host, port)
    error: OSError | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(address, port)
        except OSError as e:
            error = e
            continue
        peer = writer.get_extra_info("peername")
        try:
            policy.check_ip(peer[0] if peer else address, url.host)
        except AddressRefused:
            writer.close()
            raise
        return reader, writer
    assert error is not None
    raise error
