"""Retry policy: pure functions from attempt number and answer to the next delay."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

# A subscriber may not park a delivery for longer than a day with Retry-After.
MAX_RETRY_AFTER = 86_400.0


def next_delay(
    attempt: int,
    schedule: Sequence[float],
    jitter: float,
    rand: random.Random | None = None,
) -> float | None:
    """Seconds before attempt `attempt + 1`, or None when `attempt` was the last one.

    `attempt` counts from 1; `schedule[i]` is the delay before attempt i + 2, varied by up to
    `jitter` of itself either way so that failed deliveries do not retry in lockstep.
    """
    if attempt < 1 or attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    spread = (rand or random).uniform(-jitter, jitter) if jitter else 0.0
    return max(0.0, base * (1.0 + spread))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header (delta seconds or HTTP date), clamped to a day."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            # The asctime form carries no zone; HTTP dates are always GMT, never local time.
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# Poll delays grow by this factor while nothing changes, and double after an error.
POLL_GROWTH = 1.5
POLL_JITTER = 0.1


def next_poll_interval(previous: float, *, changed: bool, failed: bool, low: float,
                       high: float) -> float:
    """The next base delay between polls of a run: back to `low` when its status or progress
    changed, doubled after an error, else grown by half; always within [low, high]."""
    if changed or previous <= 0:
        return low
    factor = 2.0 if failed else POLL_GROWTH
    return min(high, max(low, previous * factor))


def jittered(interval: float, *, low: float, high: float,
             rand: random.Random | None = None) -> float:
    """`interval` varied by up to POLL_JITTER either way, so runs tracked together do not
    stay in lockstep; kept within [low, high]."""
    spread = (rand or random).uniform(-POLL_JITTER, POLL_JITTER)
    return min(high, max(low, interval * (1.0 + spread)))
