"""Prometheus metrics: counters and histograms per process, queue depths read from Redis."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

CALLBACKS = Counter(
    "relay_callbacks_total", "Inbound provider callbacks by provider and outcome",
    ["provider", "outcome"], registry=REGISTRY,
)
EVENTS = Counter(
    "relay_events_total", "Events stored, by provider, type and source",
    ["provider", "type", "source"], registry=REGISTRY,
)
DELIVERIES = Counter(
    "relay_delivery_attempts_total", "Delivery attempts by outcome", ["outcome"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "relay_delivery_duration_seconds", "Time of one delivery attempt, connect to last byte",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    "relay_end_to_end_seconds", "From event accepted to first successful delivery",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
POLLS = Counter(
    "relay_polls_total", "Provider polls by provider and outcome", ["provider", "outcome"],
    registry=REGISTRY,
)
STORAGE_ERRORS = Counter(
    "relay_storage_errors_total",
    "Requests refused with 503 because Redis could not take them, by reason (oom, readonly, "
    "loading, timeout, unreachable, ...)",
    ["reason"], registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "relay_queue_depth", "Deliveries by queue state, read from Redis at scrape time",
    ["state"], registry=REGISTRY,
)
SUBSCRIPTIONS = Gauge("relay_subscriptions", "Subscriptions stored", registry=REGISTRY)
POLL_LAG = Histogram(
    "relay_poll_lag_seconds", "From a run's due time to its poll request being sent",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
TRACKED_RUNS = Gauge(
    "relay_tracked_runs", "Runs on the poll schedule (active), read from Redis at scrape time",
    ["provider"], registry=REGISTRY,
)
STALLED_RUNS = Gauge(
    "relay_stalled_runs", "Active runs that no live worker can poll, read at scrape time",
    ["provider"], registry=REGISTRY,
)
WORKERS = Gauge("relay_workers", "Live worker processes (by heartbeat), read at scrape time",
                registry=REGISTRY)


@lru_cache(maxsize=1024)
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: the hot paths count every request."""
    return metric.labels(*values)
