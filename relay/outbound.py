"""Outbound HTTP: the one place relay makes requests, on aiohttp for throughput.

aiohttp posts ~10x more requests per second than `httpx.AsyncClient` on this hardware
(research/limits.md), and its pluggable resolver is where the SSRF guard pins the checked
address: the connection goes to exactly the address that was checked, never a second lookup.
"""

from __future__ import annotations

import asyncio
import socket
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from relay import __version__, netguard

USER_AGENT = f"relay/{__version__}"
RESPONSE_KEEP = 4096  # bytes of each answer kept in the attempt log
RESPONSE_READ_CAP = 64 * 1024  # bytes read at most; the rest of a huge answer is dropped


# The addresses this attempt's one lookup checked, for the resolver aiohttp calls while
# connecting: a second lookup could answer differently (DNS rebinding).
_PINNED: ContextVar[tuple[str, list[netguard.IPAddress]] | None] = ContextVar(
    "relay_pinned_addresses", default=None)


class GuardedResolver(AbstractResolver):
    """Hand aiohttp only checked addresses: the attempt's pinned ones, else resolve and check."""

    def __init__(self, *, allow_private: bool,
                 getaddrinfo: netguard.GetAddrInfo = netguard.system_getaddrinfo) -> None:
        self._allow_private = allow_private
        self._getaddrinfo = getaddrinfo

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pinned = _PINNED.get()
        if pinned is not None and pinned[0] == host:
            addresses = pinned[1]
        else:
            try:
                addresses = await netguard.resolve(host, port, allow_private=self._allow_private,
                                                   getaddrinfo=self._getaddrinfo)
            except netguard.BlockedAddress as exc:
                raise OSError(str(exc)) from None
        return [
            ResolveResult(
                hostname=host, host=str(ip), port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
            for ip in addresses
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Answer:
    """What one POST got back, or why it got nothing."""

    status: int | None
    body: str
    duration_ms: int
    error: str | None
    retry_after: str | None


class Outbound:
    """A pooled HTTP client for deliveries, guarded against SSRF at every connection."""

    def __init__(self, *, allow_private: bool, limit: int = 512,
                 getaddrinfo: netguard.GetAddrInfo = netguard.system_getaddrinfo) -> None:
        self._allow_private = allow_private
        self._getaddrinfo = getaddrinfo
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allow_private=allow_private, getaddrinfo=getaddrinfo),
            limit=limit,
            limit_per_host=0,
            ttl_dns_cache=None,
            use_dns_cache=False,  # resolve and check at every connection, never from a cache
            enable_cleanup_closed=True,
        )
        # trust_env=False: proxy variables must not route deliveries around the guard.
        self.session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False,
            headers={"user-agent": USER_AGENT}, skip_auto_headers=("Accept-Encoding",),
        )

    async def aclose(self) -> None:
        await self.session.close()

    async def _check(self, url: str) -> tuple[str, list[netguard.IPAddress]]:
        """One lookup per attempt, IP literals included (aiohttp never asks a resolver for
        those), and even when a kept-alive connection would let aiohttp skip the lookup."""
        try:
            host, port = netguard.target(url)
        except (ValueError, TypeError) as exc:
            raise netguard.BlockedAddress(f"the URL cannot be parsed: {exc}") from None
        addresses = await netguard.resolve(host, port, allow_private=self._allow_private,
                                           getaddrinfo=self._getaddrinfo)
        return host, addresses

    async def post(self, url: str, body: bytes, headers: dict[str, str], deadline: float
                   ) -> Answer:
        """POST with a deadline covering connect to last byte; never follows redirects."""
        started = time.perf_counter()
        status: int | None = None
        try:
            async with asyncio.timeout(deadline):
                try:
                    pinned = await self._check(url)
                except netguard.BlockedAddress as exc:
                    return Answer(None, "", _ms(started), f"refused: {exc}", None)
                token = _PINNED.set(pinned)
                try:
                    async with self.session.post(
                        url, data=body, headers=headers, allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=None),
                    ) as resp:
                        status = resp.status
                        raw = await _read_capped(resp)
                        return Answer(
                            status=resp.status,
                            body=raw[:RESPONSE_KEEP].decode("utf-8", "replace"),
                            duration_ms=_ms(started),
                            error=None,
                            retry_after=resp.headers.get("retry-after"),
                        )
                finally:
                    _PINNED.reset(token)
        except TimeoutError:
            # A subscriber that sends its status line and then drips the body is cut here too;
            # say so, or its own log (a 200 sent at once) contradicts the attempt log.
            stage = "" if status is None else f" reading the body of a {status} answer"
            return Answer(None, "", _ms(started), f"timed out after {deadline:g}s{stage}", None)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Answer(None, "", _ms(started), _describe(exc), None)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int = RESPONSE_READ_CAP) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(chunks)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        # Its str() ends with the request URL, and a subscriber's URL can carry a token.
        text = exc.message or f"status {exc.status}"
    elif isinstance(exc, aiohttp.InvalidURL):
        text = "the URL is not valid"  # its str() is the URL itself
    else:
        text = str(exc) or type(exc).__name__
    cause: Any = exc.__cause__ or exc.__context__
    if isinstance(exc, aiohttp.ClientConnectorError) and cause is not None and str(cause):
        text = f"{text} ({cause})"
    return " ".join(f"{type(exc).__name__}: {text}".split())[:500]


@dataclass(frozen=True)
class Fetched:
    """What one provider read got back, or why it got nothing."""

    status: int | None
    body: bytes
    duration_ms: int
    error: str | None
    retry_after: str | None


class ProviderClient:
    """Reads provider APIs. Their hosts come from the operator's configuration, not from API
    users, so no SSRF guard applies; connections are kept alive across polls."""

    def __init__(self, *, max_bytes: int, limit: int = 256) -> None:
        self._cap = max_bytes
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=60,
                                         enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                             headers={"user-agent": USER_AGENT})

    async def aclose(self) -> None:
        await self.session.close()

    async def get(self, url: str, headers: dict[str, str], deadline: float) -> Fetched:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline):
                async with self.session.get(url, headers=headers, allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=None)) as resp:
                    body = await _read_capped(resp, self._cap + 1)
                    if len(body) > self._cap:
                        return Fetched(resp.status, b"", _ms(started),
                                       f"the answer is larger than {self._cap} bytes", None)
                    return Fetched(resp.status, body, _ms(started), None,
                                   resp.headers.get("retry-after"))
        except TimeoutError:
            return Fetched(None, b"", _ms(started), f"timed out after {deadline:g}s", None)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Fetched(None, b"", _ms(started), _describe(exc), None)
