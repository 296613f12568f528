"""Ingest: a verified callback becomes a stored event; one without outputs reads its run first."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import structlog

from relay import clock, ids
from relay.models import Event
from relay.outbound import ProviderClient
from relay.providers import CallbackContext, CallbackProvider, PollProvider, spec
from relay.providers.base import merge_metadata
from relay.providers.reading import read_run, spacing_ms
from relay.runs import TrackedRun, pending_callback, run_event
from relay.service import Accepted, Relay
from relay.signing import CallbackClaims
from relay.store import Reply

log = structlog.get_logger("relay.ingest")

# A callback that reads its run waits at most this long for a request slot and the answer;
# beyond that the poller finishes the run (the callback is answered at once either way).
CALLBACK_FETCH_WAIT = 1.0
CALLBACK_FETCH_DEADLINE = 10.0


class Ingest:
    """Take in verified callbacks; `pollers` and `client` read runs for those that need it."""

    def __init__(self, relay: Relay, client: ProviderClient | None,
                 pollers: dict[str, PollProvider]) -> None:
        self.relay = relay
        self.store = relay.store
        self.client = client
        self.pollers = pollers

    async def take(self, provider: CallbackProvider, body: bytes,
                   claims: CallbackClaims | None, observed_at: float) -> tuple[Accepted, Event]:
        """Normalize and store a verified callback: (the answer, the event it reported)."""
        event = provider.normalize(body, CallbackContext(
            observed_at=observed_at,
            channels=claims.channels if claims else (),
            metadata=claims.metadata if claims else None,
            claims=claims,
        ))
        if not provider.reads_run:
            return await self.relay.accept(event), event
        return await self._read_first(provider, event, body, claims, observed_at)

    async def _read_first(self, provider: CallbackProvider, event: Event, body: bytes,
                          claims: CallbackClaims | None, observed_at: float
                          ) -> tuple[Accepted, Event]:
        """Read the run at once for its outputs, within the provider's shared budget; when it
        cannot be read yet, keep the callback on the tracked run for the poller."""
        name = provider.name
        delivery = provider.delivery_id(body)
        seen = await self.store.delivery_event(name, delivery) if delivery else None
        if seen is not None:
            return Accepted(seen, duplicate=True), event
        h = await self.store.get_run(name, event.subject)
        run = TrackedRun.from_hash(h) if h else None
        attached = claims or CallbackClaims(name)
        channels = list(dict.fromkeys([*(run.channels if run else []), *attached.channels]))
        metadata = merge_metadata(run.metadata if run else None, attached.metadata)
        technique = (run.technique_id if run else None) or attached.technique_id
        event = replace(event, channels=channels, metadata=metadata)
        adapter = self.pollers.get(name)
        if adapter is None or self.client is None or (spec(name).needs_technique
                                                      and technique is None):
            # Nothing to read the run with: the event is what the callback says, no outputs.
            accepted = await self.relay.accept(event)
        else:
            view = TrackedRun(provider=name, run_id=event.subject,
                              since=run.since if run else observed_at, technique_id=technique,
                              channels=channels, metadata=metadata)
            read = await self._read_now(adapter, view, observed_at)
            if read is not None:
                event = read
                accepted = await self.relay.accept(event)
            elif name not in await self.store.live_pollers():
                # No worker would ever finish it: the callback's word is all there will be.
                accepted = await self.relay.accept(event)
            else:
                accepted = await self._leave_for_poller(view, event, body, delivery)
        if delivery:
            await self.store.remember_delivery(name, delivery, accepted.event_id)
        return accepted, event

    async def _read_now(self, adapter: PollProvider, run: TrackedRun, observed_at: float
                        ) -> Event | None:
        """The terminal event with outputs, if the run can be read within the budget now."""
        assert self.client is not None
        slot, granted = await self.store.reserve_slot(
            run.provider, spacing_ms(self.relay.settings, run.provider),
            int(CALLBACK_FETCH_WAIT * 1000))
        if not granted:
            return None
        await asyncio.sleep(max(slot - clock.now(), 0.0))
        result = await read_run(self.client, adapter, run.run_id, run.technique_id,
                                CALLBACK_FETCH_DEADLINE)
        if result.kind != "ok" or result.observation is None or not result.observation.terminal:
            log.info("callback_run_not_readable", provider=run.provider, run_id=run.run_id,
                     kind=result.kind, status_code=result.status_code, error=result.error)
            return None
        return run_event(run, result.observation, raw=result.raw, observed_at=observed_at,
                         wraps_outputs=adapter.wraps_outputs, source="callback",
                         event_id=ids.event_id())

    async def _leave_for_poller(self, run: TrackedRun, event: Event, body: bytes,
                                delivery: str | None) -> Accepted:
        fields = run.new_fields()
        fields["np"] = str(clock.now_ms())
        code, event_id = await self.store.callback_pending(
            run.provider, run.run_id, event_id=event.id, fields=fields,
            callback=pending_callback(event, body, delivery))
        if code == Reply.STORED:
            log.info("callback_pending", provider=run.provider, run_id=run.run_id,
                     event_id=event_id,
                     note="the run could not be read yet; the poller will finish it")
        return Accepted(event_id, duplicate=code == Reply.DUPLICATE)

