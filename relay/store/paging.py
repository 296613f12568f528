"""Newest-first paging over sorted-set indexes with opaque cursors."""

from __future__ import annotations

import base64
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Page:
    """One page of a newest-first listing."""

    ids: list[str]
    next_cursor: str | None


def _encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(f"{score:.0f}:{member}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member = raw.split(":", 1)
        value = float(score)
    except (ValueError, UnicodeDecodeError):
        return None
    # Redis refuses nan as a range bound: a doctored cursor must not turn into a 500.
    return (value, member) if math.isfinite(value) else None


async def page_index(
    redis: Any,
    index: str,
    limit: int,
    cursor: str | None,
    keep: Callable[[list[str]], Awaitable[list[bool]]],
    *,
    min_score: int | None = None,
    scan_cap: int = 2000,
) -> Page:
    """Newest-first page of `index` filtered by `keep`; scans at most `scan_cap` entries so a
    rare filter cannot make one request walk a week of events (such a page may come back
    short, or empty, with a cursor to carry on from)."""
    top: float | str = "+inf"
    after: str | None = None
    if cursor:
        decoded = _decode_cursor(cursor)
        if decoded is not None:
            top, after = decoded[0], decoded[1]
    bottom: float | str = "-inf" if min_score is None else min_score
    out: list[str] = []
    last: tuple[float, str] | None = None
    offset = 0  # entries of the range consumed so far, the last one included
    while len(out) < limit and offset < scan_cap:
        batch = await redis.zrevrangebyscore(
            index, top, bottom, start=offset, num=max(limit * 2, 50), withscores=True
        )
        if not batch:
            return Page(out, None)
        fresh = [(m, s) for m, s in batch
                 if not (after is not None and s == top and m >= after)]
        flags = dict(zip([m for m, _ in fresh], await keep([m for m, _ in fresh]), strict=True)
                     ) if fresh else {}
        for member, score in batch:
            offset += 1
            if member not in flags:
                continue
            last = (score, member)
            if flags[member]:
                out.append(member)
                if len(out) == limit:
                    break
    if last is None:
        return Page(out, None)
    more = await redis.zrevrangebyscore(index, top, bottom, start=offset, num=1)
    return Page(out, _encode_cursor(*last) if more else None)
