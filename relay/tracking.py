"""Tracked-run operations for the API and CLI: start, show, list and stop tracking runs."""

from __future__ import annotations

from typing import Any

import structlog

from relay import clock
from relay.config import Settings
from relay.errors import NotFound, ValidationFailed
from relay.providers import PollProvider, names, poll_providers, spec
from relay.runs import TrackedRun
from relay.service import Relay

log = structlog.get_logger("relay.tracking")


class Tracking:
    """Start, show and stop tracking runs."""

    def __init__(self, relay: Relay, providers: dict[str, PollProvider] | None = None) -> None:
        self.relay = relay
        self.store = relay.store
        self.settings: Settings = relay.settings
        self.providers = poll_providers(self.settings) if providers is None else providers

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
        if provider not in names():
            raise ValidationFailed("validation_error", "unknown provider", details=[
                {"field": "provider", "problem": f"must be one of {list(names())}"}])
        if provider not in self.providers:
            raise ValidationFailed(
                "provider_not_configured",
                f"{spec(provider).env}_API_KEY is not set, so relay cannot poll {provider}",
                details=[{"field": "provider", "problem": "no API key is configured"}])
        if spec(provider).needs_technique and not technique_id:
            raise ValidationFailed("validation_error", f"a {provider} run needs its technique id",
                                   details=[{"field": "technique_id",
                                             "problem": f"is required for {provider}"}])

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
