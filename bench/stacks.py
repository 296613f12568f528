"""What each measurement runs against: relay (redis, web, worker, subscriber) or the baseline."""

from __future__ import annotations

import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

CALLBACK_PATH = "/callbacks/runflow"
_METRIC = re.compile(r'^relay_callbacks_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$')


@dataclass
class Stack:
    """Processes of one measurement; `procs` in start order, stopped in reverse."""

    base_url: str
    runflow_secret: str
    procs: list[Child] = field(default_factory=list)
    api_key: str = ""
    subscriber_url: str = ""
    web: Child | None = None

    def check_alive(self) -> None:
        for child in self.procs:
            if not child.alive():
                raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n"
                                 f"{child.log_tail()}")

    def log_problems(self) -> dict[str, list[str]]:
        return {c.name: c.problems() for c in self.procs if c.name != "redis" and c.problems()}

    def stop(self, children: Children) -> None:
        for child in reversed(self.procs):
            children.stop(child)

    # ---- relay only --------------------------------------------------------------------

    def callback_counts(self) -> dict[str, float]:
        """relay_callbacks_total by outcome, from the web process's /metrics."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            m = _METRIC.match(line)
            if m:
                outcome = re.search(r'outcome="([^"]*)"', m["labels"])
                key = outcome[1] if outcome else m["labels"]
                counts[key] = counts.get(key, 0.0) + float(m["value"])
        return counts

    def arrivals(self, after: int = 0) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(f"{self.subscriber_url}/arrivals",
                                        params={"after": after}, timeout=10).json()
        return doc


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt-get install -y redis-server)")
    return binary


def relay_env(redis_url: str, api_key: str, runflow_secret: str,
              extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the bench's relay processes (PORT is the caller's to add)."""
    env = clean_env(
        REDIS_URL=redis_url, RELAY_SECRET_KEY=secrets.token_hex(16),
        RELAY_API_KEYS=api_key, RUNFLOW_CALLBACK_SECRETS=runflow_secret,
        RELAY_ALLOW_PRIVATE_TARGETS="true", RELAY_LOG_LEVEL="warning", RELAY_LOG_FORMAT="json",
    )
    env.update(extra_env or {})
    return env


def start_baseline(children: Children, workdir: Path, runflow_secret: str) -> Stack:
    redis, redis_url = start_redis(children, redis_binary(), workdir / "redis")
    port = free_port()
    app = children.start("baseline", python_module(
        "bench.baseline", "--port", str(port), "--redis-url", redis_url), clean_env())
    stack = Stack(f"http://127.0.0.1:{port}", runflow_secret, [redis, app])
    wait_until(http_ready(f"{stack.base_url}/readyz", app), 30, "baseline app")
    return stack


def start_relay(children: Children, workdir: Path, runflow_secret: str, *,
                with_worker: bool = True, warmup: int = 20,
                extra_env: dict[str, str] | None = None) -> Stack:
    """redis, `relay web`, one subscription to a recording subscriber, and `relay worker`.

    Without `with_worker` there is neither subscription nor subscriber nor worker.
    A few warm-up callbacks go through the whole path before the stack is handed back.
    """
    redis, redis_url = start_redis(children, redis_binary(), workdir / "redis")
    port, api_key = free_port(), "bench-" + secrets.token_hex(16)
    env = relay_env(redis_url, api_key, runflow_secret, extra_env)
    env["PORT"] = str(port)
    stack = Stack(f"http://127.0.0.1:{port}", runflow_secret, [redis], api_key=api_key)
    web = children.start("relay-web", python_module("relay", "web", "--host", "127.0.0.1"), env)
    stack.procs.append(web)
    stack.web = web
    wait_until(http_ready(f"{stack.base_url}/readyz", web), 30, "relay web")
    if with_worker:
        sub_port = free_port()
        stack.subscriber_url = f"http://127.0.0.1:{sub_port}"
        answer = httpx.post(f"{stack.base_url}/v1/subscriptions",
                            headers={"authorization": f"Bearer {api_key}"},
                            json={"url": f"{stack.subscriber_url}/hook"}, timeout=10)
        if answer.status_code != 201:
            raise BenchError(f"POST /v1/subscriptions answered {answer.status_code}: "
                             f"{answer.text[:500]}")
        sub_env = clean_env(BENCH_SUBSCRIBER_SECRET=answer.json()["secret"])
        subscriber = children.start("subscriber", python_module(
            "bench.subscriber", "--port", str(sub_port)), sub_env)
        stack.procs.append(subscriber)
        wait_until(http_ready(f"{stack.subscriber_url}/", subscriber), 30, "subscriber")
        stack.procs.append(children.start("relay-worker", python_module("relay", "worker"), env))
    _warm_up(stack, warmup, with_worker)
    return stack


def _warm_up(stack: Stack, count: int, delivered: bool) -> None:
    """Send `count` callbacks and, with a subscriber, wait for their delivery (<= 30 s)."""
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        for _, body, sig in payloads.signed_callbacks(count, stack.runflow_secret, "warmup"):
            r = client.post(CALLBACK_PATH, content=body, headers={
                "runflow-signature": sig, "content-type": "application/json"})
            if r.status_code != 200 or r.json().get("duplicate") is not False:
                raise BenchError(f"warm-up callback answered {r.status_code}: {r.text[:500]}")
    if delivered:
        def arrived() -> bool:
            stack.check_alive()
            return int(stack.arrivals(10**9)["count"]) >= count

        try:
            wait_until(arrived, 30, "warm-up deliveries", interval=0.1)
        except BenchError as exc:
            raise BenchError(f"{exc}; worker log:\n{stack.procs[-1].log_tail()}") from None


def pause_for_quiet(seconds: float = 0.5) -> None:
    """Let a just-stopped stack's sockets and CPU settle before the next measurement."""
    time.sleep(seconds)
