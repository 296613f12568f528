"""SSRF guard: which addresses a subscriber URL may resolve to, checked at every attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from relay.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints are refused even when private targets are allowed.
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddress(Exception):
    """The target resolves to an address relay may not connect to."""


def blocked_reason(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why relay refuses to connect to `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return blocked_reason(mapped, allow_private=allow_private)
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
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
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a private or reserved address"
    return None


def literal_ip(host: str) -> IPAddress | None:
    """An IP written in any form `inet_aton` accepts (decimal, octal, hex, short) or IPv6."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


async def resolve(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """Resolve once and check every address; fail closed when resolution fails."""
    ip = literal_ip(host)
    if ip is not None:
        addresses = [ip]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise BlockedAddress(f"{host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise BlockedAddress(f"{host} does not resolve")
    for address in addresses:
        reason = blocked_reason(address, allow_private=allow_private)
        if reason is not None:
            # Any bad address refuses the host: a resolver that mixes answers must not win.
            raise BlockedAddress(f"{host} resolves to {address}, {reason}")
    return addresses


async def check_url(url: str, *, allow_private: bool) -> None:
    """422 invalid_url unless `url` is http(s) and resolves only to permitted addresses."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # "http://[x/", a port out of range
        raise ValidationFailed("invalid_url", f"the URL cannot be parsed: {exc}",
                               details=[{"field": "url", "problem": str(exc)}]) from None
    if parts.scheme not in ("http", "https") or not host or any(
            ord(c) < 33 or c == "\x7f" for c in host):
        raise ValidationFailed("invalid_url", "the URL must be an absolute http:// or https:// URL",
                               details=[{"field": "url", "problem": "not an http(s) URL"}])
    try:
        await resolve(host, port, allow_private=allow_private)
    except BlockedAddress as exc:
        raise ValidationFailed("invalid_url", str(exc),
                               details=[{"field": "url", "problem": str(exc)}]) from None
