"""Tracked-run operations for the API and CLI, and FLORA callbacks, which fetch their run."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from relay import clock, ids
from relay.config import Settings
from relay.errors import NotFound, ValidationFailed
from relay.outbound import ProviderClient
from relay.poller import read_run, spacing_ms
from relay.providers import CallbackContext, PollProvider, poll_providers
from relay.providers.base import merge_metadata
from relay.providers.flora import Flora, event_from_callback
from relay.runs import TrackedRun, run_event
from relay.service import Accepted, Relay
from relay.signing import CallbackClaims
from relay.store import Reply
from relay.store.runs import PROVIDER_NAMES

log = structlog.get_logger("relay.tracking")

# A FLORA callback waits at most this long for a request slot and the provider's answer;
# beyond that the poller finishes the run (the callback is answered at once either way).
CALLBACK_FETCH_WAIT = 1.0
CALLBACK_FETCH_DEADLINE = 10.0


class Tracking:
    """Start, show and stop tracking runs; take in FLORA callbacks."""

    def __init__(self, relay: Relay, client: ProviderClient | None = None,
                 providers: dict[str, PollProvider] | None = None) -> None:
        self.relay = relay
        self.store = relay.store
        self.settings: Settings = relay.settings
        self.providers = poll_providers(self.settings) if providers is None else providers
        self.client = client

    # ---- the API ------------------------------------------------------------------------

    async def track(self, provider: str, run_id: str, *, technique_id: str | None = None,
                    channels: list[str] | None = None, metadata: Any = None
                    ) -> tuple[dict[str, Any], bool]:
        """Start polling a run; (its view, True) when new, (the existing run, False) else."""
        self.check_provider(provider, technique_id)
        now = clock.now()
        run = TrackedRun(provider=provider, run_id=run_id, since=now, technique_id=technique_id,
                         channels=channels or [], metadata=metadata,
                         next_poll=now + self.settings.poll_min_interval)
        created = await self.store.track_run(provider, run_id, run.new_fields(),
                                             int((run.next_poll or now) * 1000))
        if created:
            log.info("run_tracked", provider=provider, run_id=run_id)
        return await self.show(provider, run_id), created

    def check_provider(self, provider: str, technique_id: str | None) -> None:
        if provider not in PROVIDER_NAMES:
            raise ValidationFailed("validation_error", "unknown provider", details=[
                {"field": "provider", "problem": f"must be one of {list(PROVIDER_NAMES)}"}])
        if provider not in self.providers:
            raise ValidationFailed(
                "provider_not_configured",
                f"{provider.upper()}_API_KEY is not set, so relay cannot poll {provider}",
                details=[{"field": "provider", "problem": "no API key is configured"}])
        if provider == "flora" and not technique_id:
            raise ValidationFailed("validation_error", "a FLORA run needs its technique id",
                                   details=[{"field": "technique_id",
                                             "problem": "is required for flora"}])

    async def show(self, provider: str, run_id: str) -> dict[str, Any]:
        h = await self.store.get_run(provider, run_id)
        if h is None:
            raise NotFound(f"{provider} run {run_id} is not tracked")
        return TrackedRun.from_hash(h).view(await self.store.run_event_ids(provider, run_id))

    async def list(self, *, provider: str | None, state: str | None, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        page = await self.store.list_runs(provider=provider, state=state, limit=limit,
                                          cursor=cursor)
        rows = await self.store.get_runs(page.ids)
        out = []
        for h in rows:
            if h is not None:
                run = TrackedRun.from_hash(h)
                out.append(run.view(await self.store.run_event_ids(run.provider, run.run_id)))
        return out, page.next_cursor

    async def untrack(self, provider: str, run_id: str) -> None:
        if not await self.store.untrack_run(provider, run_id):
            raise NotFound(f"{provider} run {run_id} is not tracked")

    # ---- FLORA callbacks ----------------------------------------------------------------

    async def flora_callback(self, flora: Flora, body: bytes, claims: CallbackClaims | None,
                             observed_at: float) -> tuple[Accepted, str, str]:
        """Accept a verified FLORA callback: read the run at once for its outputs, or leave the
        callback for the poller when the run cannot be read yet. Returns (answer, event type,
        run id)."""
        cb = flora.parse(body)
        seen = await self.store.flora_delivery_event(cb.delivery_id)
        if seen is not None:
            kind = "run.completed" if cb.status == "succeeded" else "run.failed"
            return Accepted(seen, duplicate=True), kind, cb.run_id
        h = await self.store.get_run("flora", cb.run_id)
        run = TrackedRun.from_hash(h) if h else None
        attached = claims or CallbackClaims("flora")
        channels = list(dict.fromkeys([*(run.channels if run else []), *attached.channels]))
        metadata = merge_metadata(run.metadata if run else None, attached.metadata)
        technique = (run.technique_id if run else None) or attached.technique_id
        context = CallbackContext(observed_at=observed_at, channels=tuple(channels),
                                  metadata=metadata, claims=claims)
        adapter = self.providers.get("flora")
        if technique is None or adapter is None or self.client is None:
            # Nothing to read the run with: the event is what the callback says, no outputs.
            event = event_from_callback(cb, body, context)
            accepted = await self.relay.accept(event)
        else:
            view = TrackedRun(provider="flora", run_id=cb.run_id,
                              since=run.since if run else observed_at,
                              technique_id=str(technique), channels=channels, metadata=metadata)
            obs_event = await self._read_now(adapter, view, observed_at)
            if obs_event is not None:
                event = obs_event
                accepted = await self.relay.accept(event)
            else:
                event = event_from_callback(cb, body, context)
                fields = view.new_fields()
                fields["np"] = str(clock.now_ms())
                code, event_id = await self.store.callback_pending(
                    "flora", cb.run_id, event_id=event.id, fields=fields, callback={
                        "d": cb.delivery_id, "s": cb.status, "e": cb.error, "c": cb.created_at,
                        "raw": body.decode()})
                accepted = Accepted(event_id, duplicate=code == Reply.DUPLICATE)
                if code == Reply.STORED:
                    log.info("flora_callback_pending", run_id=cb.run_id, event_id=event_id,
                             note="the run could not be read yet; the poller will finish it")
        await self.store.remember_flora_delivery(cb.delivery_id, accepted.event_id)
        return accepted, event.event, cb.run_id

    async def _read_now(self, adapter: PollProvider, run: TrackedRun, observed_at: float
                        ) -> Any:
        """The terminal event with outputs, if the run can be read within the budget now."""
        assert self.client is not None
        slot, granted = await self.store.reserve_slot(
            "flora", spacing_ms(self.settings, "flora"), int(CALLBACK_FETCH_WAIT * 1000))
        if not granted:
            return None
        await asyncio.sleep(max(slot - clock.now(), 0.0))
        result = await read_run(self.client, adapter, run.run_id, run.technique_id,
                                CALLBACK_FETCH_DEADLINE)
        if result.kind != "ok" or result.observation is None or not result.observation.terminal:
            log.info("flora_run_not_readable", run_id=run.run_id, kind=result.kind,
                     status_code=result.status_code, error=result.error)
            return None
        return run_event(run, result.observation, raw=result.raw, observed_at=observed_at,
                         wraps_outputs=True, source="callback", event_id=ids.event_id())
