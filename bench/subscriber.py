"""The benchmark's subscriber: a bare ASGI app that records when each event arrives.

Every POST is answered 200 after its Standard Webhooks signature is checked against the
subscription secret in BENCH_SUBSCRIBER_SECRET (when set). Arrival times are
`time.monotonic_ns()`: CLOCK_MONOTONIC is system-wide on Linux, so they compare with the send
times the benchmark records in another process. `GET /arrivals?after=N` returns what arrived
since the N-th event as `[run_id, webhook_id, arrival_ns]` rows.

Run: `python -m bench.subscriber --port 8002`
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def signature_ok(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()
    return any(part.partition(",")[2] == expected
               for part in headers.get("webhook-signature", "").split())


class Recorder:
    def __init__(self, secret: str | None) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_")) if secret else None
        self.arrivals: list[tuple[str, str, int]] = []
        self.bad_signatures = 0
        self.unparsable = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET" and scope["path"] == "/arrivals":
            await self._arrivals(scope, send)
            return
        if scope["method"] == "GET":
            await self._answer(send, 200, b'{"ok": true}')
            return
        arrived = time.monotonic_ns()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.key is not None and not signature_ok(self.key, headers, body):
            self.bad_signatures += 1
        try:
            run_id = str(json.loads(body).get("run_id"))
        except (ValueError, AttributeError):
            self.unparsable += 1
            run_id = ""
        self.arrivals.append((run_id, headers.get("webhook-id", ""), arrived))
        await self._answer(send, 200, b'{"ok": true}')

    async def _arrivals(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        after = int(query.get("after", ["0"])[0])
        doc = {"count": len(self.arrivals), "bad_signatures": self.bad_signatures,
               "unparsable": self.unparsable, "arrivals": self.arrivals[after:]}
        await self._answer(send, 200, json.dumps(doc).encode())

    @staticmethod
    async def _answer(send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.subscriber")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = Recorder(os.environ.get("BENCH_SUBSCRIBER_SECRET") or None)
    config = uvicorn.Config(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                            lifespan="off", log_config=None, access_log=False,
                            timeout_keep_alive=75, backlog=4096)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
