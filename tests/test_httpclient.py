"""The provider read client (relay.httpclient via ProviderClient) against scripted raw servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relay.httpclient import target
from relay.outbound import ProviderClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A TCP server that runs `handler` per connection; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/runs/r1?x=1"

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        self.requests.append(head)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def client() -> AsyncIterator[ProviderClient]:
    c = ProviderClient(max_bytes=1000)
    yield c
    await c.aclose()


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def serving(handler: Handler) -> Server:
    return await Server(handler).start()


async def test_connections_are_kept_alive_and_requests_carry_the_headers(
        client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await server.read_request(r):
            w.write(answer(b'{"ok":true}'))
            await w.drain()

    server = await serving(handler)
    for _ in range(5):
        got = await client.get(server.url, {"authorization": "Bearer k"}, 2.0)
        assert (got.status, got.body, got.error) == (200, b'{"ok":true}', None)
    assert server.connections == 1 and len(server.requests) == 5
    head = server.requests[0].decode()
    assert head.startswith("GET /v1/runs/r1?x=1 HTTP/1.1\r\n")
    assert "\r\nHost: 127.0.0.1:" in head and "\r\nauthorization: Bearer k\r\n" in head
    assert "\r\nUser-Agent: relay/" in head
    await server.close()


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(
        client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if await server.read_request(r):
            w.write(answer(b"{}"))  # kept alive as far as the client knows, then closed
            await w.drain()

    server = await serving(handler)
    assert (await client.get(server.url, {}, 2.0)).status == 200
    await asyncio.sleep(0.05)
    assert (await client.get(server.url, {}, 2.0)).status == 200
    assert server.connections == 2
    await server.close()


async def test_connection_close_chunked_and_close_delimited_bodies(
        client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if not await server.read_request(r):
            return
        if n == 1:
            w.write(answer(b"[1]", extra="Connection: close\r\n"))
        elif n == 2:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\n\r\n{\"until\":")
            await w.drain()
            await asyncio.sleep(0.02)
            w.write(b'"close"}')
        await w.drain()

    server = await serving(handler)
    assert (await client.get(server.url, {}, 2.0)).body == b"[1]"
    assert (await client.get(server.url, {}, 2.0)).body == b"[1,2]"
    assert (await client.get(server.url, {}, 2.0)).body == b'{"until":"close"}'
    assert server.connections == 3
    await server.close()


async def test_a_truncated_answer_or_a_silent_close_is_an_error(client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if await server.read_request(r) and n == 1:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"cut")
            await w.drain()

    server = await serving(handler)
    cut = await client.get(server.url, {}, 2.0)
    assert cut.status is None and cut.error is not None and "closed" in cut.error
    silent = await client.get(server.url, {}, 2.0)
    assert silent.status is None and silent.error is not None
    await server.close()


async def test_the_byte_cap_and_retry_after(client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await server.read_request(r):
            if n == 1:
                w.write(answer(b"x" * 5000))
            else:
                w.write(answer(b"{}", status="429 Too Many Requests",
                               extra="Retry-After: 7\r\n"))
            await w.drain()

    server = await serving(handler)
    big = await client.get(server.url, {}, 2.0)
    assert big.status == 200 and big.body == b"" and big.error is not None
    assert "larger than 1000 bytes" in big.error
    limited = await client.get(server.url, {}, 2.0)
    assert (limited.status, limited.retry_after, limited.error) == (429, "7", None)
    assert server.connections == 2  # the oversized answer's connection was dropped
    await server.close()


async def test_the_deadline_covers_headers_and_body_and_drops_the_connection(
        client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if not await server.read_request(r):
            return
        if n == 2:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")  # and drip no more
            await w.drain()
        if n <= 2:
            await asyncio.sleep(5)
            return
        w.write(answer(b"{}"))
        await w.drain()

    server = await serving(handler)
    for _ in range(2):
        late = await client.get(server.url, {}, 0.2)
        assert late.status is None and late.error == "timed out after 0.2s"
    assert (await client.get(server.url, {}, 2.0)).status == 200
    assert server.connections == 3
    await server.close()


async def test_unreachable_and_invalid_urls_are_errors_not_exceptions(
        client: ProviderClient) -> None:
    server = await serving(lambda r, w, n: asyncio.sleep(0))
    url = server.url
    await server.close()
    await asyncio.sleep(0.05)
    refused = await client.get(url, {}, 2.0)
    assert refused.status is None and refused.error is not None
    bad = await client.get("ftp://example.com/x", {}, 2.0)
    assert bad.status is None and bad.error is not None and "ValueError" in bad.error


def test_targets_keep_the_path_query_and_host() -> None:
    t = target("https://api.example.com/v1/runs/a%2Fb?q=1")
    assert (t.scheme, t.host, t.port) == ("https", "api.example.com", 443)
    assert t.head == b"GET /v1/runs/a%2Fb?q=1 HTTP/1.1\r\nHost: api.example.com\r\n"
    assert target("http://[::1]:8080/").head.endswith(b"Host: [::1]:8080\r\n")
    with pytest.raises(ValueError):
        target("http://example.com/a b")


async def test_at_most_limit_requests_are_in_flight_and_the_rest_wait_their_turn() -> None:
    in_flight, most = 0, 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal in_flight, most
        while await server.read_request(r):
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            w.write(answer(b"{}"))
            await w.drain()

    server = await serving(handler)
    client = ProviderClient(max_bytes=100, limit=2)
    got = await asyncio.gather(*(client.get(server.url, {}, 5.0) for _ in range(6)))
    assert [g.status for g in got] == [200] * 6 and most == 2 and server.connections == 2
    # A request that cannot get its turn within its deadline times out like any other.
    slow = [asyncio.ensure_future(client.get(server.url, {}, 5.0)) for _ in range(2)]
    await asyncio.sleep(0.01)
    late = await client.get(server.url, {}, 0.02)
    assert late.error == "timed out after 0.02s"
    assert [g.status for g in await asyncio.gather(*slow)] == [200, 200]
    assert (await client.get(server.url, {}, 5.0)).status == 200
    await client.aclose()
    await server.close()


async def test_an_interim_answer_is_skipped_and_a_stray_second_answer_drops_the_connection(
        client: ProviderClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await server.read_request(r):
            if n == 1:
                w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b'{"a":1}') + answer(b"{}"))
            else:
                w.write(answer(b'{"b":2}'))
            await w.drain()

    server = await serving(handler)
    first = await client.get(server.url, {}, 2.0)
    assert (first.status, first.body) == (200, b'{"a":1}')
    second = await client.get(server.url, {}, 2.0)
    assert (second.status, second.body) == (200, b'{"b":2}')
    assert server.connections == 2
    await server.close()
