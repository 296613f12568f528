"""Every Redis key name relay uses, in one place.

All keys carry the hash tag `{<prefix>}`, so every multi-key script touches a single slot and
relay runs unchanged on Redis Cluster; two deployments with different prefixes can share one.
"""

from __future__ import annotations

GROUP = "delivery"


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.root = "{" + prefix + "}"
        p = self.root
        self.events = f"{p}:events"  # zset: event id by stored time (ms)
        self.queue = f"{p}:q"  # stream: deliveries ready for an attempt (d=delivery, e=event)
        self.retry = f"{p}:retry"  # zset: "delivery event" members by due time (ms)
        self.dead = f"{p}:dead"  # zset: dead deliveries by time of death (ms)
        self.deliveries = f"{p}:dlvs"  # zset: every delivery by creation time (ms)
        self.subs = f"{p}:subs"  # zset: subscription id by creation time (ms)
        self.subs_version = f"{p}:subs:ver"  # counter bumped on every subscription change
        self.maintenance_lock = f"{p}:lock:maintenance"
        self.workers = f"{p}:workers"  # zset: live worker names by when their heartbeat ends (ms)
        self.sweep = f"{p}:sweep"  # string: how far the sweep of expired runs read `runs`
        self.sweep_lock = f"{p}:lock:sweep"
        self.runs = f"{p}:runs"  # zset: tracked runs ("provider:run_id") by tracked-since (ms)
        self.poll_wake = f"{p}:poll:wake"  # list: pushed when a run is tracked; pollers BLPOP it
        self.run_prefix = f"{p}:trk:"  # + "provider:run_id": the tracked-run hash (Lua builds it)

    def event(self, event_id: str) -> str:
        return f"{self.root}:evt:{event_id}"

    def event_deliveries(self, event_id: str) -> str:
        return f"{self.root}:evt:{event_id}:dlvs"

    def dedupe(self, provider: str, subject: str, kind: str) -> str:
        return f"{self.root}:dd:{provider}:{subject}:{kind}"

    def run_events(self, provider: str, subject: str) -> str:
        return f"{self.root}:run:{provider}:{subject}:events"

    def run(self, provider: str, run_id: str) -> str:
        return f"{self.run_prefix}{run_member(provider, run_id)}"

    def poll_due(self, provider: str) -> str:
        """zset: a provider's active runs by the time of their next poll (ms), or lease expiry."""
        return f"{self.root}:poll:due:{provider}"

    def pollers(self, provider: str) -> str:
        """zset: the live workers that poll `provider`, by when their heartbeat ends (ms)."""
        return f"{self.root}:workers:{provider}"

    def rate(self, provider: str) -> str:
        """string: the time (ms) of the provider's next free request slot, deployment-wide."""
        return f"{self.root}:rate:{provider}"

    def callback_delivery(self, provider: str, delivery_id: str) -> str:
        """string: the event a callback delivery (FLORA's `whd_...`) became; dedupes its
        redeliveries."""
        return f"{self.root}:dd:{provider}-delivery:{delivery_id}"

    def sub(self, sub_id: str) -> str:
        return f"{self.root}:sub:{sub_id}"

    def sub_deliveries(self, sub_id: str) -> str:
        return f"{self.root}:sub:{sub_id}:dlvs"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.root}:dlv:{delivery_id}"

    def attempts(self, delivery_id: str) -> str:
        return f"{self.root}:dlv:{delivery_id}:att"


def retry_member(delivery_id: str, event_id: str, generation: str) -> str:
    """A retry-set member: delivery, event and generation, so that promotion can queue the
    delivery without a lookup (the Lua scripts build the same string)."""
    return f"{delivery_id} {event_id} {generation}"


def run_member(provider: str, run_id: str) -> str:
    """A tracked run in the schedule and index sets; also the tail of its hash key."""
    return f"{provider}:{run_id}"


def split_member(member: str) -> tuple[str, str]:
    provider, _, run_id = member.partition(":")
    return provider, run_id
