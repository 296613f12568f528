"""Delivery worker: claim queued deliveries, sign, POST, and settle or reschedule each one."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, deque
from typing import Any

import structlog

from relay import backoff, clock, metrics
from relay.errors import StorageUnavailable
from relay.ids import consumer_name
from relay.loops import finish, keep_running, shut_down, wait_event
from relay.models import DeliveryStatus, Subscription, SubscriptionStatus
from relay.outbound import Answer, Outbound
from relay.service import Relay
from relay.signing import secret_bytes, sign_webhook
from relay.store import Delivery, Outcome, QueueEntry

log = structlog.get_logger("relay.delivery")

# Longest an idle loop sleeps between checks of the retry set; the queue itself wakes readers,
# and a worker that schedules a retry wakes its own loop, so this only bounds how late another
# worker's retry is picked up if that worker died.
IDLE_SLEEP = 60.0
# Index trimming is housekeeping; once every few minutes per deployment is plenty.
MAINTENANCE_EVERY = 300.0
# A delivery for a subscription at its slot limit waits at least this long before it is read
# again; until the subscription's attempt time is known, it is also the assumed attempt time.
PARK_MIN = 1.0
# ...and at most this long, so that a subscriber that recovers gets its parked backlog within
# minutes (in step with the retry schedule's second delay) rather than at its hung pace.
PARK_MAX = 300.0
# Longest a delivery read for a busy subscriber may wait in memory for one of its slots.
HOLD_WAIT = 0.25


def classify(answer: Answer) -> Outcome | None:
    """OK for 2xx, GONE for 410, else None: a failure, retried or dead as the schedule says
    (3xx included: redirects are not followed)."""
    if answer.status is not None and 200 <= answer.status < 300:
        return Outcome.OK
    if answer.status == 410:
        return Outcome.GONE
    return None


def failure_text(answer: Answer) -> str | None:
    if answer.error is not None:
        return answer.error
    if answer.status is not None and 300 <= answer.status < 400:
        return f"redirect ({answer.status}) not followed"
    if answer.status is not None and not 200 <= answer.status < 300:
        return f"HTTP {answer.status}"
    return None


class DeliveryWorker:
    """Runs deliveries concurrently; one slow subscriber cannot take every slot."""

    def __init__(
        self,
        relay: Relay,
        outbound: Outbound,
        *,
        name: str | None = None,
        concurrency: int = 512,
        per_subscription: int = 64,
    ) -> None:
        self.relay = relay
        self.store = relay.store
        self.settings = relay.settings
        self.outbound = outbound
        self.name = name or consumer_name()
        self.concurrency = concurrency
        self.per_subscription = per_subscription
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_sub: Counter[str] = Counter()
        self._slot_free = asyncio.Event()
        self._wake_retries = asyncio.Event()
        self._next_retry_check = float("inf")
        self._stopping = False
        self._attempt_seconds: dict[str, float] = {}  # moving average, per subscription
        self._park_next: dict[str, float] = {}
        self._busy_since: dict[str, float] = {}  # since when a subscription has had attempts
        # Deliveries read for a subscription at its slot limit, started as its slots free, so a
        # fast subscriber's backlog waits in memory for a slot rather than being parked for a
        # second; see _may_hold. The others are parked (see _park_due).
        self._held: dict[str, deque[tuple[QueueEntry, Delivery, str]]] = {}

    # ---- loops --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace: float = 18.0) -> None:
        """Deliver until `stop` is set, then finish in-flight work within `grace` seconds."""
        loops = [
            asyncio.create_task(self._guarded(self._read_loop), name="delivery-read"),
            asyncio.create_task(self._guarded(self._retry_loop), name="delivery-retry"),
            asyncio.create_task(self._guarded(self._reclaim_loop), name="delivery-reclaim"),
            asyncio.create_task(self._guarded(self._maintenance_loop), name="maintenance"),
        ]
        log.info("worker_started", consumer=self.name)
        if self.settings.claim_timeout <= self.settings.delivery_timeout:
            log.warning("claim_timeout_too_short", claim_timeout=self.settings.claim_timeout,
                        delivery_timeout=self.settings.delivery_timeout,
                        consequence="a slow attempt may be taken over and sent twice; keep "
                                    "RELAY_CLAIM_TIMEOUT above RELAY_DELIVERY_TIMEOUT")
        await shut_down(stop, loops, grace=grace, on_stop=self._stop,
                        interrupt=self.store.interrupt_reads, drain=self.drain)
        log.info("worker_stopped", consumer=self.name)

    async def drain(self, grace: float) -> None:
        """Wait for in-flight attempts; cancel what is left and hand it back to the queue."""
        held = [(entry, clock.now_ms()) for q in self._held.values() for entry, _, _ in q]
        self._held.clear()
        if held:
            with contextlib.suppress(Exception):
                await self.store.defer(held)
        await finish(self._tasks, grace)

    def _stop(self) -> None:
        self._stopping = True

    async def _guarded(self, loop: Any) -> None:
        """Keep a loop alive through Redis outages: back off and try again, until stopping."""
        await keep_running(loop, loop.__name__, lambda: self._stopping)

    async def _read_loop(self) -> None:
        block_ms = int(self.store.block_seconds * 1000)
        while not self._stopping:
            free = await self._free_slots()
            entries = await self.store.read_queue(self.name, min(free, 200), block_ms)
            if entries:
                await self.dispatch(entries)

    async def _retry_loop(self) -> None:
        while not self._stopping:
            _, head = await self.store.promote_due()
            now = clock.now()
            wait = IDLE_SLEEP if head is None else min(max(head - now, 0.0), IDLE_SLEEP)
            self._next_retry_check = now + wait
            self._wake_retries.clear()
            await wait_event(self._wake_retries, wait)

    async def _reclaim_loop(self) -> None:
        interval = max(min(self.settings.claim_timeout / 2, 30.0), 0.05)
        min_idle = int(self.settings.claim_timeout * 1000)
        while not self._stopping:
            await asyncio.sleep(interval)
            entries = await self.store.reclaim(self.name, min_idle)
            if entries:
                log.info("deliveries_taken_over", count=len(entries))
                await self.dispatch(entries)

    async def _maintenance_loop(self) -> None:
        while not self._stopping:
            await self.store.trim(every=MAINTENANCE_EVERY)
            await asyncio.sleep(MAINTENANCE_EVERY)

    async def _free_slots(self) -> int:
        while len(self._tasks) + self._held_count() >= self.concurrency:
            self._slot_free.clear()
            await self._slot_free.wait()
        return self.concurrency - len(self._tasks) - self._held_count()

    def _held_count(self) -> int:
        return sum(map(len, self._held.values()))

    # ---- one pass, for tests and the CLI ------------------------------------------------

    async def run_once(self) -> int:
        """Promote due retries, take over stale work, attempt everything queued; wait for it."""
        await self.relay.subs.refresh()
        await self.store.promote_due()
        started = 0
        entries = await self.store.reclaim(self.name, int(self.settings.claim_timeout * 1000))
        while True:
            if entries:
                started += len(entries)
                await self.dispatch(entries)
            entries = await self.store.read_queue(self.name, 200, 0)
            if not entries:
                break
        while self._tasks:  # a finished attempt starts the next held one
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return started

    # ---- attempts -----------------------------------------------------------------------

    async def dispatch(self, entries: list[QueueEntry]) -> None:
        started: set[str] = set()
        try:
            await self._dispatch(entries, started)
        except asyncio.CancelledError:
            # Stopping mid-dispatch: hand back what was claimed and not started, rather than
            # leave it to wait RELAY_CLAIM_TIMEOUT for a takeover. A started attempt hands back
            # its own; handing back one already settled or parked is harmless.
            rest = [(e, clock.now_ms()) for e in entries if e.entry_id not in started]
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.defer(rest))
            raise

    async def _dispatch(self, entries: list[QueueEntry], started: set[str]) -> None:
        version, loaded = await self.store.load_for_attempt(entries)
        await self.relay.subs.refresh(version)
        parked: list[tuple[QueueEntry, int]] = []
        for entry, (delivery, body) in zip(entries, loaded, strict=True):
            if (delivery is None or body is None or delivery.status is not DeliveryStatus.PENDING
                    or delivery.generation != entry.generation):
                # Expired, settled, or superseded by a requeue: release the entry, send nothing.
                await self.store.finish(entry, sub_id=delivery.subscription_id if delivery
                                        else "-", outcome=Outcome.CANCEL, attempt=None)
                continue
            sub = self.relay.subs.subs.get(delivery.subscription_id)
            if sub is None or sub.status is not SubscriptionStatus.ENABLED:
                await self.store.finish(entry, sub_id=delivery.subscription_id,
                                        outcome=Outcome.CANCEL, attempt=None)
                continue
            started.add(entry.entry_id)
            if self._by_sub[sub.id] >= self.per_subscription:
                if self._may_hold(sub.id):
                    self._held.setdefault(sub.id, deque()).append((entry, delivery, body))
                    continue
                # This subscriber is slow: park the delivery instead of taking a slot every
                # other subscriber needs. No attempt is counted.
                started.discard(entry.entry_id)
                parked.append((entry, int(self._park_due(sub.id) * 1000)))
                continue
            self._start(entry, delivery, body, sub)
        if parked:
            await self.store.defer(parked)
            self._note_retry(min(due for _, due in parked) / 1000)

    def _start(self, entry: QueueEntry, delivery: Delivery, body: str,
               sub: Subscription) -> None:
        self._by_sub[sub.id] += 1
        self._busy_since.setdefault(sub.id, clock.now())
        task = asyncio.create_task(self._attempt(entry, delivery, body, sub))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _may_hold(self, sub_id: str) -> bool:
        """Hold one more for `sub_id` when its slots will take it within HOLD_WAIT: sooner
        than a parked delivery could come back. Until its attempt time is known, up to as many
        as it has slots. What the worker holds counts against its concurrency, so the reads
        stop before it holds more than that."""
        held = len(self._held.get(sub_id, ()))
        seconds = self._attempt_seconds.get(sub_id)
        if seconds is None:
            return held < self.per_subscription
        return (held + 1) * seconds / self.per_subscription < HOLD_WAIT

    def _start_held(self, sub_id: str) -> None:
        """A slot of `sub_id` is free: start its next held delivery, if any."""
        held = self._held.get(sub_id)
        if not held or self._stopping:
            return
        entry, delivery, body = held.popleft()
        if not held:
            del self._held[sub_id]
        sub = self.relay.subs.subs.get(sub_id)
        if sub is None or sub.status is not SubscriptionStatus.ENABLED:
            # Disabled or deleted while it waited: settle it and whatever else is held for it.
            rest = [entry] + [e for e, _, _ in self._held.pop(sub_id, ())]
            task = asyncio.create_task(self._cancel_held(rest, sub_id))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            return
        self._start(entry, delivery, body, sub)

    async def _cancel_held(self, entries: list[QueueEntry], sub_id: str) -> None:
        with contextlib.suppress(StorageUnavailable):  # taken over after the claim timeout
            for entry in entries:
                await self.store.finish(entry, sub_id=sub_id, outcome=Outcome.CANCEL,
                                        attempt=None)

    def _park_due(self, sub_id: str) -> float:
        """When a parked delivery is read again: one slot-time after the one parked before it.

        Parking them all for a fixed second would have a hung subscriber's whole backlog read,
        loaded and parked again every second, taking the worker from everyone else; spaced by
        the time a slot takes to free, they come back about as fast as they can be attempted.
        """
        now = clock.now()
        # Until one of its attempts has ended, an attempt takes at least as long as it has been
        # busy: a hung subscriber's backlog is spread out before its first timeout, too.
        seconds = self._attempt_seconds.get(sub_id) or max(
            PARK_MIN, now - self._busy_since.get(sub_id, now))
        slot = seconds / self.per_subscription
        due = max(self._park_next.get(sub_id, 0.0), now + PARK_MIN)
        if due > now + PARK_MAX:
            # A backlog longer than the horizon comes back spread evenly across it.
            return now + random.uniform(PARK_MIN, PARK_MAX)
        self._park_next[sub_id] = due + slot
        return due

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()

    def _note_retry(self, due: float) -> None:
        if due < self._next_retry_check:
            self._wake_retries.set()

    async def _attempt(
        self, entry: QueueEntry, delivery: Delivery, body: str, sub: Subscription
    ) -> None:
        # Every line logged during this attempt carries these ids (the task has its own context).
        structlog.contextvars.bind_contextvars(
            event_id=entry.event_id, delivery_id=entry.delivery_id, subscription_id=sub.id,
            run_id=delivery.subject,
        )
        try:
            await self._attempt_inner(entry, delivery, body, sub)
        except asyncio.CancelledError:
            # Shutting down mid-attempt: hand the delivery back rather than wait for a takeover.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.defer([(entry, clock.now_ms())]))
            raise
        except StorageUnavailable as exc:
            # The entry stays claimed by this consumer and is taken over after the claim timeout.
            log.warning("delivery_not_settled", error=str(exc))
        except Exception:
            # A bug must not pass in silence; the entry is taken over like an unsettled one.
            log.exception("delivery_attempt_crashed")
        finally:
            self._by_sub[sub.id] -= 1
            if self._by_sub[sub.id] <= 0:
                del self._by_sub[sub.id]
                self._busy_since.pop(sub.id, None)
            self._start_held(sub.id)

    async def _attempt_inner(
        self, entry: QueueEntry, delivery: Delivery, body: str, sub: Subscription
    ) -> None:
        number = delivery.attempts + 1
        in_cycle = number - delivery.cycle_base
        now = clock.now()
        timestamp = int(now)
        payload = body.encode()
        keys = [secret_bytes(s) for s in sub.signing_keys(now)]
        headers = {
            "webhook-id": entry.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(entry.event_id, timestamp, payload, keys),
            "content-type": "application/json",
        }
        answer = await self.outbound.post(sub.url, payload, headers, self.settings.delivery_timeout)
        seconds = answer.duration_ms / 1000
        average = self._attempt_seconds.get(sub.id, seconds)
        self._attempt_seconds[sub.id] = average + (seconds - average) * 0.2
        outcome = classify(answer)
        due_ms = 0
        if outcome is None:
            delay = backoff.next_delay(in_cycle, self.settings.retry_schedule,
                                       self.settings.retry_jitter)
            if delay is not None and answer.status in (429, 503):
                hinted = backoff.parse_retry_after(answer.retry_after, clock.now())
                delay = hinted if hinted is not None else delay
            if delay is None:
                outcome = Outcome.DEAD
            else:
                outcome = Outcome.RETRY
                due_ms = clock.now_ms() + int(delay * 1000)
        attempt = {
            "attempt": number,
            "at": clock.iso(now),
            "status_code": answer.status,
            "duration_ms": answer.duration_ms,
            "error": failure_text(answer),
            "response_body": answer.body,
        }
        status = await self.store.finish(entry, sub_id=sub.id, outcome=outcome, attempt=attempt,
                                         next_due_ms=due_ms)
        if due_ms:
            self._note_retry(due_ms / 1000)
        if status == DeliveryStatus.CANCELLED:
            # The subscription was just disabled (410, or failing too long): cancel the rest now
            # rather than leave them pending until each comes due.
            await self.store.cancel_pending(sub.id)
        metrics.labelled(metrics.DELIVERIES, outcome).inc()
        metrics.DELIVERY_SECONDS.observe(answer.duration_ms / 1000)
        if outcome is Outcome.OK and number == 1:
            # The delivery was created with its event, so its creation time is the event's.
            created = delivery.created_ms / 1000
            metrics.END_TO_END_SECONDS.observe(max(clock.now() - created, 0.0))
        log.info(
            "delivery_attempt", attempt=number, status_code=answer.status,
            duration_ms=answer.duration_ms, outcome=outcome, delivery_status=status,
            error=attempt["error"],
        )
