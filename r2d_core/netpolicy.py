"""Which addresses the service (and its fetch stage) may connect to.

Standard library only, and no import from the rest of ``r2d_core``: the fetch stage copies this
file into build containers and runs it with a bare ``python3``.

The rule: a repository host is refused when **any** address it resolves to is internal (not
globally routable), unless an admin allowed that address's network. Refusing on *any* rather than
*all* means a name with one public and one internal address cannot be used to make a client pick
the internal one (DNS tricks). Checking is not enough on its own: callers must connect to the
checked address (pinning) or check the address actually connected, so that a second DNS answer
(rebinding) cannot swap it.

Stable API::

    is_internal("169.254.169.254")                     # True
    policy = NetPolicy(["127.0.0.0/8"])                 # ValueError if a CIDR is malformed
    policy.check_ip("127.0.0.1")                        # fine; raises AddressRefused otherwise
    await policy.resolve_checked("example.org", 443)    # ["93.184.215.14", ...] or raises
    policy.resolve_checked_sync("example.org", 443)     # the same, blocking (for scripts)

:class:`AddressRefused` and :class:`ResolveFailed` carry a message for the user that names the host
but never the internal address (an attacker must not learn the service's internal DNS from it);
the address is in ``.address`` for the service's log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

__all__ = [
    "AddressRefused",
    "NetPolicy",
    "NetPolicyError",
    "ResolveFailed",
    "is_internal",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IANA special-purpose IPv4 ranges (and multicast, reserved) that are never a public git host.
#: Listed explicitly because ``is_global`` differs between Python versions (3.11 calls multicast
#: and 6to4 "global").
_INTERNAL_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT (shared address space)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. cloud metadata 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast 255.255.255.255
    )
]
_INTERNAL_V6 = [
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
]
#: IPv6 forms that carry an IPv4 address: judged by the IPv4 address inside
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use NAT64: always internal
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT ::ffff:0:a.b.c.d (RFC 2765)
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
#: Teredo (RFC 4380) embeds a server and an obfuscated client IPv4 address, but the prefix itself
#: is not globally reachable (IANA) and no git host lives behind it: always internal, whatever it
#: embeds (decided here, not left to ``is_global``, which differs between Python versions)
_TEREDO = ipaddress.IPv6Network("2001::/32")
#: the only globally routable IPv6 unicast space (IANA); everything outside it that is not one of
#: the embedded forms above is reserved, unassigned or local (e.g. 64:ff9b:0:1::1, 1::1)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


class NetPolicyError(ValueError):
    """Base of the errors of this module; ``str(error)`` is for the user."""

    def __init__(self, message: str, *, host: str = "", address: str = "") -> None:
        super().__init__(message)
        self.host = host
        #: the refused address, for the service's log only (never show it to the user)
        self.address = address


class AddressRefused(NetPolicyError):
    """The host is (or resolves to) an internal address that no allowed network covers."""


class ResolveFailed(NetPolicyError):
    """The host name could not be resolved; ``temporary`` when a retry may succeed."""

    def __init__(self, message: str, *, host: str = "", temporary: bool = False) -> None:
        super().__init__(message, host=host)
        self.temporary = temporary


def _address(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip
    text = ip.split("%", 1)[0]  # getaddrinfo may append an IPv6 scope ("fe80::1%eth0")
    return ipaddress.ip_address(text)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if (
        address in _NAT64_WELL_KNOWN
        or address in _IPV4_TRANSLATED
        or (address in _IPV4_COMPATIBLE and int(address) > 1)
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def is_internal(ip: str | IPAddress) -> bool:
    """True unless ``ip`` is a globally routable unicast address.

    Loopback, private, link-local (cloud metadata), CGNAT, unique-local, multicast, reserved,
    documentation and unspecified addresses are internal, and so are IPv6 addresses that embed
    one of those (IPv4-mapped ``::ffff:a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, IPv4-compatible,
    NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``), local-use NAT64 ``64:ff9b:1::/48`` and Teredo
    ``2001::/32`` whatever they embed, and IPv6 addresses outside global unicast ``2000::/3``.
    A string that is not an IP address raises ``ValueError``.
    """
    address = _address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL or address in _TEREDO:
            return True
        inner = _embedded_v4(address)
        if inner is not None:
            return is_internal(inner)
        if address not in _GLOBAL_UNICAST_V6:
            return True
        if any(address in net for net in _INTERNAL_V6):
            return True
    elif any(address in net for net in _INTERNAL_V4):
        return True
    return not address.is_global or address.is_multicast


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """CIDR strings (``"127.0.0.0/8"``, ``"fd00::/8"``, a bare address for one host) as networks.

    Raises ``ValueError`` naming the bad entry and the fix.
    """
    networks: list[IPNetwork] = []
    for value in values:
        text = value.strip() if isinstance(value, str) else value
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except (TypeError, ValueError):
            raise ValueError(
                f"{value!r} is not a network in CIDR notation; write it like '127.0.0.0/8', "
                "'10.1.0.0/16' or 'fd00::/8'"
            ) from None
    return networks


class NetPolicy:
    """The address rule with an admin's exceptions (``allowed_networks``, CIDR strings)."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed_networks = parse_networks(allowed_networks)

    def __repr__(self) -> str:
        return f"NetPolicy({[str(n) for n in self.allowed_networks]!r})"

    def allows(self, ip: str | IPAddress) -> bool:
        address = _address(ip)
        if any(_in(address, net) for net in self.allowed_networks):
            return True
        return not is_internal(address)

    def check_ip(self, ip: str | IPAddress, host: str = "") -> None:
        """Raise :class:`AddressRefused` unless the service may connect to ``ip``."""
        if not self.allows(ip):
            name = host or "the repository host"
            raise AddressRefused(
                f"{name} is on an internal network (loopback, private, link-local or similar), "
                "which this service does not fetch from; an administrator can allow a network with "
                "c.BuildManager.allowed_networks (env R2D_ALLOWED_NETWORKS)",
                host=host,
                address=str(ip),
            )

    def _check_all(self, host: str, infos: list) -> list[str]:
        addresses: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise ResolveFailed(f"the repository host {host} has no address", host=host)
        for ip in addresses:
            self.check_ip(ip, host)
        return addresses

    async def resolve_checked(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` (IP strings, in resolver order), all allowed by this policy.

        Resolves with ``loop.getaddrinfo`` (in the loop's executor, never blocking the loop).
        Raises :class:`AddressRefused` if **any** address is refused, :class:`ResolveFailed` if the
        name does not resolve. Connect to one of the returned addresses, not to ``host`` again.
        """
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as e:
            raise _resolve_failed(host, e) from None
        return self._check_all(host, infos)

    def resolve_checked_sync(self, host: str, port: int) -> list[str]:
        """:meth:`resolve_checked`, blocking: for scripts and threads, never on an event loop."""
        try:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as e:
            raise _resolve_failed(host, e) from None
        return self._check_all(host, infos)


def _in(address: IPAddress, network: IPNetwork) -> bool:
    if address.version != network.version:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped in network
        return False
    return address in network


def _resolve_failed(host: str, error: socket.gaierror) -> ResolveFailed:
    temporary = error.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
    return ResolveFailed(
        f"the repository host {host} could not be resolved"
        + (" (temporary DNS failure; try again)" if temporary else ""),
        host=host,
        temporary=temporary,
    )
