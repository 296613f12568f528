"""Chaos run reconciliation: by `webhook-id`, what each subscriber got against what was accepted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.chaos_load import Sent

TERMINAL = {"run.completed", "run.failed", "run.cancelled", "run.partial_succeeded",
            "run.expired"}


@dataclass
class SubscriberTally:
    name: str
    expected: int = 0
    delivered: int = 0  # distinct expected webhook-ids that arrived
    duplicates: int = 0  # arrivals beyond the first of a webhook-id
    lost: int = 0  # expected webhook-ids that never arrived
    unexpected: int = 0  # webhook-ids relay never answered or recorded
    bad_signatures: int = 0
    lost_sample: list[str] = field(default_factory=list)


@dataclass
class Reconciled:
    callbacks_accepted: int = 0
    runs_tracked: int = 0
    runs_finished: int = 0
    runs_with_one_terminal_event: int = 0
    run_events: int = 0
    run_event_types: dict[str, int] = field(default_factory=dict)
    # Runs with more than one event of a type, and those events: each poll emits at most one.
    repeated: list[list[dict[str, Any]]] = field(default_factory=list)
    expected_per_subscriber: int = 0
    drain_seconds: float = 0.0
    subscribers: list[SubscriberTally] = field(default_factory=list)
    lost_events: list[dict[str, Any]] = field(default_factory=list)  # what relay says of them

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.subscribers)

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.subscribers)

    @property
    def delivered(self) -> int:
        return sum(s.delivered for s in self.subscribers)


class Arrivals:
    """Every `webhook-id` one recording subscriber (bench.subscriber) has received."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.ids: Counter[str] = Counter()
        self.rows = 0
        self.bad_signatures = 0

    async def refresh(self, client: httpx.AsyncClient) -> None:
        doc = (await client.get(f"{self.url}/arrivals", params={"after": self.rows},
                                timeout=30)).json()
        for _, webhook_id, _ in doc["arrivals"]:
            self.ids[webhook_id] += 1
        self.rows += len(doc["arrivals"])
        self.bad_signatures = int(doc["bad_signatures"]) + int(doc["unparsable"])


class Reconciler:
    def __init__(self, client: httpx.AsyncClient, base: str, api_key: str,
                 subscribers: dict[str, str], sent: Sent) -> None:
        self.client, self.base, self.sent = client, base, sent
        self.headers = {"authorization": f"Bearer {api_key}"}
        self.arrivals = [Arrivals(name, url) for name, url in subscribers.items()]
        self.run_events: dict[str, list[str]] = {}  # run id -> its event ids, once finished
        self.limit = asyncio.Semaphore(16)

    async def _get(self, path: str, **params: Any) -> Any:
        async with self.limit:
            for _ in range(30):  # relay web may briefly answer 503 right after a fault
                try:
                    r = await self.client.get(f"{self.base}{path}", params=params,
                                              headers=self.headers, timeout=30)
                except httpx.TransportError:
                    await asyncio.sleep(0.5)
                    continue
                if r.status_code != 503:
                    return r.json() if r.status_code == 200 else None
                await asyncio.sleep(0.5)
        return None

    async def _check_run(self, run_id: str) -> None:
        view = await self._get(f"/v1/runs/betterprompt/{run_id}")
        if view and view.get("state") == "finished":
            self.run_events[run_id] = list(view.get("events") or [])

    def expected(self) -> set[str]:
        ids = set(self.sent.accepted.values())
        for events in self.run_events.values():
            ids.update(events)
        return ids

    async def drain(self, within: float) -> float:
        """Wait until every run has finished and every subscriber has every event."""
        started = time.monotonic()
        while True:
            pending = self.sent.tracked - self.run_events.keys()
            await asyncio.gather(*(self._check_run(r) for r in pending))
            await asyncio.gather(*(a.refresh(self.client) for a in self.arrivals))
            want = self.expected()
            done = not (self.sent.tracked - self.run_events.keys()) and all(
                want <= a.ids.keys() for a in self.arrivals)
            if done or time.monotonic() - started > within:
                return time.monotonic() - started
            await asyncio.sleep(1.0)

    async def _events_of(self, run_id: str) -> list[dict[str, Any]]:
        doc = await self._get("/v1/events", provider="betterprompt", run_id=run_id, limit=100)
        return [{k: e.get(k) for k in ("id", "event", "status", "source", "observed_at")}
                for e in (doc or {}).get("data", [])]

    async def result(self, drain_seconds: float) -> Reconciled:
        want = self.expected()
        finished = sorted(self.run_events)
        listed = await asyncio.gather(*(self._events_of(r) for r in finished))
        terminals = [sum(1 for e in events if e["event"] in TERMINAL) for events in listed]
        types = Counter(e["event"] for events in listed for e in events)
        out = Reconciled(
            callbacks_accepted=len(self.sent.accepted), runs_tracked=len(self.sent.tracked),
            runs_finished=len(finished), runs_with_one_terminal_event=terminals.count(1),
            run_events=sum(len(e) for e in self.run_events.values()),
            expected_per_subscriber=len(want), drain_seconds=round(drain_seconds, 1),
            run_event_types=dict(types),
            repeated=[events for events in listed
                      if len({e["event"] for e in events}) < len(events)][:3])
        lost_ids: set[str] = set()
        for a in self.arrivals:
            got = set(a.ids)
            missing = sorted(want - got)
            lost_ids.update(missing)
            out.subscribers.append(SubscriberTally(
                name=a.name, expected=len(want), delivered=len(want & got),
                duplicates=sum(n - 1 for n in a.ids.values()), lost=len(missing),
                unexpected=len(got - want), bad_signatures=a.bad_signatures,
                lost_sample=missing[:5]))
        for event_id in sorted(lost_ids)[:5]:  # what relay itself says of a lost event
            view = await self._get(f"/v1/events/{event_id}")
            out.lost_events.append(view if view is not None else {"id": event_id,
                                                                   "found": False})
        return out
