"""Misbehaving subscribers: raw asyncio TCP servers, each failing in one way uvicorn cannot."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate

from tests.helpers import free_port

DRIP_EVERY = 0.1  # seconds between dripped bytes

# Every kind of misbehaviour, by name. The status ones answer in full and close.
KINDS = ("silent", "drip_body", "drip_headers", "reset", "close", "garbage", "500", "410",
         "429", "429_date", "503")
# Subscriber URLs often carry a secret (Slack-style paths, ?token=); this one must never show
# up in an attempt log or a log line.
URL_TOKEN = "tok-in-the-url-5f3a9c"


@dataclass
class Hit:
    """One request as the server saw it; `ended` is when the connection was over for it."""

    at: float
    webhook_id: str
    ended: float | None = None


class BadSubscriber:
    """An HTTP/1.1 endpoint on 127.0.0.1, served by its own event loop in a thread.

    It reads each request in full, then misbehaves as `kind` says (see KINDS). It records
    every request and the most requests it held open at once, which is how many attempts
    relay had in flight against it.
    """

    def __init__(self, kind: str, *, retry_after: float = 2.0) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.retry_after = retry_after
        self.port = free_port()
        self.hits: list[Hit] = []
        self.open = 0
        self.max_open = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{URL_TOKEN}?token={URL_TOKEN}"

    def start(self) -> BadSubscriber:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024), self._loop)
        self._server = started.result(10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (ending relay's attempts); idempotent."""
        if not self._loop.is_running():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def snapshot(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._writers.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hit = await _read_request(reader)
        if hit is None:
            writer.close()
            return
        with self._lock:
            self.hits.append(hit)
            self.open += 1
            self.max_open = max(self.max_open, self.open)
        try:
            await self._misbehave(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            hit.ended = time.time()
            with self._lock:
                self.open -= 1
            if not writer.is_closing():
                writer.close()

    async def _misbehave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> None:
        kind = self.kind
        if kind == "silent":
            await reader.read()  # returns only when the client gives up and closes
        elif kind == "drip_body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
            await _drip(reader, writer)
        elif kind == "drip_headers":
            writer.write(b"HTTP/1.1 200 OK\r\nx-drip: ")
            await _drip(reader, writer)
        elif kind == "reset":
            # SO_LINGER with a zero timeout turns close() into a TCP RST.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif kind == "close":
            writer.close()
        elif kind == "garbage":
            writer.write(b"hello, this is not HTTP\r\n\r\n")
            await writer.drain()
            writer.close()
        else:
            status = int(kind.split("_")[0])
            headers = ""
            if status in (429, 503):
                hint = (formatdate(time.time() + self.retry_after + 1, usegmt=True)
                        if kind.endswith("_date") else f"{self.retry_after:g}")
                headers = f"retry-after: {hint}\r\n"
            body = b'{"error":"no"}'
            writer.write(f"HTTP/1.1 {status} X\r\n{headers}content-length: {len(body)}\r\n"
                         f"connection: close\r\n\r\n".encode() + body)
            await writer.drain()
            writer.close()


async def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One byte every DRIP_EVERY seconds until the client hangs up, noticed at once."""

    async def drip() -> None:
        while not writer.is_closing():
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(DRIP_EVERY)

    async def hung_up() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await reader.read()

    dripping = asyncio.create_task(drip())
    waiting = asyncio.create_task(hung_up())
    try:
        await asyncio.wait([dripping, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        dripping.cancel()
        waiting.cancel()
        await asyncio.gather(dripping, waiting, return_exceptions=True)


async def _read_request(reader: asyncio.StreamReader) -> Hit | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    at = time.time()
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return Hit(at=at, webhook_id=headers.get("webhook-id", ""))
