"""A fast fake BetterPrompt for the benchmarks: runs stay running, or finish after N reads.

`GET /v1/runs/{id}` answers the documented shape at once; with `--finish-after N` the N-th and
later reads of a run answer it succeeded. `GET /stats` returns how many run reads it has served.
Run: `python -m bench.fakeprovider --port 8003 [--finish-after 3]`
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]


class FakeBetterPrompt:
    def __init__(self, finish_after: int = 0) -> None:
        self.served = 0
        self.finish_after = finish_after
        self.reads: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/v1/runs/"):
            self.served += 1
            run_id = path[9:]
            reads = self.reads[run_id] = self.reads.get(run_id, 0) + 1
            done = 0 < self.finish_after <= reads
            outputs = [{"type": "text", "data": f"done {run_id}"}] if done else []
            body = json.dumps({"status": "SUCCESS", "data": {
                "runId": run_id, "outputs": outputs,
                "runStatus": "succeeded" if done else "running", "tokens": 0}}).encode()
            status = 200
        elif path == "/stats":
            body, status = json.dumps({"served": self.served}).encode(), 200
        else:
            body, status = b'{"status":"NOT_FOUND_ERROR"}', 404
        await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fakeprovider")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--finish-after", type=int, default=0,
                        help="answer a run succeeded from its N-th read on (0: never)")
    args = parser.parse_args()
    uvicorn.run(FakeBetterPrompt(args.finish_after), host="127.0.0.1", port=args.port,
                loop="uvloop", http="httptools", log_config=None, access_log=False, lifespan="off",
                backlog=4096, timeout_keep_alive=75)


if __name__ == "__main__":
    main()
