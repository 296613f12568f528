"""Tracked runs: the record relay keeps per polled run, and the events synthesized from polls."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from relay import clock, ids
from relay.models import STATUS_TO_EVENT, Event
from relay.providers.base import Observation


def _ms(value: float | None) -> str:
    return "" if value is None else str(int(value * 1000))


def _s(value: str | None) -> float | None:
    return int(value) / 1000 if value else None


class RunState(StrEnum):
    """A tracked run's state; stored are ACTIVE and FINISHED, STALLED is shown for an active run
    that no live worker can poll."""

    ACTIVE = "active"
    STALLED = "stalled"
    FINISHED = "finished"


# What `GET /v1/runs?state=` and `relay runs list --state` filter on (stalled runs are active).
STATE_FILTERS = (RunState.ACTIVE.value, RunState.FINISHED.value)


@dataclass
class TrackedRun:
    """One run on the poll schedule. Stored as a small Redis hash with short field names
    (a tracked run must cost well under 1 KiB of Redis)."""

    provider: str
    run_id: str
    since: float
    technique_id: str | None = None
    channels: list[str] = field(default_factory=list)
    metadata: Any = None
    state: str = RunState.ACTIVE
    status: str | None = None
    progress: float | None = None
    last_polled: float | None = None
    next_poll: float | None = None
    polls: int = 0
    interval: float = 0.0
    not_found: int = 0
    last_error: dict[str, Any] | None = None
    outputs_seen: float | None = None
    # A FLORA callback that came before its run could be read: the event id already answered,
    # what the callback said, and how many polls have tried to confirm it since.
    pending_event: str | None = None
    pending_callback: dict[str, Any] | None = None
    callback_polls: int = 0
    finished_at: float | None = None

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> TrackedRun:
        return cls(
            provider=h["p"], run_id=h["r"], since=int(h["since"]) / 1000,
            technique_id=h.get("t") or None,
            channels=json.loads(h["c"]) if h.get("c") else [],
            metadata=json.loads(h["m"]) if h.get("m") else None,
            state=h.get("st", RunState.ACTIVE), status=h.get("s") or None,
            progress=float(h["pg"]) if h.get("pg") else None,
            last_polled=_s(h.get("lp")), next_poll=_s(h.get("np")),
            polls=int(h.get("n") or 0), interval=(_s(h.get("iv")) or 0.0),
            not_found=int(h.get("nf") or 0),
            last_error=json.loads(h["e"]) if h.get("e") else None,
            outputs_seen=_s(h.get("os")), pending_event=h.get("pe") or None,
            pending_callback=json.loads(h["pcb"]) if h.get("pcb") else None,
            callback_polls=int(h.get("pn") or 0), finished_at=_s(h.get("fin")),
        )

    def new_fields(self) -> dict[str, str]:
        """The hash of a newly tracked run (empty fields are left out to save memory)."""
        out = {"p": self.provider, "r": self.run_id, "since": _ms(self.since),
               "st": RunState.ACTIVE.value, "np": _ms(self.next_poll), "n": "0"}
        if self.technique_id:
            out["t"] = self.technique_id
        if self.channels:
            out["c"] = json.dumps(self.channels, separators=(",", ":"))
        if self.metadata is not None:
            out["m"] = json.dumps(self.metadata, separators=(",", ":"))
        return out

    def view(self, events: list[str], *, pollable: bool = True) -> dict[str, Any]:
        """The API's TrackedRun (CONTRACT 4.2, 7.4); an active run that no live worker can
        poll (`pollable` False) is `stalled`."""
        active = self.state == RunState.ACTIVE and pollable
        return {
            "provider": self.provider,
            "run_id": self.run_id,
            "technique_id": self.technique_id,
            "status": self.status,
            "state": RunState.STALLED if self.state == RunState.ACTIVE and not pollable
            else self.state,
            "progress": self.progress,
            "tracked_since": clock.iso(self.since),
            "last_polled_at": clock.iso(self.last_polled) if self.last_polled else None,
            "next_poll_at": clock.iso(self.next_poll) if active and self.next_poll else None,
            "polls": self.polls,
            "last_error": self.last_error,
            "channels": self.channels,
            "metadata": self.metadata,
            "finished_at": clock.iso(self.finished_at) if self.finished_at else None,
            "events": events,
        }


# ---- events synthesized from what a poll saw (pure) -----------------------------------------


def run_event(run: TrackedRun, obs: Observation, *, raw: bytes, observed_at: float,
              wraps_outputs: bool, source: str = "poll", event_id: str | None = None) -> Event:
    """The terminal event, or `run.updated`, for an observation; Runflow's shape throughout.

    Where the provider gives no times (BetterPrompt), created_at is when relay started
    tracking and completed_at when it first saw the end, so duration_ms is approximate.
    """
    terminal = obs.terminal
    own_times = obs.created_at is None
    created = obs.created_at or clock.iso(run.since)
    completed = obs.completed_at or (clock.iso(observed_at) if terminal else None)
    duration = obs.duration_ms
    if duration is None and terminal and own_times:
        duration = max(0, int((observed_at - run.since) * 1000))
    if obs.status in ("failed", "canceled"):
        output: Any = None
    elif wraps_outputs:
        output = {"outputs": obs.outputs or []} if terminal or obs.outputs else None
    else:
        output = obs.outputs
    extra: dict[str, Any] = {}
    if obs.progress is not None:
        extra["progress"] = obs.progress
    if obs.cost is not None:
        extra["cost"] = obs.cost
    return Event(
        id=event_id or ids.event_id(),
        event=STATUS_TO_EVENT[obs.status] if terminal else "run.updated",
        provider=run.provider, run_id=run.run_id, status=obs.status, output=output,
        error=obs.error, duration_ms=duration if terminal else None, created_at=created,
        completed_at=completed, metadata=run.metadata, channels=list(run.channels),
        source=source, observed_at=clock.iso(observed_at), provider_payload_raw=raw or b"null",
        extra=extra,
    )


def pending_callback(event: Event, raw: bytes, delivery_id: str | None) -> dict[str, Any]:
    """What a tracked run keeps of a callback that reported its end before the run could be
    read (FLORA's carry no outputs): enough to emit it on its own word (`callback_event`)."""
    return {"d": delivery_id or "", "s": event.status, "e": event.error,
            "c": event.completed_at, "raw": raw.decode()}


def callback_event(run: TrackedRun, observed_at: float) -> Event:
    """The terminal event of a run's pending callback on the callback's own word, without
    outputs, under the event id its callback was answered with."""
    pcb = run.pending_callback or {}
    status = str(pcb.get("s") or "succeeded")
    return Event(
        id=run.pending_event or ids.event_id(), event=STATUS_TO_EVENT[status],
        provider=run.provider, run_id=run.run_id, status=status, output=None,
        error=pcb.get("e") if status == "failed" else None, duration_ms=None, created_at=None,
        completed_at=pcb.get("c"), metadata=run.metadata, channels=list(run.channels),
        source="callback", observed_at=clock.iso(observed_at),
        provider_payload_raw=str(pcb.get("raw", "null")).encode(),
    )


def max_age_event(run: TrackedRun, *, observed_at: float) -> Event:
    """What ends a run at RELAY_POLL_MAX_AGE: its pending callback if it has one, else
    `run.expired`."""
    if run.pending_event is not None:
        return callback_event(run, observed_at)
    return expired_event(run, observed_at=observed_at, error={
        "code": "max_age", "message": "tracking gave up after RELAY_POLL_MAX_AGE",
        "stage": "relay"})


def expired_event(run: TrackedRun, *, observed_at: float, error: dict[str, Any]) -> Event:
    """`run.expired`: relay stopped tracking without seeing the run end."""
    return Event(
        id=ids.event_id(), event="run.expired", provider=run.provider, run_id=run.run_id,
        status=run.status, output=None, error=error, duration_ms=None,
        created_at=clock.iso(run.since), completed_at=None, metadata=run.metadata,
        channels=list(run.channels), source="poll", observed_at=clock.iso(observed_at),
    )
