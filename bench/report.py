"""Statistics over runs and the one table the benchmark prints."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


@dataclass
class Row:
    name: str
    rate: str
    p50: str = ""
    p99: str = ""
    valid: str = ""
    notes: list[str] = field(default_factory=list)
    target: str = ""  # where the issue sets one
    met: str = ""


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def us_as_ms(value: float) -> str:
    return ms(value / 1000)


def rps(value: float) -> str:
    return f"{value:,.0f} req/s"


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def table(title: str, rows: list[Row]) -> str:
    """A plain-text table; notes go on continuation lines under their row."""
    head = Row("measurement", "rate", "p50", "p99", "valid", target="target", met="met")
    cells = [[r.name, r.rate, r.p50, r.p99, r.valid, r.target, r.met] for r in (head, *rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(7)]
    right = (False, True, True, True, False, False, False)

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    out = [title, "", line(cells[0]), "  ".join("-" * w for w in widths)]
    for row, values in zip(rows, cells[1:], strict=True):
        out.append(line(values))
        out.extend(f"    {note}" for note in row.notes)
    return "\n".join(out)
