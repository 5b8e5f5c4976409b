"""The network policy (r2d_core/netpolicy.py). Pure address logic: nothing here connects anywhere,
and resolution only ever asks for loopback names and literals."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from traitlets import TraitError

from r2d_core.netpolicy import AddressRefused, NetPolicy, ResolveFailed, is_internal

INTERNAL = [
    "127.0.0.1",
    "127.255.0.9",
    "0.0.0.0",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",
    "64:ff9b:1::1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "::ffff:0:7f00:1",  # SIIT IPv4-translated (RFC 2765) of 127.0.0.1
    "::ffff:0:a9fe:a9fe",  # SIIT of 169.254.169.254
    "::ffff:0:a00:1",  # SIIT of 10.0.0.1
    "64:ff9b:1:a9fe:a9fe::",  # local-use NAT64 (RFC 8215), /48 prefix embedding 169.254.169.254
    "64:ff9b:1::808:808",  # local-use NAT64 stays internal even around a public address
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (RFC 4380 example): never a git host
    "2001:0:7f00:1:0:0:80ff:fffe",  # Teredo: server 127.0.0.1, client 127.0.0.1 (obfuscated)
    "2001:0:808:808::f7f7:f7f7",  # Teredo around public addresses: still internal
    "64:ff9b:0:1::1",  # reserved (outside 2000::/3, not the NAT64 /96)
    "1::1",
    "4000::1",  # unassigned
]
PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "140.82.121.3",
    "100.128.0.1",  # just above CGNAT
    "172.32.0.1",  # just above 172.16/12
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "::ffff:0:808:808",  # SIIT of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("ip", INTERNAL)
def test_internal(ip):
    assert is_internal(ip)
    assert is_internal(ipaddress.ip_address(ip.split("%")[0]))
    with pytest.raises(AddressRefused) as info:
        NetPolicy().check_ip(ip, "git.example")
    # the user learns the host and the fix, not the internal address
    assert "git.example" in str(info.value) and "allowed_networks" in str(info.value)
    assert ip not in str(info.value)
    assert info.value.address == ip


@pytest.mark.parametrize("ip", PUBLIC)
def test_public(ip):
    assert not is_internal(ip)
    NetPolicy().check_ip(ip)


def test_not_an_address():
    with pytest.raises(ValueError):
        is_internal("localhost")


@given(st.ip_addresses(v=4))
def test_mapped_forms_agree_with_ipv4(address):
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | int(address))
    translated = ipaddress.IPv6Address((0xFFFF << 48) | int(address))  # SIIT ::ffff:0:a.b.c.d
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80) | 1)
    assert (
        is_internal(mapped)
        == is_internal(address)
        == is_internal(nat64)
        == is_internal(translated)
        == is_internal(six_to_four)
    )


@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_teredo_is_internal_whatever_it_embeds(server, client):
    teredo = ipaddress.IPv6Address(
        (0x20010000 << 96) | (int(server) << 64) | (~int(client) & 0xFFFFFFFF)
    )
    assert teredo.teredo == (server, client)
    assert is_internal(teredo)


@given(st.ip_addresses())
def test_never_raises_on_addresses(address):
    assert isinstance(is_internal(address), bool)
    if not address.is_global:
        assert is_internal(address)


def test_allowed_networks():
    policy = NetPolicy(["127.0.0.0/8", "fd00::/8", "10.1.2.3"])
    for ip in ("127.0.0.1", "127.3.4.5", "::ffff:127.0.0.1", "fd00::5", "10.1.2.3", "8.8.8.8"):
        policy.check_ip(ip)
    for ip in ("10.1.2.4", "169.254.169.254", "::1", "192.168.0.1"):
        with pytest.raises(AddressRefused):
            policy.check_ip(ip)


@pytest.mark.parametrize("bad", ["127.0.0.0/33", "localhost", "", "10.0.0.0/8/8", "::1/129"])
def test_bad_network_says_the_fix(bad):
    with pytest.raises(ValueError, match=re.escape("CIDR notation; write it like '127.0.0.0/8'")):
        NetPolicy([bad])


async def test_resolve_checked_refuses_loopback_by_default():
    with pytest.raises(AddressRefused):
        await NetPolicy().resolve_checked("localhost", 80)
    with pytest.raises(AddressRefused):
        await NetPolicy().resolve_checked("127.0.0.1", 80)
    assert await NetPolicy(["127.0.0.0/8"]).resolve_checked("127.0.0.1", 80) == ["127.0.0.1"]
    assert NetPolicy(["127.0.0.0/8"]).resolve_checked_sync("127.0.0.1", 80) == ["127.0.0.1"]


async def test_resolve_checked_any_address_refuses():
    """localhost has 127.0.0.1 and (often) ::1: allowing only one network is not enough."""
    policy = NetPolicy(["127.0.0.0/8"])
    try:
        has_v6 = any(i[0] == socket.AF_INET6 for i in socket.getaddrinfo("localhost", 80))
    except OSError:
        has_v6 = False
    if has_v6:
        with pytest.raises(AddressRefused):
            await policy.resolve_checked("localhost", 80)
    assert NetPolicy(["127.0.0.0/8", "::1/128"]).resolve_checked_sync("localhost", 80)


async def test_resolve_failure_is_clean():
    with pytest.raises(ResolveFailed, match="could not be resolved"):
        await NetPolicy().resolve_checked("no-such-host.invalid", 443)
    with pytest.raises(ResolveFailed):
        NetPolicy().resolve_checked_sync("no-such-host.invalid", 443)


def test_manager_trait(monkeypatch):
    from r2d_core.manager import BuildManager

    assert BuildManager().allowed_networks == []
    monkeypatch.setenv("R2D_ALLOWED_NETWORKS", "127.0.0.0/8, fd00::/8")
    assert BuildManager().allowed_networks == ["127.0.0.0/8", "fd00::/8"]
    with pytest.raises(TraitError, match="allowed_networks: 'nope' is not a network in CIDR"):
        BuildManager(allowed_networks=["nope"])
    monkeypatch.setenv("R2D_ALLOWED_NETWORKS", "nope")  # the environment is checked too, at once
    with pytest.raises(TraitError, match="allowed_networks: 'nope' is not a network in CIDR"):
        BuildManager()


async def test_one_internal_address_among_public_ones_refuses(monkeypatch):
    """A name with a public and an internal address is refused (DNS answers are not queried here:
    getaddrinfo is replaced, and nothing connects)."""
    answers = {
        "mixed.example": ["8.8.8.8", "10.0.0.1"],
        "public.example": ["8.8.8.8", "2606:4700:4700::1111"],
    }

    def fake(host, port, *args, **kwargs):
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    async def fake_async(self, host, port, *args, **kwargs):
        return fake(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_async)
    policy = NetPolicy()
    with pytest.raises(AddressRefused) as e:
        await policy.resolve_checked("mixed.example", 443)
    assert e.value.address == "10.0.0.1" and "10.0.0.1" not in str(e.value)
    with pytest.raises(AddressRefused):
        policy.resolve_checked_sync("mixed.example", 443)
    assert await policy.resolve_checked("public.example", 443) == answers["public.example"]
    assert NetPolicy(["10.0.0.0/8"]).resolve_checked_sync("mixed.example", 443) == [
        "8.8.8.8",
        "10.0.0.1",
    ]
