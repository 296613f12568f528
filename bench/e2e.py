"""End to end: callbacks sent at a fixed rate, the time until each signed event arrives."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from bench import payloads
from bench.procs import BenchError
from bench.report import percentile
from bench.stacks import CALLBACK_PATH, Stack


@dataclass
class Sent:
    sent_ns: dict[str, int] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    answer_ns: list[int] = field(default_factory=list)
    first_bad: str = ""
    span_s: float = 0.0
    max_lag_ms: float = 0.0


@dataclass
class E2EResult:
    rate: float
    seconds: float
    sent: int
    achieved_rate: float
    non200: int
    delivered: int
    missing: int
    duplicates: int
    bad_signatures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    answer_p50_ms: float
    answer_p99_ms: float
    sender_max_lag_ms: float
    first_bad: str

    @property
    def valid(self) -> bool:
        return not (self.non200 or self.missing or self.bad_signatures)

    def problems(self) -> list[str]:
        out = []
        if self.non200:
            out.append(f"{self.non200} callbacks not answered 200 (first: {self.first_bad})")
        if self.missing:
            out.append(f"{self.missing} accepted callbacks never reached the subscriber")
        if self.bad_signatures:
            out.append(f"{self.bad_signatures} deliveries with a bad webhook-signature")
        if self.duplicates:
            out.append(f"{self.duplicates} events delivered more than once")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems(), "valid": self.valid}


async def _send(base_url: str, callbacks: list[tuple[str, bytes, str]], rate: float) -> Sent:
    """Open loop: callback i leaves at start + i/rate whether or not earlier ones answered."""
    out = Sent()
    url = base_url + CALLBACK_PATH
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(run_id: str, body: bytes, sig: str) -> None:
            headers = {"runflow-signature": sig, "content-type": "application/json"}
            started = time.monotonic_ns()
            out.sent_ns[run_id] = started
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    text = await answer.read()
                    out.statuses[str(answer.status)] += 1
                    if answer.status == 200:
                        out.accepted.add(run_id)
                    if answer.status != 200 and not out.first_bad:
                        out.first_bad = f"{answer.status} {text[:300]!r}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.statuses["error"] += 1
                out.first_bad = out.first_bad or repr(exc)
            out.answer_ns.append(time.monotonic_ns() - started)

        tasks = []
        start = loop.time() + 0.05
        for i, (run_id, body, sig) in enumerate(callbacks):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            out.max_lag_ms = max(out.max_lag_ms, (loop.time() - due) * 1000)
            tasks.append(asyncio.create_task(one(run_id, body, sig)))
        out.span_s = loop.time() - start
        await asyncio.gather(*tasks)
    return out


def _run_loop(coro: Any) -> Sent:
    try:
        import uvloop

        result: Sent = uvloop.run(coro)
        return result
    except ImportError:  # pragma: no cover - uvloop is a dependency of relay
        return asyncio.run(coro)  # type: ignore[no-any-return]


def out_of(accepted: set[str], arrived: dict[str, int]) -> int:
    """How many accepted callbacks have not arrived."""
    return sum(1 for run_id in accepted if run_id not in arrived)


def measure(stack: Stack, *, rate: float, seconds: float, wait: float = 20.0) -> E2EResult:
    """Send rate*seconds unique callbacks at `rate`, then join send and arrival times."""
    count = max(1, round(rate * seconds))
    callbacks = list(payloads.signed_callbacks(count, stack.runflow_secret, "e2e"))
    initial = stack.arrivals(10**9)
    before, bad_before = int(initial["count"]), int(initial["bad_signatures"])
    sent = _run_loop(_send(stack.base_url, callbacks, rate))

    arrived: dict[str, int] = {}
    duplicates = 0
    offset = before
    bad = 0
    deadline = time.monotonic() + wait
    while True:
        doc = stack.arrivals(offset)
        rows = doc["arrivals"]
        offset += len(rows)
        bad = int(doc["bad_signatures"]) - bad_before
        for run_id, _webhook_id, at_ns in rows:
            if run_id in sent.sent_ns:
                if run_id in arrived:
                    duplicates += 1
                else:
                    arrived[run_id] = int(at_ns)
        if out_of(sent.accepted, arrived) == 0 or time.monotonic() > deadline:
            break
        stack.check_alive()
        time.sleep(0.1)
    if not arrived:
        raise BenchError("end to end: no event reached the subscriber; worker log:\n"
                         + stack.procs[-1].log_tail())
    latencies = sorted((at - sent.sent_ns[run_id]) / 1e6 for run_id, at in arrived.items())
    answers = sorted(ns / 1e6 for ns in sent.answer_ns)
    non200 = sum(n for status, n in sent.statuses.items() if status != "200")
    return E2EResult(
        rate=rate, seconds=seconds, sent=count,
        achieved_rate=(count - 1) / sent.span_s if sent.span_s > 0 else float(count),
        non200=non200, delivered=len(arrived), missing=out_of(sent.accepted, arrived),
        duplicates=duplicates, bad_signatures=bad,
        p50_ms=percentile(latencies, 50), p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99), max_ms=latencies[-1],
        answer_p50_ms=percentile(answers, 50), answer_p99_ms=percentile(answers, 99),
        sender_max_lag_ms=sent.max_lag_ms, first_bad=sent.first_bad,
    )
