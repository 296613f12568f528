"""The delivery baseline: one aiohttp session posting stored event bodies, nothing else.

It reads one JSON object per line (`{"id": "evt_...", "body": "..."}`) from `--bodies`, signs
each body as a Standard Webhooks message (as a delivery is signed, so the headers are the same
size), and POSTs them all to `--url` with `--concurrency` requests in flight. No storage, no
retries, no bookkeeping: a relay worker's delivery rate is reported as a ratio of this rate.
It prints one line, `BENCH_JSON {...}`, with the count, errors, seconds and CPU seconds.

Run: `python -m bench.plainloop --url http://127.0.0.1:8003/d --bodies bodies.jsonl`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay.signing import sign_webhook


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def post_all(url: str, bodies: list[tuple[str, bytes]], concurrency: int,
                   key: bytes) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=15)
    errors = 0
    first_error = ""
    next_index = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     trust_env=False, auto_decompress=False) as session:
        async def lane() -> None:
            nonlocal next_index, errors, first_error
            while next_index < len(bodies):
                event_id, body = bodies[next_index]
                next_index += 1
                stamp = int(time.time())
                headers = {"webhook-id": event_id, "webhook-timestamp": str(stamp),
                           "webhook-signature": sign_webhook(event_id, stamp, body, [key]),
                           "content-type": "application/json"}
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        if not 200 <= answer.status < 300:
                            errors += 1
                            first_error = first_error or f"HTTP {answer.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors += 1
                    first_error = first_error or repr(exc)

        cpu0, started = _cpu(), time.monotonic()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        seconds, cpu = time.monotonic() - started, _cpu() - cpu0
    return {"count": len(bodies), "errors": errors, "first_error": first_error,
            "seconds": seconds, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plainloop")
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    bodies = []
    for line in args.bodies.read_text().splitlines():
        doc = json.loads(line)
        bodies.append((str(doc["id"]), str(doc["body"]).encode()))
    key = b"plain-loop-signing-key-32-bytes!"
    try:
        import uvloop

        result = uvloop.run(post_all(args.url, bodies, args.concurrency, key))
    except ImportError:  # pragma: no cover - uvloop is a dependency of relay
        result = asyncio.run(post_all(args.url, bodies, args.concurrency, key))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
