"""The chaos run's traffic: signed Runflow callbacks and tracked runs, sent as a provider would.

A provider retries until it gets a 200, so these senders do too: on a 503, a connection error
or a timeout they wait a little and try again, on the other `relay web` process when there are
two. Only a 200 counts as accepted, and the event id of that answer is what the subscribers
must receive.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from bench import payloads

CALLBACK_PATH = "/callbacks/runflow"
# How long a sender keeps retrying one request before it gives up on it (reported, not lost:
# relay never said it had it).
GIVE_UP_AFTER = 120.0


@dataclass
class Sent:
    """What the senders got back."""

    accepted: dict[str, str] = field(default_factory=dict)  # run id -> event id of the 200
    duplicate_answers: int = 0  # a retry answered `duplicate: true`: the first try had landed
    tracked: set[str] = field(default_factory=set)  # BetterPrompt run ids relay answered 2xx
    answers: Counter[str] = field(default_factory=Counter)  # "503", "connect", "200", ...
    gave_up: list[str] = field(default_factory=list)  # requests that never got a 2xx

    def unexpected(self) -> int:
        """Answers no fault explains: any status other than 200, 201 and 503."""
        return sum(n for k, n in self.answers.items()
                   if k.isdigit() and k not in ("200", "201", "503"))


Attempt = Callable[[str], Awaitable[httpx.Response]]


async def _with_retries(what: str, bases: list[str], first: int, sent: Sent,
                        attempt: Attempt) -> httpx.Response | None:
    """Call `attempt(base)` until it answers 2xx, rotating over `bases`; None if it never did."""
    deadline = time.monotonic() + GIVE_UP_AFTER
    delay, i = 0.1, first
    while time.monotonic() < deadline:
        base = bases[i % len(bases)]
        i += 1
        try:
            answer = await attempt(base)
        except httpx.TimeoutException:
            sent.answers["timeout"] += 1
        except httpx.TransportError:
            sent.answers["connect"] += 1
        else:
            sent.answers[str(answer.status_code)] += 1
            if 200 <= answer.status_code < 300:
                return answer
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)
    sent.gave_up.append(what)
    return None


async def _gated(gate: asyncio.Semaphore, job: Awaitable[None]) -> None:
    try:
        await job
    finally:
        gate.release()


async def send_callbacks(client: httpx.AsyncClient, bases: list[str], secret: str, count: int,
                         rate: float, sent: Sent, gate: asyncio.Semaphore,
                         label: str = "chaos") -> None:
    """`count` unique signed `run.completed` callbacks at `rate` per second."""
    started = time.monotonic()
    tasks = []
    for seq, (run_id, body, sig) in enumerate(payloads.signed_callbacks(count, secret, label)):
        ahead = started + seq / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await gate.acquire()  # a request holds its slot through its retries, as a backlog would
        tasks.append(asyncio.create_task(_gated(gate, _one_callback(
            client, bases, seq, run_id, body, sig, sent))))
    await asyncio.gather(*tasks)


async def _one_callback(client: httpx.AsyncClient, bases: list[str], seq: int, run_id: str,
                        body: bytes, sig: str, sent: Sent) -> None:
    headers = {"runflow-signature": sig, "content-type": "application/json"}
    tries = 0

    async def attempt(base: str) -> httpx.Response:
        nonlocal tries
        tries += 1
        return await client.post(f"{base}{CALLBACK_PATH}", content=body, headers=headers)

    answer = await _with_retries(f"callback {run_id}", bases, seq, sent, attempt)
    if answer is None:
        return
    doc = answer.json()
    sent.accepted[run_id] = str(doc["event_id"])
    if doc.get("duplicate") is True:
        if tries == 1:  # a first try can only be a duplicate if relay mixed two runs up
            sent.answers["duplicate_on_first_try"] += 1
        sent.duplicate_answers += 1


async def track_runs(client: httpx.AsyncClient, bases: list[str], api_key: str, count: int,
                     seconds: float, sent: Sent, gate: asyncio.Semaphore,
                     label: str = "chaos") -> None:
    """`count` BetterPrompt runs tracked with `POST /v1/runs`, spread over `seconds`."""
    prefix = payloads.run_id_prefix(f"{label}-bp")
    started = time.monotonic()
    tasks = []
    for seq in range(count):
        ahead = started + seq * seconds / max(count, 1) - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await gate.acquire()
        tasks.append(asyncio.create_task(_gated(gate, _one_run(
            client, bases, api_key, seq, f"{prefix}{seq:06d}", sent))))
    await asyncio.gather(*tasks)


async def _one_run(client: httpx.AsyncClient, bases: list[str], api_key: str, seq: int,
                   run_id: str, sent: Sent) -> None:
    doc = {"provider": "betterprompt", "run_id": run_id, "metadata": {"chaos": seq}}

    async def attempt(base: str) -> httpx.Response:
        return await client.post(f"{base}/v1/runs", json=doc,
                                 headers={"authorization": f"Bearer {api_key}"})

    if await _with_retries(f"run {run_id}", bases, seq, sent, attempt) is not None:
        sent.tracked.add(run_id)
