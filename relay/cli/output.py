"""What the admin commands print: aligned tables for people, the API's JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import click

# Shown under `deliveries list` and under each event of `events show`.
DELIVERY_COLUMNS = ("id", "status", "attempts_made", "event_id", "subscription_id", "updated_at")


def _cell(value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list | tuple):
        text = ",".join(_cell(v) for v in value) or "-"
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    # Provider and subscriber data is untrusted: it must not drive the operator's terminal.
    return "".join(c if c.isprintable() else " " for c in text)


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str] | None = None) -> None:
    """Print rows in aligned columns, under `headers` when given; the last column is not padded."""
    lines = [list(headers)] if headers else []
    lines += [[_cell(v) for v in row] for row in rows]
    if not lines:
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def records(docs: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """One row per document; the columns are the JSON fields, so people read what scripts get."""
    table(([d.get(key) for key in columns] for d in docs), [c.upper() for c in columns])


def fields(doc: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    table((k, v) for k, v in doc.items() if k not in skip)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(doc)
    else:
        fields(doc)


def listing(data: list[dict[str, Any]], next_cursor: str | None, as_json: bool,
            columns: Sequence[str]) -> None:
    if as_json:
        emit_json({"data": data, "next_cursor": next_cursor})
        return
    records(data, columns)
    if next_cursor:
        # On stderr so the table on stdout stays clean for grep and cut.
        click.echo(f"more: --cursor {next_cursor}", err=True)
