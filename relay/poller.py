"""The poll scheduler: lease due runs from Redis, read them within the provider's shared
budget, and turn what changed into `run.*` events."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import structlog

from relay import backoff, clock, metrics
from relay.config import Settings
from relay.errors import StorageUnavailable
from relay.ids import consumer_name
from relay.loops import finish, keep_running, shut_down, wait_event
from relay.models import Event
from relay.outbound import ProviderClient
from relay.providers import PollProvider
from relay.providers.reading import PollResult, read_run, spacing_ms
from relay.runs import TrackedRun, callback_event, expired_event, max_age_event, run_event
from relay.service import Relay
from relay.store import Reply

log = structlog.get_logger("relay.poller")

# Longest an idle poller sleeps; a newly tracked run rings the doorbell and wakes it sooner.
IDLE_SLEEP = 60.0
# Runs leased per provider per claim.
CLAIM_BATCH = 200
# Between two claims that did not fill a batch; bounds claim round trips at high load.
CLAIM_TICK = 0.02
# After this many 404s in a row a run ends with run.expired (the provider does not know it).
NOT_FOUND_LIMIT = 3
# Polls that may fail to confirm a FLORA callback before it is emitted on its own word.
CALLBACK_CONFIRM_POLLS = 5


@dataclass
class Decision:
    """What a poll changes: the run's fields, the event to emit, when to poll next."""

    fields: dict[str, str]
    event: Event | None = None
    next_poll: float = 0.0
    pause_until: float | None = None  # the provider's whole budget waits (429)
    log_fields: dict[str, Any] = field(default_factory=dict)


def _error(code: str, message: str, status: int | None = None) -> str:
    return json.dumps({"code": code, "message": message, "status_code": status},
                      separators=(",", ":"))


def decide(run: TrackedRun, result: PollResult, *, now: float, settings: Settings,
           wraps_outputs: bool) -> Decision:
    """Pure: from a run and what its poll got, the new fields, event and next poll time."""
    low, high = settings.poll_min_interval, settings.poll_max_interval
    fields = {"lp": str(int(now * 1000)), "n": str(run.polls + 1)}
    changed = failed = False
    interval: float | None = None
    d = Decision(fields)
    pending = run.pending_event is not None
    if result.kind == "ok":
        obs = result.observation
        assert obs is not None
        fields.update(nf="0", e="")
        if obs.outputs and run.outputs_seen is None:
            fields["os"] = str(int(now * 1000))
        if obs.terminal:
            d.event = run_event(run, obs, raw=result.raw, observed_at=now,
                                wraps_outputs=wraps_outputs,
                                source="callback" if pending else "poll",
                                event_id=run.pending_event)
            fields["s"] = obs.status
            return d
        changed = obs.status != run.status or obs.progress != run.progress
        fields["s"] = obs.status
        fields["pg"] = "" if obs.progress is None else repr(obs.progress)
        if changed:
            d.event = run_event(run, obs, raw=result.raw, observed_at=now,
                                wraps_outputs=wraps_outputs)
    elif result.kind == "not_found":
        misses = run.not_found + 1
        fields.update(nf=str(misses), e=_error("not_found", "the provider does not know this "
                                                "run", result.status_code))
        if misses >= NOT_FOUND_LIMIT and not pending:
            d.event = expired_event(run, observed_at=now, error={
                "code": "not_found", "message": f"the provider answered {result.status_code} "
                f"{misses} times in a row", "stage": "relay"})
            return d
        failed = True
    elif result.kind == "auth":
        fields["e"] = _error("provider_auth", f"{result.error}: check the provider's API key",
                             result.status_code)
        d.log_fields = {"status_code": result.status_code}
        interval = high
    elif result.kind == "rate_limited":
        fields["e"] = _error("rate_limited", "the provider answered 429", 429)
        # Never sooner than the minimum delay, whatever Retry-After says (0 would spin).
        wait = None if result.retry_after is None else max(result.retry_after, low)
        if wait is None:
            wait = backoff.next_poll_interval(run.interval, changed=False, failed=True,
                                              low=low, high=high)
            fields["iv"] = str(int(wait * 1000))
        d.pause_until = now + wait
        d.next_poll = now + wait
    else:  # retry, client_error
        fields["e"] = _error("provider_unavailable" if result.kind == "retry"
                             else "provider_refused", result.error or "", result.status_code)
        failed = True
        if result.kind == "client_error":
            interval = high
    if pending:
        fields["pn"] = str(run.callback_polls + 1)
        gave_up = run.callback_polls + 1 >= CALLBACK_CONFIRM_POLLS or (
            result.kind == "not_found" and run.not_found + 1 >= NOT_FOUND_LIMIT)
        if gave_up:
            d.event = callback_event(run, now)
            return d
    if not d.next_poll:
        if interval is None:
            interval = backoff.next_poll_interval(run.interval, changed=changed, failed=failed,
                                                  low=low, high=high)
        fields["iv"] = str(int(interval * 1000))
        d.next_poll = now + backoff.jittered(interval, low=low, high=high)
    d.next_poll = min(d.next_poll, run.since + settings.poll_max_age)
    return d


