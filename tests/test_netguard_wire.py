"""SSRF guard on the wire: real sockets on 127.0.0.x see no connection the guard refuses."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import ip_address

import httpx
import pytest

from relay.delivery import DeliveryWorker
from relay.outbound import RESPONSE_KEEP, Outbound
from relay.service import Relay
from tests.helpers import (
    RedisServer,
    RelayProcess,
    Subscriber,
    admin_headers,
    eventually,
    relay_env,
)
from tests.test_delivery import callback, deliveries_of, subscribe
from tests.test_netguard import dns

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class RawServer:
    """A TCP listener on 127.0.0.x that counts connections and runs `handle` on each one."""

    def __init__(self, handle: Callable[[RawServer, socket.socket], None] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.handle = handle or answer(OK)
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.1)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.connections = 0
        self.requests: list[bytes] = []
        self.sent = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/hook"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(self, conn)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


def read_request(server: RawServer, conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    server.requests.append(head)
    return True


def answer(response: bytes) -> Callable[[RawServer, socket.socket], None]:
    def handle(server: RawServer, conn: socket.socket) -> None:
        while read_request(server, conn):  # keep-alive: serve as many as the client sends
            conn.sendall(response)
    return handle


def stream(total: int | None) -> Callable[[RawServer, socket.socket], None]:
    """Answer 200 and send `total` bytes (None: chunked, forever) as fast as the peer takes."""
    def handle(server: RawServer, conn: socket.socket) -> None:
        read_request(server, conn)
        framing = b"transfer-encoding: chunked" if total is None else b"content-length: %d" % total
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n")
        block = b"x" * 65536
        piece = b"10000\r\n" + block + b"\r\n" if total is None else block
        while total is None or server.sent < total:
            conn.sendall(piece)
            server.sent += len(block)
    return handle


@pytest.fixture
def server() -> Iterator[RawServer]:
    s = RawServer()
    yield s
    s.stop()


@pytest.fixture
async def strict() -> AsyncIterator[Outbound]:
    outbound = Outbound(allow_private=False)
    yield outbound
    await outbound.aclose()


LOOPBACK_SPELLINGS = [
    "127.0.0.1", "127.0.0.1.", "localhost", "localhost.", "2130706433", "0177.0.0.1",
    "017700000001", "0x7f000001", "0x7f.0.0.1", "127.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "[::1]", "\uff10x7f000001",  # a fullwidth digit, which IDNA folds to "0"
]


async def test_loopback_in_every_spelling_is_refused_at_delivery_with_no_connection(
        strict: Outbound, server: RawServer) -> None:
    for host in LOOPBACK_SPELLINGS:
        got = await strict.post(server.url(host), b"{}", {}, 5)
        assert got.status is None and got.error, host
        assert got.error.startswith("refused:"), (host, got.error)
    assert server.connections == 0
    allowed = Outbound(allow_private=True)
    try:  # the listener is there: the same request with private targets allowed reaches it
        assert (await allowed.post(server.url(), b"{}", {}, 5)).status == 200
        assert server.connections == 1
    finally:
        await allowed.aclose()


async def test_unspecified_and_metadata_are_refused_even_when_private_targets_are_allowed(
        server: RawServer) -> None:
    # Linux connects 0.0.0.0 to the local host: without the guard this reaches the listener.
    getaddrinfo, calls = dns(["169.254.169.254"])
    allowed = Outbound(allow_private=True, getaddrinfo=getaddrinfo)
    try:
        for host in ("0.0.0.0", "[::ffff:0.0.0.0]", "0", "[::]", "metadata.example"):
            got = await allowed.post(server.url(host), b"{}", {}, 5)
            assert got.error and got.error.startswith("refused:"), (host, got.error)
        assert server.connections == 0 and calls == ["metadata.example"]
    finally:
        await allowed.aclose()


@pytest.mark.parametrize("address", [
    "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.1.1", "100.64.0.1", "fd00::1", "fe80::1",
    "::1", "224.0.0.1", "169.254.169.254", "fd00:ec2::254", "100.100.100.200",
    "::ffff:169.254.169.254", "64:ff9b::7f00:1",
])
async def test_a_name_resolving_to_a_blocked_class_is_refused_before_connecting(
        address: str) -> None:
    getaddrinfo, calls = dns([address])
    outbound = Outbound(allow_private=False, getaddrinfo=getaddrinfo)
    try:
        got = await outbound.post("http://sub.example/hook", b"{}", {}, 5)
        assert got.status is None and got.error is not None
        assert got.error.startswith(f"refused: sub.example resolves to {ip_address(address)}")
        assert calls == ["sub.example"]
    finally:
        await outbound.aclose()


async def test_the_connection_goes_to_the_address_the_one_lookup_checked() -> None:
    close = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    first = RawServer(answer(close), host="127.0.0.2")
    second = RawServer(answer(close), host="127.0.0.3", port=first.port)
    getaddrinfo, calls = dns(["127.0.0.2"], ["127.0.0.3"])
    outbound = Outbound(allow_private=True, getaddrinfo=getaddrinfo)
    try:
        url = f"http://rebind.example:{first.port}/hook"
        assert (await outbound.post(url, b"{}", {}, 5)).status == 200
        assert (len(first.requests), len(second.requests), calls) == (1, 0, ["rebind.example"])
        assert (await outbound.post(url, b"{}", {}, 5)).status == 200
        assert (len(first.requests), len(second.requests)) == (1, 1)
        assert calls == ["rebind.example"] * 2  # exactly one lookup per attempt
    finally:
        await outbound.aclose()
        first.stop()
        second.stop()


async def test_a_mixed_answer_refuses_the_host_and_connects_nowhere() -> None:
    good = RawServer(host="127.0.0.2")
    getaddrinfo, _ = dns(["127.0.0.2", "169.254.169.254"])
    outbound = Outbound(allow_private=True, getaddrinfo=getaddrinfo)
    try:
        got = await outbound.post(good.url("mixed.example"), b"{}", {}, 5)
        assert got.error and "169.254.169.254" in got.error and got.status is None
        assert good.connections == 0
    finally:
        await outbound.aclose()
        good.stop()


async def test_a_host_that_rebinds_to_a_blocked_address_is_refused_at_the_next_attempt(
        client: httpx.AsyncClient, relay: Relay, subscriber: Subscriber) -> None:
    """Accepted at creation, delivered once over a kept-alive connection, then refused."""
    getaddrinfo, calls = dns(["127.0.0.1"], ["169.254.169.254"])
    outbound = Outbound(allow_private=True, getaddrinfo=getaddrinfo)
    worker = DeliveryWorker(relay, outbound, name="rebind-worker")
    try:
        await subscribe(client, f"http://localhost:{subscriber.port}/hook")
        await callback(client, "run-rebind-1")
        await worker.run_once()
        assert len(subscriber.received) == 1
        event_id = await callback(client, "run-rebind-2")
        await worker.run_once()
        assert len(subscriber.received) == 1 and calls == ["localhost"] * 2
        (d,) = await deliveries_of(client, event_id)
        detail = (await client.get(f"/v1/deliveries/{d['id']}", headers=admin_headers())).json()
        assert detail["status"] == "pending"
        (attempt,) = detail["attempts"]
        assert attempt["status_code"] is None
        assert attempt["error"] == ("refused: localhost resolves to 169.254.169.254, "
                                    "a cloud metadata address")
    finally:
        await outbound.aclose()


async def test_a_delivery_to_a_host_that_stops_resolving_fails_closed(
        client: httpx.AsyncClient, relay: Relay, server: RawServer) -> None:
    getaddrinfo, _ = dns(socket.gaierror(-2, "Name or service not known"))
    outbound = Outbound(allow_private=True, getaddrinfo=getaddrinfo)
    try:
        await subscribe(client, server.url("localhost"))
        event_id = await callback(client, "run-nxdomain")
        await DeliveryWorker(relay, outbound, name="nx-worker").run_once()
        (d,) = await deliveries_of(client, event_id)
        detail = (await client.get(f"/v1/deliveries/{d['id']}", headers=admin_headers())).json()
        assert detail["status"] == "pending" and server.connections == 0
        assert detail["attempts"][0]["error"] == (
            "refused: localhost does not resolve: [Errno -2] Name or service not known")
    finally:
        await outbound.aclose()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_its_target_sees_nothing(
        server: RawServer, code: int) -> None:
    redirect = (f"HTTP/1.1 {code} Moved\r\nlocation: {server.url()}\r\n"
                "content-length: 0\r\n\r\n").encode()
    mover = RawServer(answer(redirect))
    outbound = Outbound(allow_private=True)
    try:
        got = await outbound.post(mover.url(), b"{}", {}, 5)
        assert got.status == code and len(mover.requests) == 1
        assert server.connections == 0
    finally:
        await outbound.aclose()
        mover.stop()


@pytest.mark.parametrize("total", [50 * 1024 * 1024, None], ids=["50MB", "chunked-forever"])
async def test_a_huge_answer_ends_the_attempt_early_and_keeps_4_kib(
        client: httpx.AsyncClient, relay: Relay, total: int | None) -> None:
    flood = RawServer(stream(total))
    outbound = Outbound(allow_private=True)
    try:
        await subscribe(client, flood.url())
        event_id = await callback(client, "run-flood")
        await DeliveryWorker(relay, outbound, name="flood-worker").run_once()
        (d,) = await deliveries_of(client, event_id)
        detail = (await client.get(f"/v1/deliveries/{d['id']}", headers=admin_headers())).json()
        (attempt,) = detail["attempts"]
        # The fixture's delivery timeout is 2 s: an attempt that read on would end as a timeout.
        assert attempt["status_code"] == 200 and attempt["error"] is None, attempt
        assert detail["status"] == "succeeded"
        assert len(attempt["response_body"].encode()) <= RESPONSE_KEEP
        # relay hung up: the sender is stopped by a full window long before 50 MB.
        await eventually(lambda: flood.sent > 0)
        await asyncio.sleep(0.2)
        assert flood.sent < 16 * 1024 * 1024, flood.sent
    finally:
        await outbound.aclose()
        flood.stop()


async def test_proxy_variables_in_the_worker_environment_are_ignored(
        client: httpx.AsyncClient, redis_server: RedisServer, prefix: str,
        subscriber: Subscriber) -> None:
    proxy = RawServer(answer(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"))
    via = proxy.url().removesuffix("/hook")
    variables = {name: via for base in ("http_proxy", "https_proxy", "all_proxy")
                 for name in (base, base.upper())}
    env = {k: v for k, v in relay_env(redis_server, prefix, **variables).items()
           if k.lower() != "no_proxy"}
    worker = RelayProcess("worker", env).start()
    try:
        await subscribe(client, subscriber.url)
        await callback(client, "run-proxy")
        await eventually(lambda: subscriber.received, within=20)
        assert proxy.connections == 0, worker.log()
    finally:
        worker.stop()
        proxy.stop()


async def test_ip_literal_targets_are_checked_at_every_attempt() -> None:
    """aiohttp skips the resolver for IP literals; the guard must not be skipped with it."""
    outbound = Outbound(allow_private=False)
    try:
        for url in ("http://127.0.0.1:9/", "http://10.0.0.5/", "http://[::1]/",
                    "http://169.254.169.254/"):
            answer = await outbound.post(url, b"{}", {}, 2)
            assert answer.status is None and answer.error and "refused" in answer.error, url
    finally:
        await outbound.aclose()
