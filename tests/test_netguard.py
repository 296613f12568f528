"""SSRF guard rules: blocked classes, IP spellings, rebinding answers, and 422 at creation."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import httpx
import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import netguard
from relay.config import Settings
from relay.errors import ValidationFailed
from relay.netguard import AddrInfo, BlockedAddress, blocked_reason, literal_ip
from tests.helpers import RedisServer, admin_headers
from tests.test_api import app_client

LOOP, PRIV, LINK, CGNAT = ("a loopback address", "a private or reserved address",
                           "a link-local address", "a carrier-grade NAT address")
UNSPEC, MCAST, META = ("an unspecified address", "a multicast address",
                       "a cloud metadata address")


def teredo(client: str) -> str:
    """A Teredo address whose (obfuscated) client is `client`."""
    server = int(ipaddress.IPv4Address("65.54.227.120"))
    inverted = ~int(ipaddress.IPv4Address(client)) & 0xFFFFFFFF
    return str(ipaddress.IPv6Address((0x20010000 << 96) | (server << 64) | inverted))


# (address, reason when private targets are refused, reason when they are allowed)
CLASSES = [
    ("127.0.0.1", LOOP, None), ("127.255.255.254", LOOP, None), ("::1", LOOP, None),
    ("10.0.0.1", PRIV, None), ("172.16.0.1", PRIV, None), ("172.31.255.255", PRIV, None),
    ("192.168.1.1", PRIV, None), ("fd00::1", PRIV, None), ("fc00::1", PRIV, None),
    ("fec0::1", PRIV, None), ("192.0.2.1", PRIV, None), ("240.0.0.1", PRIV, None),
    ("169.254.1.1", LINK, None), ("fe80::1", LINK, None), ("fe80::1%eth0", LINK, None),
    ("100.64.0.1", CGNAT, None), ("100.127.255.254", CGNAT, None),
    ("0.0.0.0", UNSPEC, UNSPEC), ("0.1.2.3", UNSPEC, UNSPEC), ("::", UNSPEC, UNSPEC),
    ("224.0.0.1", MCAST, MCAST), ("239.255.255.250", MCAST, MCAST), ("ff02::1", MCAST, MCAST),
    ("169.254.169.254", META, META), ("fd00:ec2::254", META, META),
    ("100.100.100.200", META, META), ("fd00:ec2::254%eth0", META, META),
    # IPv6 forms that reach an IPv4 address are judged by that address.
    ("::ffff:127.0.0.1", LOOP, None), ("::ffff:7f00:1", LOOP, None),
    ("::ffff:10.0.0.1", PRIV, None), ("::ffff:0.0.0.0", UNSPEC, UNSPEC),
    ("::ffff:169.254.169.254", META, META), ("::ffff:a9fe:a9fe", META, META),
    ("::127.0.0.1", LOOP, None), ("::169.254.169.254", META, META),  # IPv4-compatible
    ("::ffff:0:169.254.169.254", META, META),  # SIIT-translated
    ("64:ff9b::7f00:1", LOOP, None), ("64:ff9b::169.254.169.254", META, META),  # NAT64
    ("64:ff9b:1::a9fe:a9fe", META, META), ("2002:a9fe:a9fe::1", META, META),  # 6to4
    (teredo("169.254.169.254"), META, META), (teredo("10.1.1.1"), PRIV, None),
    # Public addresses pass, in every form.
    ("8.8.8.8", None, None), ("2606:4700:4700::1111", None, None),
    ("::ffff:8.8.8.8", None, None), ("64:ff9b::808:808", None, None),
]


@pytest.mark.parametrize(("address", "strict", "allowed"), CLASSES)
def test_blocked_reason_names_each_class_and_allowing_private_lifts_only_the_private_part(
        address: str, strict: str | None, allowed: str | None) -> None:
    ip = ipaddress.ip_address(address)
    assert blocked_reason(ip, allow_private=False) == strict
    assert blocked_reason(ip, allow_private=True) == allowed


BLOCKED_V4 = [ipaddress.IPv4Network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "169.254.169.254/32", "100.100.100.200/32")]
ALWAYS_BLOCKED_V4 = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "224.0.0.0/4", "169.254.169.254/32", "100.100.100.200/32")]


def addresses_in(networks: list[ipaddress.IPv4Network]) -> st.SearchStrategy[int]:
    return st.sampled_from(networks).flatmap(lambda net: st.integers(
        int(net.network_address), int(net.broadcast_address)))


def _part(value: int, style: str) -> str:
    if style == "oct":
        return "0" + format(value, "o") if value else "0"
    return {"dec": str(value), "hex": f"0x{value:x}", "HEX": f"0X{value:X}"}[style]


@st.composite
def spellings(draw: st.DrawFn, value: int) -> str:
    """Every way a URL can write one IPv4 address: inet_aton's 1-4 part forms in any base
    (decimal, octal, hex, mixed), a trailing dot, and the IPv6 forms that reach it."""
    a, b, c, d = ipaddress.IPv4Address(value).packed
    dotted = f"{a}.{b}.{c}.{d}"
    kind = draw(st.sampled_from(["aton", "mapped", "mapped-hex", "nat64", "translated"]))
    if kind != "aton":
        return {"mapped": f"[::ffff:{dotted}]", "mapped-hex": f"[::ffff:{value >> 16:x}:"
                f"{value & 0xFFFF:x}]", "nat64": f"[64:ff9b::{dotted}]",
                "translated": f"[::ffff:0:{dotted}]"}[kind]
    parts = draw(st.sampled_from([
        [a, b, c, d], [a, b, (c << 8) | d], [a, (b << 16) | (c << 8) | d], [value]]))
    styles = st.sampled_from(["dec", "oct", "hex", "HEX"])
    host = ".".join(_part(p, draw(styles)) for p in parts)
    return host + "." if draw(st.booleans()) else host


async def no_lookup(host: str, port: int) -> Sequence[AddrInfo]:
    raise AssertionError(f"an IP literal must not be looked up: {host}")


def refused(host: str, *, allow_private: bool) -> bool:
    try:
        asyncio.run(netguard.resolve(host, 80, allow_private=allow_private,
                                     getaddrinfo=no_lookup))
    except BlockedAddress:
        return True
    return False


def refused_at_create(url: str, *, allow_private: bool) -> bool:
    try:
        asyncio.run(netguard.check_url(url, allow_private=allow_private))
    except ValidationFailed as exc:
        assert exc.code == "invalid_url"
        return True
    return False


@hypothesis.settings(deadline=None)  # an event loop per example: slow on a loaded machine
@given(addresses_in(BLOCKED_V4).flatmap(lambda v: st.tuples(st.just(v), spellings(v))))
def test_every_spelling_of_a_blocked_ipv4_address_is_refused(case: tuple[int, str]) -> None:
    value, host = case
    if not host.startswith("["):
        assert literal_ip(host) == ipaddress.IPv4Address(value)
    assert refused(host, allow_private=False), host
    assert refused_at_create(f"http://{host}:8080/hook", allow_private=False), host


@hypothesis.settings(deadline=None)  # an event loop per example: slow on a loaded machine
@given(addresses_in(ALWAYS_BLOCKED_V4).flatmap(lambda v: spellings(v)))
def test_every_spelling_of_metadata_unspecified_and_multicast_is_refused_even_when_allowed(
        host: str) -> None:
    assert refused(host, allow_private=True), host
    assert refused_at_create(f"http://{host}/", allow_private=True), host


@given(st.ip_addresses(v=4), st.booleans())
def test_ipv6_forms_of_an_ipv4_address_get_the_same_verdict(
        ip: ipaddress.IPv4Address, allow_private: bool) -> None:
    verdict = blocked_reason(ip, allow_private=allow_private)
    n = int(ip)
    for form in (0xFFFF << 32 | n, n if n > 1 else None, 0x64FF9B << 96 | n, 0xFFFF << 48 | n,
                 0x2002 << 112 | n << 80):
        if form is not None:
            assert blocked_reason(ipaddress.IPv6Address(form), allow_private=allow_private) \
                == verdict, ipaddress.IPv6Address(form)


@given(st.ip_addresses())
def test_allowing_private_targets_never_blocks_more_and_always_keeps_the_dangerous_part(
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    strict = blocked_reason(ip, allow_private=False)
    allowed = blocked_reason(ip, allow_private=True)
    assert allowed is None or allowed == strict
    assert allowed in (None, UNSPEC, MCAST, META)


@given(st.text(max_size=30))
def test_literal_ip_never_raises_and_never_takes_spaces_for_an_address(host: str) -> None:
    ip = literal_ip(host)
    if any(ch.isspace() for ch in host):
        assert ip is None


def dns(*answers: list[str] | Exception) -> tuple[netguard.GetAddrInfo, list[str]]:
    """A resolver that gives the next answer at each call (the last one repeats)."""
    calls: list[str] = []

    async def getaddrinfo(host: str, port: int) -> Sequence[AddrInfo]:
        calls.append(host)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port)) for ip in answer]
    return getaddrinfo, calls


@pytest.mark.parametrize(("answer", "allow_private"), [
    (["93.184.215.14", "10.0.0.1"], False), (["2606:2800::1", "fd00::1"], False),
    (["127.0.0.2", "169.254.169.254"], True), (["8.8.8.8", "::ffff:169.254.169.254"], True),
])
async def test_a_host_whose_answers_mix_good_and_blocked_addresses_is_refused(
        answer: list[str], allow_private: bool) -> None:
    getaddrinfo, calls = dns(answer)
    with pytest.raises(BlockedAddress, match="resolves to"):
        await netguard.resolve("mixed.example", 443, allow_private=allow_private,
                               getaddrinfo=getaddrinfo)
    assert calls == ["mixed.example"]
    good, _ = dns(answer[:1])
    assert await netguard.resolve("good.example", 443, allow_private=allow_private,
                                  getaddrinfo=good) == [ipaddress.ip_address(answer[0])]


@pytest.mark.parametrize("failure", [socket.gaierror(-2, "Name or service not known"),
                                     OSError("network is unreachable"), []])
async def test_resolution_failure_fails_closed(failure: Exception | list[str]) -> None:
    getaddrinfo, _ = dns(failure)
    with pytest.raises(BlockedAddress, match="does not resolve"):
        await netguard.resolve("gone.example", 80, allow_private=True, getaddrinfo=getaddrinfo)


STRICT_REFUSED = [
    "http://127.0.0.1/x", "http://127.0.0.1./x", "http://localhost/x", "http://localhost./x",
    "http://[::1]/x", "http://10.1.2.3/x", "http://172.16.5.4/x", "http://192.168.0.10/x",
    "http://169.254.10.10/x", "http://100.64.0.1/x", "http://0.0.0.0/x", "http://[::]/x",
    "http://224.0.0.1/x", "http://[ff02::1]/x", "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/", "http://100.100.100.200/", "http://[fd12:3456::1]/x",
    "http://[::ffff:127.0.0.1]/x", "http://[::ffff:7f00:1]/x", "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::7f00:1]/x", "http://2130706433/x", "http://0177.0.0.1/x",
    "http://017700000001/x", "http://0x7f000001/x", "http://0x7f.0.0.1/x", "http://127.1/x",
    "https://127.0.0.1:8443/x", "http://relay-test.invalid/x",  # fails closed: no answer
    "http://127.0.0.1\\@example.com/", "ftp://example.com/", "http:///x",
]
ALWAYS_REFUSED = [
    "http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://100.100.100.200/",
    "http://[::ffff:169.254.169.254]/", "http://[::ffff:a9fe:a9fe]/", "http://2852039166/",
    "http://0xa9fea9fe/", "http://0251.0376.0251.0376/", "http://0.0.0.0/", "http://[::]/",
    "http://224.0.0.1/", "http://[64:ff9b::a9fe:a9fe]/",
]


async def test_every_blocked_class_gets_422_invalid_url_at_create(
        settings: Settings, redis_server: RedisServer) -> None:
    async with app_client(settings.with_overrides(allow_private_targets=False),
                          redis_server.url) as c:
        for url in STRICT_REFUSED:
            r = await c.post("/v1/subscriptions", headers=admin_headers(), json={"url": url})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["code"] == "invalid_url", url


async def test_allowing_private_targets_still_refuses_metadata_unspecified_and_multicast(
        client: httpx.AsyncClient) -> None:
    for url in ALWAYS_REFUSED:
        r = await client.post("/v1/subscriptions", headers=admin_headers(), json={"url": url})
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["code"] == "invalid_url"
    for url in ("http://127.0.0.1:9/x", "http://10.0.0.1/x", "http://[fd12::1]/x",
                "http://100.64.0.1/x", "http://169.254.10.10/x", "http://localhost:9/x"):
        r = await client.post("/v1/subscriptions", headers=admin_headers(), json={"url": url})
        assert r.status_code == 201, (url, r.text)