class Poller:
    """Polls the tracked runs of the configured providers; any number may run at once."""

    def __init__(self, relay: Relay, providers: dict[str, PollProvider],
                 client: ProviderClient, *, name: str | None = None,
                 concurrency: int = 256) -> None:
        self.relay = relay
        self.store = relay.store
        self.settings = relay.settings
        self.providers = providers
        self.client = client
        self.name = name or consumer_name()
        self.concurrency = concurrency
        claim = self.settings.claim_timeout
        self.lease_ms = int(claim * 1000)
        # The lease must outlast the wait for a slot plus the request, whatever the timeout.
        self.horizon = min(1.0, claim * 0.25)
        self.deadline = max(0.2, min(30.0, claim * 0.5))
        self.spacing = {name: spacing_ms(self.settings, name) for name in providers}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._wake_at = 0.0
        self._stopping = False

    # ---- loops --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace: float = 18.0) -> None:
        loop = asyncio.create_task(self._guarded(), name="poller")
        log.info("poller_started", consumer=self.name, providers=sorted(self.providers))
        await shut_down(stop, [loop], grace=grace, on_stop=self._stop,
                        interrupt=self.store.interrupt_reads, drain=self._drain)
        log.info("poller_stopped", consumer=self.name)

    def _stop(self) -> None:
        self._stopping = True

    async def _drain(self, grace: float) -> None:
        # Unfinished polls keep their lease and are taken over after RELAY_CLAIM_TIMEOUT.
        await finish(self._tasks, grace)

    async def _guarded(self) -> None:
        await keep_running(self._loop, "poller", lambda: self._stopping)

    async def _loop(self) -> None:
        # Checked each pass too: a cancellation that redis-py swallows must not keep it going.
        while not self._stopping:
            free = self.concurrency - len(self._tasks)
            if free <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            _, full, wake_at = await self.claim(free)
            if full:
                continue
            now = clock.now()
            self._wake_at = wake_at
            wait = max(wake_at - now, CLAIM_TICK)
            if self._tasks or wait < 1.0:
                # Polls in flight reschedule runs and may make one due sooner: wait locally,
                # and look again within a second for runs other processes tracked. A short
                # wait (the next budget slot) is timed locally too: BLPOP's timeout is only
                # as fine as Redis' clock tick, and a worker waking late there lost every
                # freed slot to one that woke on time.
                self._wake.clear()
                await wait_event(self._wake, min(wait, 1.0))
            else:
                await self.store.wait_for_runs(min(wait, IDLE_SLEEP))

    async def claim(self, free: int) -> tuple[int, bool, float]:
        """Lease what is due and start polling it: (runs started, a batch came back full,
        when to look again)."""
        per = max(1, min(CLAIM_BATCH, free // max(len(self.providers), 1)))
        wants = {name: (per, self.spacing[name]) for name in self.providers}
        claims = await self.store.claim_runs(wants, token=self.name, lease_ms=self.lease_ms,
                                             horizon_ms=int(self.horizon * 1000))
        now = clock.now()
        wake_at = now + IDLE_SLEEP
        started, full = 0, False
        for provider, claim in claims.items():
            for slot, fields in claim.runs:
                task = asyncio.create_task(self._poll(provider, fields, slot))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
                started += 1
            full |= len(claim.runs) >= per
            if claim.next_due is not None:
                at = claim.next_due
                if self.spacing[provider] and at <= now:
                    # Due now but out of budget: look again when the next slot can be had.
                    at = max(at, claim.next_slot - self.horizon)
                wake_at = min(wake_at, at)
        return started, full, wake_at

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) == self.concurrency - 1:
            self._wake.set()

    # ---- one pass, for tests ------------------------------------------------------------

    async def run_once(self) -> int:
        """Poll every run that is due now (within the budget) and wait for the polls."""
        started = 0
        while True:
            count, full, _ = await self.claim(self.concurrency)
            started += count
            if not full:
                break
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return started

    # ---- one poll -----------------------------------------------------------------------

    async def _poll(self, provider: str, fields: dict[str, str], slot: float) -> None:
        # Log lines name the run themselves: binding context variables per poll costs more.
        run_id = fields.get("r", "")
        try:
            run = TrackedRun.from_hash(fields)
            adapter = self.providers[provider]
            now = clock.now()
            if now >= run.since + self.settings.poll_max_age:
                await self._expire(run)
                return
            if slot > now:
                await asyncio.sleep(slot - now)
            sent = clock.now()
            if run.next_poll:
                metrics.POLL_LAG.observe(max(sent - run.next_poll, 0.0))
            result = await read_run(self.client, adapter, run.run_id, run.technique_id,
                                    self.deadline)
            metrics.labelled(metrics.POLLS, provider, result.kind).inc()
            decision = decide(run, result, now=clock.now(), settings=self.settings,
                              wraps_outputs=adapter.wraps_outputs)
            if decision.pause_until is not None:
                await self.store.pause_provider(provider, decision.pause_until)
            await self._settle(run, decision)
            if result.kind != "ok":
                log.log(30 if result.kind == "auth" else 20, "poll_failed", provider=provider,
                        run_id=run_id, kind=result.kind, status_code=result.status_code,
                        error=result.error)
        except StorageUnavailable as exc:
            # The lease stays; the run is polled again once it runs out.
            log.warning("poll_not_settled", provider=provider, run_id=run_id, error=str(exc))
        except Exception:
            log.exception("poll_crashed", provider=provider, run_id=run_id)

    async def _expire(self, run: TrackedRun) -> None:
        now = clock.now()
        await self._settle(run, Decision({"lp": str(int(now * 1000))},
                                         max_age_event(run, observed_at=now)))

    async def _settle(self, run: TrackedRun, decision: Decision) -> None:
        async def write(w: Any) -> tuple[Reply, str]:
            return await self.store.settle_run(
                run.provider, run.run_id, token=self.name,
                next_poll_ms=int(decision.next_poll * 1000), fields=decision.fields, event=w)

        event = decision.event
        if event is None:
            code, _ = await write(None)
        else:
            code, value = await self.relay.store_matched(event, write=write)
            if code == Reply.STORED:
                metrics.labelled(metrics.EVENTS, run.provider, event.event, event.source).inc()
                log.info("run_event", provider=run.provider, run_id=run.run_id,
                         event_id=value, event_type=event.event, status=event.status)
        if (decision.next_poll and code in (Reply.STORED, Reply.NO_EVENT)
                and decision.next_poll < self._wake_at):
            self._wake.set()
        if code == Reply.LEASE_LOST:
            log.info("poll_lease_lost", provider=run.provider, run_id=run.run_id,
                     note="another worker took the run over, or it was untracked; this "
                          "poll's result is dropped")

