"""The records relay keeps: events, subscriptions, deliveries and their states."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import translate
from functools import lru_cache
from typing import Any

TERMINAL_EVENTS = {
    "run.completed": "succeeded",
    "run.failed": "failed",
    "run.cancelled": "canceled",
    "run.partial_succeeded": "partial_succeeded",
}
STATUS_TO_EVENT = {status: event for event, status in TERMINAL_EVENTS.items()}
TERMINAL_STATUSES = frozenset(STATUS_TO_EVENT)
# Runflow's batch events are `batch.` and the batch's status (cancelled spelt as in
# run.cancelled); a batch ends with one of these.
TERMINAL_BATCH_EVENTS = frozenset({"batch.succeeded", "batch.failed", "batch.cancelled",
                                   "batch.partial_succeeded"})


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    """Queued for its first attempt or waiting for a retry."""
    SUCCEEDED = "succeeded"
    """A 2xx answer was received."""
    DEAD = "dead"
    """Every attempt of the retry schedule failed."""
    CANCELLED = "cancelled"
    """Its subscription was deleted or disabled before it succeeded."""


class SubscriptionStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass
class Event:
    """One normalized event (CONTRACT section 5), serialized once and delivered as those bytes."""

    id: str
    event: str
    provider: str
    run_id: str | None
    status: str | None
    output: Any
    error: dict[str, Any] | None
    duration_ms: int | None
    created_at: str | None
    completed_at: str | None
    metadata: Any
    channels: list[str]
    source: str
    observed_at: str
    provider_payload_raw: bytes = b"null"
    batch_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        """The run or batch this event is about; dedupe and indexes are keyed on it."""
        return self.run_id or self.batch_id or ""

    def to_json(self) -> bytes:
        """The delivered body; the provider's raw JSON is spliced in byte for byte."""
        doc: dict[str, Any] = {
            "id": self.id,
            "event": self.event,
            "provider": self.provider,
            "run_id": self.run_id,
        }
        if self.batch_id is not None:
            doc["batch_id"] = self.batch_id
        doc.update(
            status=self.status,
            output=self.output,
            error=self.error,
            duration_ms=self.duration_ms,
            created_at=self.created_at,
            completed_at=self.completed_at,
            metadata=self.metadata,
            channels=self.channels,
            source=self.source,
            observed_at=self.observed_at,
            **self.extra,
        )
        head = dumps(doc)
        return head[:-1] + b',"provider_payload":' + self.provider_payload_raw.strip() + b"}"


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern))


def glob_any(patterns: list[str] | tuple[str, ...], values: list[str] | tuple[str, ...]) -> bool:
    """True when any value matches any glob pattern."""
    return any(_glob(p).match(v) for p in patterns for v in values)


@dataclass
class Subscription:
    """A downstream endpoint and the filters that choose which events it receives."""

    id: str
    url: str
    events: list[str]
    providers: list[str] | None
    channels: list[str] | None
    description: str | None
    status: SubscriptionStatus
    disabled_reason: str | None
    created_at: float
    updated_at: float
    secret: str
    old_secret: str | None = None
    old_secret_until: float | None = None

    def matches(self, event_type: str, provider: str, channels: list[str]) -> bool:
        if self.status is not SubscriptionStatus.ENABLED:
            return False
        if not glob_any(self.events, (event_type,)):
            return False
        if self.providers is not None and not glob_any(self.providers, (provider,)):
            return False
        return self.channels is None or glob_any(self.channels, channels)

    def signing_keys(self, now: float) -> list[str]:
        """The secrets that sign right now: the current one and, during a grace, the old one."""
        keys = [self.secret]
        if self.old_secret and self.old_secret_until and now < self.old_secret_until:
            keys.append(self.old_secret)
        return keys

    def public(self) -> dict[str, Any]:
        from relay.clock import iso

        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "providers": self.providers,
            "channels": self.channels,
            "description": self.description,
            "enabled": self.status is SubscriptionStatus.ENABLED,
            "status": self.status.value,
            "disabled_reason": self.disabled_reason,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
