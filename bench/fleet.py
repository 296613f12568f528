"""One Redis, a cheap sink, and any number of `relay web` and `relay worker` processes.

The delivery, fan-out, memory, soak and scaling sections build on this: they start the relay
processes they need, subscribe to the sink through relay's own service API (the Relay object,
in this process) and read the sink's counters. Events are stored the same way when a section
needs a backlog without the HTTP path.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from bench import payloads
from bench.procs import (
    BenchError,
    Child,
    Children,
    clean_env,
    free_port,
    http_ready,
    python_module,
    start_redis,
    wait_until,
)
from bench.stacks import CALLBACK_PATH, redis_binary, relay_env
from relay.config import Settings
from relay.providers.base import CallbackContext
from relay.providers.runflow import Runflow
from relay.service import Relay
from relay.store import open_store

T = TypeVar("T")


def run_async(coro: Awaitable[T]) -> T:
    """Run one coroutine on a fresh uvloop (asyncio when uvloop is missing)."""
    async def wrap() -> T:
        return await coro

    try:
        import uvloop

        result: T = uvloop.run(wrap())
        return result
    except ImportError:  # pragma: no cover - uvloop is a dependency of relay
        return asyncio.run(wrap())


@dataclass
class Fleet:
    children: Children
    redis: Child
    redis_url: str
    sink: Child
    sink_url: str
    env: dict[str, str]
    runflow_secret: str
    webs: list[Child] = field(default_factory=list)
    web_urls: list[str] = field(default_factory=list)
    workers: list[Child] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5))

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    @property
    def relay_procs(self) -> list[Child]:
        return [*self.webs, *self.workers]

    # ---- processes ----------------------------------------------------------------------

    def start_web(self) -> str:
        port = free_port()
        env = {**self.env, "PORT": str(port)}
        name = "relay-web" if not self.webs else f"relay-web-{len(self.webs) + 1}"
        web = self.children.start(name, python_module("relay", "web", "--host", "127.0.0.1"),
                                  env)
        url = f"http://127.0.0.1:{port}"
        wait_until(http_ready(f"{url}/readyz", web), 30, name)
        self.webs.append(web)
        self.web_urls.append(url)
        return url

    def start_worker(self) -> Child:
        name = "relay-worker" if not self.workers else f"relay-worker-{len(self.workers) + 1}"
        worker = self.children.start(name, python_module("relay", "worker"), self.env)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            self.children.stop(worker)
        self.workers.clear()

    def stop(self) -> None:
        for child in [*reversed(self.workers), *reversed(self.webs), self.sink, self.redis]:
            self.children.stop(child)
        self.http.close()

    def check_alive(self) -> None:
        for child in [self.redis, self.sink, *self.relay_procs]:
            if not child.alive():
                raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n"
                                 f"{child.log_tail()}")

    def log_problems(self) -> dict[str, list[str]]:
        return {c.name: c.problems() for c in self.relay_procs if c.problems()}

    # ---- the sink -----------------------------------------------------------------------

    def sink_count(self) -> dict[str, int]:
        doc: dict[str, int] = self.http.get(f"{self.sink_url}/count").json()
        return doc

    def sink_reset(self) -> None:
        self.http.get(f"{self.sink_url}/reset")

    def wait_for_sink(self, count: int, timeout: float, what: str,
                      interval: float = 0.01) -> dict[str, int]:
        """Poll the sink until it has counted `count` POSTs; its last counter document."""
        doc: dict[str, int] = {}

        def reached() -> bool:
            nonlocal doc
            doc = self.sink_count()
            if doc["count"] >= count:
                return True
            self.check_alive()
            return False

        try:
            wait_until(reached, timeout, what, interval=interval)
        except BenchError as exc:
            tails = "\n".join(f"{w.name}:\n{w.log_tail(10)}" for w in self.workers)
            raise BenchError(f"{exc} ({doc.get('count', 0)} of {count} arrived)\n{tails}"
                             ) from None
        return doc

    # ---- relay's own API, in this process -----------------------------------------------

    async def _with_relay(self, use: Callable[[Relay], Awaitable[T]]) -> T:
        settings = self.settings
        async with open_store(settings, self.redis_url) as store:
            return await use(Relay(settings, store))

    def subscribe(self, paths: list[str]) -> list[str]:
        """One subscription per path of the sink; their ids."""
        async def go(relay: Relay) -> list[str]:
            out = []
            for path in paths:
                sub, _ = await relay.create_subscription({"url": f"{self.sink_url}{path}"})
                out.append(sub.id)
            return out

        return run_async(self._with_relay(go))

    def store_events(self, count: int, label: str) -> list[tuple[str, str]]:
        """`count` Runflow callbacks normalized and accepted as relay web would: (id, body)."""
        runflow = Runflow([self.runflow_secret])

        async def go(relay: Relay) -> list[tuple[str, str]]:
            await relay.subs.refresh()
            out: list[tuple[str, str]] = []
            prefix = payloads.run_id_prefix(label)
            for start in range(0, count, 200):
                events = [runflow.normalize(payloads.callback_body(f"{prefix}{i:08d}", i),
                                            CallbackContext(observed_at=time.time()))
                          for i in range(start, min(start + 200, count))]
                accepted = await asyncio.gather(*(relay.accept(e) for e in events))
                if any(a.duplicate for a in accepted):
                    raise BenchError("a stored bench event was taken for a duplicate")
                out.extend((e.id, e.to_json().decode()) for e in events)
            return out

        return run_async(self._with_relay(go))

    def redis_stats(self) -> dict[str, int]:
        async def go(relay: Relay) -> dict[str, int]:
            return await relay.store.stats()

        return run_async(self._with_relay(go))

    def depths(self) -> dict[str, int]:
        async def go(relay: Relay) -> dict[str, int]:
            return await relay.store.depths()

        return run_async(self._with_relay(go))

    # ---- the HTTP path ------------------------------------------------------------------

    def warm_up(self, count: int, per_event: int = 1, timeout: float = 30.0) -> None:
        """`count` callbacks to every web process; wait until the sink has them all."""
        before = self.sink_count()["count"]
        for url in self.web_urls:
            with httpx.Client(base_url=url, timeout=10) as client:
                for _, body, sig in payloads.signed_callbacks(count, self.runflow_secret,
                                                              "warmup"):
                    r = client.post(CALLBACK_PATH, content=body, headers={
                        "runflow-signature": sig, "content-type": "application/json"})
                    if r.status_code != 200:
                        raise BenchError(f"warm-up callback answered {r.status_code}: "
                                         f"{r.text[:300]}")
        total = before + count * per_event * len(self.web_urls)
        self.wait_for_sink(total, timeout, "warm-up deliveries", interval=0.05)


def start_fleet(children: Children, workdir: Path, extra_env: dict[str, str] | None = None,
                runflow_secret: str | None = None) -> Fleet:
    """redis-server (AOF everysec) and the sink; no relay process yet."""
    redis, redis_url = start_redis(children, redis_binary(), workdir / "redis")
    port = free_port()
    sink = children.start("sink", python_module("bench.sink", "--port", str(port)),
                          clean_env())
    sink_url = f"http://127.0.0.1:{port}"
    wait_until(http_ready(f"{sink_url}/count", sink), 30, "sink")
    secret = runflow_secret or "runflow_bench_" + secrets.token_hex(16)
    env = relay_env(redis_url, "bench-" + secrets.token_hex(16), secret, extra_env)
    return Fleet(children, redis, redis_url, sink, sink_url, env, secret)


def rss_mib(child: Child) -> float:
    return round(child.rss_bytes() / 2**20, 1)
