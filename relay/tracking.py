"""Tracked-run operations for the API and CLI: start, show, list and stop tracking runs."""

from __future__ import annotations

from typing import Any

import structlog

from relay import clock, metrics
from relay.config import Settings
from relay.errors import NotFound, ValidationFailed
from relay.providers import names, spec
from relay.runs import RunState, TrackedRun
from relay.service import Relay

log = structlog.get_logger("relay.tracking")


class Tracking:
    """Start, show and stop tracking runs; whether a run can be polled is the workers' word
    (their heartbeats), not this process's configuration."""

    # `providers` is no longer read: the command line still passes it (to be dropped there).
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.store = relay.store
        self.settings: Settings = relay.settings

    # ---- the API ------------------------------------------------------------------------

    async def track(self, provider: str, run_id: str, *, technique_id: str | None = None,
                    channels: list[str] | None = None, metadata: Any = None
                    ) -> tuple[dict[str, Any], bool]:
        """Start polling a run; (its view, True) when new, (the existing run, False) else."""
        await self._check(provider, technique_id)
        now = clock.now()
        run = TrackedRun(provider=provider, run_id=run_id, since=now, technique_id=technique_id,
                         channels=channels or [], metadata=metadata,
                         next_poll=now + self.settings.poll_min_interval)
        created = await self.store.track_run(provider, run_id, run.new_fields(),
                                             int((run.next_poll or now) * 1000))
        if created:
            log.info("run_tracked", provider=provider, run_id=run_id)
        return await self.show(provider, run_id), created

    async def _check(self, provider: str, technique_id: str | None) -> None:
        if provider not in names():
            raise ValidationFailed("validation_error", "unknown provider", details=[
                {"field": "provider", "problem": f"must be one of {list(names())}"}])
        if provider not in await self.store.live_pollers():
            # The caller's own environment proves nothing: the workers are the ones to poll.
            raise ValidationFailed(
                "provider_not_configured",
                f"no live worker polls {provider}: set {spec(provider).env}_API_KEY where the "
                f"workers run", details=[{"field": "provider",
                                          "problem": "no live worker polls this provider"}])
        if spec(provider).needs_technique and not technique_id:
            raise ValidationFailed("validation_error", f"a {provider} run needs its technique id",
                                   details=[{"field": "technique_id",
                                             "problem": f"is required for {provider}"}])

    async def show(self, provider: str, run_id: str) -> dict[str, Any]:
        h = await self.store.get_run(provider, run_id)
        if h is None:
            raise NotFound(f"{provider} run {run_id} is not tracked")
        run = TrackedRun.from_hash(h)
        pollable = run.state != RunState.ACTIVE or provider in await self.store.live_pollers()
        return run.view(await self.store.run_event_ids(provider, run_id), pollable=pollable)

    async def list(self, *, provider: str | None, state: str | None, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        page = await self.store.list_runs(provider=provider, state=state, limit=limit,
                                          cursor=cursor)
        rows = await self.store.get_runs(page.ids)
        live = await self.store.live_pollers()
        out = []
        for h in rows:
            if h is not None:
                run = TrackedRun.from_hash(h)
                events = await self.store.run_event_ids(run.provider, run.run_id)
                out.append(run.view(events, pollable=run.provider in live))
        return out, page.next_cursor

    async def untrack(self, provider: str, run_id: str) -> None:
        if not await self.store.untrack_run(provider, run_id):
            raise NotFound(f"{provider} run {run_id} is not tracked")

    async def count(self) -> None:
        """Set the gauges of /metrics that Redis knows: runs tracked and stalled by provider,
        live workers."""
        live = await self.store.live_pollers()
        for provider, count in (await self.store.active_runs()).items():
            metrics.TRACKED_RUNS.labels(provider).set(count)
            metrics.STALLED_RUNS.labels(provider).set(0 if provider in live else count)
        metrics.WORKERS.set(await self.store.live_workers())
