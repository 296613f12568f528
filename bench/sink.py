"""A cheap HTTP/1.1 sink for delivery benchmarks: counts POSTs, answers 204, nothing else.

A raw `asyncio.Protocol` under uvloop, so that the sink is never what limits a delivery rate:
it parses the request line and `Content-Length`, skips the body and answers
`HTTP/1.1 204 No Content` on the same kept-alive connection (pipelined requests included).
It does not check signatures or look at bodies; the recording subscriber does that.

`GET /count` answers `{"count", "first_ns", "last_ns", "paths"}`: POSTs since the last reset,
the `time.monotonic_ns()` of the first and the latest of them (CLOCK_MONOTONIC is system-wide
on Linux, so these compare with times taken in other processes) and how many distinct paths
they went to. `GET /reset` zeroes all of it.

Run: `python -m bench.sink --port 8003`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

_ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
_LIMIT = 64 * 1024  # longest request head accepted


class Counter:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.paths: set[bytes] = set()

    def arrived(self, path: bytes) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
        self.last_ns = now
        self.count += 1
        self.paths.add(path)

    def document(self) -> bytes:
        return json.dumps({"count": self.count, "first_ns": self.first_ns,
                           "last_ns": self.last_ns, "paths": len(self.paths)}).encode()


class SinkProtocol(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = bytearray()
        self.skip = 0  # body bytes of the current request still to come
        self.transport: Any = None  # uvloop's transports do not subclass asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buffer))
                del self.buffer[:taken]
                self.skip -= taken
                if self.skip:
                    break
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _LIMIT:
                    self._close()
                break
            head = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            answer = self._handle(head)
            if answer is None:
                self._close()
                break
            out.append(answer)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _handle(self, head: bytes) -> bytes | None:
        request_line, _, headers = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return None
        method, path = parts[0], parts[1]
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or b"0")
            elif name.strip().lower() == b"transfer-encoding":
                return None  # chunked bodies are not supported: close rather than misparse
        self.skip = length
        if method == b"POST":
            self.counter.arrived(path)
            return _ANSWER
        if path.startswith(b"/reset"):
            self.counter.reset()
        body = self.counter.document()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(counter), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:  # pragma: no cover - uvloop is a dependency of relay
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
