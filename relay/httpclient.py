"""A small keep-alive HTTP/1.1 GET client for provider reads, on asyncio and httptools.

The poller makes one provider GET per poll; aiohttp spent ~125 µs of CPU on each (URL objects,
header multidicts, tracing hooks, a stream reader per answer), about half of a poll's CPU. This
client does only what a provider read needs: GET with fixed headers over kept-alive
connections (TLS for https), the answer parsed by httptools (llhttp, also used by uvicorn),
Content-Length and chunked bodies, a byte cap, one deadline from connect to last byte, and no
redirects, proxies or decompression. Provider hosts come from the operator's configuration, so
no SSRF guard applies (deliveries keep `Outbound`, on aiohttp, with its guard).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from relay import __version__

USER_AGENT = f"relay/{__version__}"
# Idle kept-alive connections kept per host; more are closed after their answer.
IDLE_PER_HOST = 256


@dataclass(frozen=True)
class Target:
    """A URL split once: where to connect and what to send."""

    scheme: str
    host: str
    port: int
    head: bytes  # the request line and Host header


def target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("only absolute http(s) URLs can be read")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    host = parts.hostname if default else f"{parts.hostname}:{port}"
    if ":" in parts.hostname and "[" not in host:  # an IPv6 literal
        host = f"[{parts.hostname}]" if default else f"[{parts.hostname}]:{port}"
    if any(c in path or c in host for c in "\r\n "):
        raise ValueError("the URL has spaces or line breaks")
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")
    return Target(parts.scheme, parts.hostname, port, head)


class Closed(Exception):
    """The connection ended before a whole answer came."""


class _Conn(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.status = 0
        self.retry_after: str | None = None
        self.framed = False  # Content-Length or chunked: the end of the body is known
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.headers_done = False
        self.got_bytes = False
        self.too_big = False
        self.lost = False
        self.keep_alive = False
        self.stray = False

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():
            self._close()  # nobody asked: a stray byte means the connection is out of step
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Closed("the provider switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(Closed(f"unreadable HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            if self.headers_done and not self.framed:
                self.complete = True  # a body that ends with the connection
                self.done.set_result(None)
            else:
                self.done.set_exception(Closed("the provider closed the connection"))

    # ---- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.stray = True  # a second answer to one request: never reuse this connection

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.stray:
            return
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif lower == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.stray:
            return
        self.headers_done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.too_big or self.stray:
            return
        self.size += len(body)
        if self.size > self.cap:
            self.too_big = True
            self.chunks = []
            self.complete = True
            self._close()
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.stray:
            return
        if 100 <= self.status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.status, self.retry_after, self.framed = 0, None, False
            self.headers_done, self.chunks, self.size = False, [], 0
            return
        self.complete = True
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # ---- use ----------------------------------------------------------------------------

    def start(self, request: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.status, self.retry_after, self.framed = 0, None, False
        self.chunks, self.size, self.complete = [], 0, False
        self.headers_done = self.got_bytes = self.too_big = self.keep_alive = False
        self.transport.write(request)
        return self.done

    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and not self.too_big and not self.lost
                and not self.stray)

    def timed_out(self) -> None:
        self._fail(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        self._close()
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True)
class Got:
    status: int
    body: bytes  # empty when too_big
    too_big: bool
    retry_after: str | None


class HttpClient:
    """GETs over a pool of kept-alive connections per (scheme, host, port)."""

    def __init__(self, *, max_bytes: int, limit: int = 256) -> None:
        self._cap = max_bytes
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        # A count and a queue, not asyncio.Semaphore: its locked() check cost ~2% per poll.
        self._limit, self._active = limit, 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._targets: dict[str, Target] = {}
        self._headers: dict[int, tuple[dict[str, str], bytes]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn._close()
        self._idle.clear()

    def _target(self, url: str) -> Target:
        t = self._targets.get(url)
        if t is None:
            t = target(url)
            if len(self._targets) > 10_000:
                self._targets.clear()
            self._targets[url] = t
        return t

    def _header_block(self, headers: dict[str, str]) -> bytes:
        """The headers as bytes; an adapter hands the same dict on every call."""
        cached = self._headers.get(id(headers))
        if cached is not None and cached[0] is headers:
            return cached[1]
        lines = [f"User-Agent: {USER_AGENT}\r\n"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n"):
                raise ValueError("a header has a line break")
            lines.append(f"{name}: {value}\r\n")
        block = "".join(lines).encode("latin-1") + b"\r\n"
        if len(self._headers) > 64:  # callers that build a new dict per call
            self._headers.clear()
        self._headers[id(headers)] = (headers, block)
        return block

    async def get(self, url: str, headers: dict[str, str], deadline: float) -> Got:
        """GET `url` within `deadline` seconds, connect to last byte; raises TimeoutError,
        Closed, OSError (ssl.SSLError among them) or ValueError."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        t = self._target(url)
        request = t.head + self._header_block(headers)
        if self._active >= self._limit:
            async with asyncio.timeout_at(end):
                await self._wait_turn()
        self._active += 1
        try:
            key = (t.scheme, t.host, t.port)
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.lost:
                    continue
                try:
                    return await self._exchange(key, conn, request, end)
                except Closed:
                    # A kept-alive connection the server had closed before our request
                    # reached it: a GET is safe to send again, on a fresh connection.
                    if conn.got_bytes:
                        raise
            async with asyncio.timeout_at(end):
                conn = await self._connect(t)
            return await self._exchange(key, conn, request, end)
        finally:
            self._active -= 1
            self._wake_next()

    async def _wait_turn(self) -> None:
        """Wait until fewer than `limit` requests are in flight."""
        loop = asyncio.get_running_loop()
        while self._active >= self._limit:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # Woken, then cancelled (the deadline): hand the turn on.
                    self._wake_next()
                raise

    def _wake_next(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, t: Target) -> _Conn:
        loop = asyncio.get_running_loop()
        context = None
        if t.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        _, conn = await loop.create_connection(
            lambda: _Conn(self._cap), t.host, t.port, ssl=context,
            server_hostname=t.host if context else None)
        return conn

    async def _exchange(self, key: tuple[str, str, int], conn: _Conn, request: bytes,
                        end: float) -> Got:
        done = conn.start(request)
        # One timer per request, not a timeout context: the deadline fails the answer.
        timer = asyncio.get_running_loop().call_at(end, conn.timed_out)
        try:
            await done
        except BaseException:
            conn._close()  # cancelled, failed or late mid-answer: the connection is out of step
            raise
        finally:
            timer.cancel()
        got = Got(conn.status, b"".join(conn.chunks), conn.too_big, conn.retry_after)
        conn.chunks = []
        if conn.reusable() and not self._closed:
            pool = self._idle.setdefault(key, [])
            if len(pool) < IDLE_PER_HOST:
                pool.append(conn)
                return got
        conn._close()
        return got
