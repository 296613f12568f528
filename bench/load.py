"""Signed Runflow callbacks from this process: as fast as allowed, or at a fixed rate.

Callbacks are generated as they are sent, so a long run does not hold them all in memory.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bench import payloads
from bench.stacks import CALLBACK_PATH


@dataclass
class Sent:
    sent: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    first_bad: str = ""
    seconds: float = 0.0
    max_lag_ms: float = 0.0

    @property
    def accepted(self) -> int:
        return self.statuses["200"]

    def problems(self) -> list[str]:
        bad = self.sent - self.accepted
        return [f"{bad} callbacks not answered 200 (first: {self.first_bad})"] if bad else []


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, sig: str,
                out: Sent) -> None:
    headers = {"runflow-signature": sig, "content-type": "application/json"}
    out.sent += 1
    try:
        async with session.post(url, data=body, headers=headers) as answer:
            text = await answer.read()
            out.statuses[str(answer.status)] += 1
            if answer.status != 200 and not out.first_bad:
                out.first_bad = f"{answer.status} {text[:300]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.statuses["error"] += 1
        out.first_bad = out.first_bad or repr(exc)


async def closed_loop(base_url: str, secret: str, count: int, concurrency: int,
                      label: str) -> Sent:
    """`count` unique callbacks with `concurrency` in flight, each lane sending when answered."""
    out = Sent()
    callbacks = payloads.signed_callbacks(count, secret, label)
    url = base_url + CALLBACK_PATH
    started = time.monotonic()
    async with _session(concurrency) as session:
        async def lane() -> None:
            for _, body, sig in callbacks:  # one shared iterator: each callback sent once
                await _post(session, url, body, sig, out)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    out.seconds = time.monotonic() - started
    return out


async def open_loop(base_url: str, secret: str, rate: float, seconds: float, label: str,
                    tick: Callable[[float], None] | None = None,
                    tick_every: float = 1.0) -> Sent:
    """Callback i leaves at start + i/rate whether or not earlier ones were answered;
    `tick(elapsed)` is called about every `tick_every` seconds meanwhile."""
    out = Sent()
    url = base_url + CALLBACK_PATH
    loop = asyncio.get_running_loop()
    prefix = payloads.run_id_prefix(label)
    count = max(1, round(rate * seconds))
    tasks: set[asyncio.Task[None]] = set()
    async with _session(256) as session:
        start = loop.time() + 0.05
        next_tick = start
        for i in range(count):
            due = start + i / rate
            now = loop.time()
            if now >= next_tick and tick is not None:
                tick(now - start)
                next_tick += tick_every
            if due > now:
                await asyncio.sleep(due - now)
            out.max_lag_ms = max(out.max_lag_ms, (loop.time() - due) * 1000)
            body = payloads.callback_body(f"{prefix}{i:08d}", i)
            task = asyncio.create_task(_post(session, url, body,
                                             payloads.signature(body, secret), out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        out.seconds = loop.time() - start
        if tick is not None:
            tick(out.seconds)
        await asyncio.gather(*tasks)
    return out
