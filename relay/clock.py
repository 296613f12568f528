"""The only place relay reads the wall clock, and the time formats it reads and writes."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


def now() -> float:
    """Unix seconds, as a float."""
    return time.time()


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and `+00:00`, as Runflow writes its times."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def parse_time(value: str | float | int) -> float:
    """ISO 8601 or Unix seconds to Unix seconds; ValueError when it is neither (or not finite)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    if not math.isfinite(seconds) or abs(seconds) > 1e11:
        raise ValueError("not a usable time")
    return seconds
