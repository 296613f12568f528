"""SSRF guard: which addresses a subscriber URL may resolve to, checked at every attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any

from yarl import URL

from relay.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# One getaddrinfo answer: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
# The lookup the guard asks; injectable so tests can play a rebinding DNS server.
GetAddrInfo = Callable[[str, int], Awaitable[Sequence[AddrInfo]]]

# Cloud metadata endpoints are refused even when private targets are allowed.
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# "This network": Linux connects 0.0.0.0 to the local host, so the whole /8 counts as unspecified.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# IPv6 forms whose last 32 bits are an IPv4 address the packet ends up at (the mapped form and
# 6to4 and Teredo have their own accessors): IPv4-compatible, SIIT-translated, NAT64 (RFC 6052
# well-known prefix, and the RFC 8215 local-use prefix as it is deployed, with a /96).
_EMBEDDING = (
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
)
_V6_SELF = {ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1")}
# What inet_aton may see: anything else (whitespace, which glibc ignores after a valid address)
# is a host name, not a literal.
_IPV4_SPELLING = re.compile(r"[0-9a-fA-FxX.]+")


class BlockedAddress(Exception):
    """The target resolves to an address relay may not connect to."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form reaches (mapped, compatible, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip not in _V6_SELF and any(ip in net for net in _EMBEDDING):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@lru_cache(maxsize=4096)
def blocked_reason(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why relay refuses to connect to `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return blocked_reason(inner, allow_private=allow_private)
        ip = ipaddress.IPv6Address(int(ip))  # drop a %scope, which would defeat the set lookup
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:  # fec0::/10, still routed
        return "a private or reserved address"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a private or reserved address"
    return None


@lru_cache(maxsize=4096)
def literal_ip(host: str) -> IPAddress | None:
    """An IP written in any form `inet_aton` accepts (decimal, octal, hex, short) or IPv6."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # A fully qualified "127.0.0.1." is still that address (browsers and resolvers agree).
    host = host[:-1] if host.endswith(".") else host
    if not _IPV4_SPELLING.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


async def system_getaddrinfo(host: str, port: int) -> Sequence[AddrInfo]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def resolve(host: str, port: int, *, allow_private: bool,
                  getaddrinfo: GetAddrInfo = system_getaddrinfo) -> list[IPAddress]:
    """Resolve once and check every address; fail closed when resolution fails."""
    ip = literal_ip(host)
    if ip is not None:
        addresses = [ip]
    else:
        try:
            infos = await getaddrinfo(host, port)
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                         for info in infos]
        except (OSError, UnicodeError, ValueError) as exc:
            raise BlockedAddress(f"{host} does not resolve: {exc}") from None
        if not addresses:
            raise BlockedAddress(f"{host} does not resolve")
    for address in addresses:
        reason = blocked_reason(address, allow_private=allow_private)
        if reason is not None:
            # Any bad address refuses the host: a resolver that mixes answers must not win.
            raise BlockedAddress(f"{host} is {reason}" if ip is not None
                                 else f"{host} resolves to {address}, {reason}")
    return addresses


@lru_cache(maxsize=4096)
def target(url: str) -> tuple[str, int]:
    """The host and port aiohttp will connect to, parsed by the same parser (yarl) it uses."""
    parsed = URL(url)
    host, port = parsed.raw_host, parsed.port
    if parsed.scheme not in ("http", "https") or not host or port is None:
        raise ValueError("not an absolute http:// or https:// URL")
    return host, port


async def check_url(url: str, *, allow_private: bool) -> None:
    """422 invalid_url unless `url` is http(s) and resolves only to permitted addresses."""
    try:
        host, port = target(url)
    except (ValueError, TypeError) as exc:  # "http://[x/", a port out of range, "ftp://"
        raise ValidationFailed("invalid_url", f"the URL must be an absolute http(s) URL: {exc}",
                               details=[{"field": "url", "problem": str(exc)}]) from None
    if any(ord(c) < 33 or c == "\x7f" for c in host):
        raise ValidationFailed("invalid_url", "the URL's host has control characters or spaces",
                               details=[{"field": "url", "problem": "not an http(s) URL"}])
    try:
        await resolve(host, port, allow_private=allow_private)
    except BlockedAddress as exc:
        raise ValidationFailed("invalid_url", str(exc),
                               details=[{"field": "url", "problem": str(exc)}]) from None
