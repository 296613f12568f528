"""The ingest baseline: a bare Starlette app that reads the body and does one XADD.

Verifying, parsing, deduplicating and storing a callback cannot be cheaper than one body read
plus one Redis round trip, so relay's ingest rate is reported as a ratio of this app's rate,
measured in the same run on the same uvicorn settings (uvloop, httptools, one process).

Run: `python -m bench.baseline --port 8001 --redis-url redis://127.0.0.1:6379/0`
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

STREAM = "bench:baseline"
MAXLEN = 100_000


def create_app(redis_url: str, *, max_connections: int = 64) -> Starlette:
    client: aioredis.Redis | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal client
        client = aioredis.Redis.from_url(redis_url, decode_responses=True,
                                         max_connections=max_connections)
        try:
            yield
        finally:
            await client.aclose()

    async def ingest(request: Request) -> Response:
        assert client is not None
        body = await request.body()
        entry_id = await client.xadd(STREAM, {"body": body}, maxlen=MAXLEN, approximate=True)
        return JSONResponse({"ok": True, "id": entry_id})

    async def readyz(request: Request) -> Response:
        assert client is not None
        await client.ping()
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/callbacks/runflow", ingest, methods=["POST"]),
        Route("/readyz", readyz, methods=["GET"]),
    ], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--redis-max-connections", type=int, default=64)
    args = parser.parse_args()
    app = create_app(args.redis_url, max_connections=args.redis_max_connections)
    # The same uvicorn settings as `relay web` (serve_http in relay/cli/server.py).
    config = uvicorn.Config(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", lifespan="on",
        log_config=None, access_log=False, proxy_headers=True, forwarded_allow_ips="*",
        timeout_keep_alive=75, backlog=4096,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
