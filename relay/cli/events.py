"""`relay events`: list and show received events."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from relay.cli import output
from relay.cli.common import Group, admin_command, json_option, paging_options

if TYPE_CHECKING:
    from relay.service import Relay

_COLUMNS = ("id", "event", "provider", "run_id", "status", "observed_at")

@click.group(cls=Group)
def events() -> None:
    """List and show received events."""


@events.command("list")
@click.option("--provider", help="Only this provider.")
@click.option("--run-id", help="Only this run (or batch).")
@click.option("--type", "event_type", help="Only this event type, e.g. run.completed.")
@paging_options
@json_option
@admin_command
async def list_events(relay: Relay, provider: str | None, run_id: str | None,
                      event_type: str | None, limit: int, cursor: str | None,
                      as_json: bool) -> None:
    """List events, newest first."""
    page = await relay.store.list_events(provider=provider or None, run_id=run_id or None,
                                         event_type=event_type or None, limit=limit,
                                         cursor=cursor or None)
    data = await relay.event_summaries(page)
    output.listing(data, page.next_cursor, as_json, _COLUMNS)


@events.command("show")
@click.argument("event_id", metavar="ID")
@json_option
@admin_command
async def show_event(relay: Relay, event_id: str, as_json: bool) -> None:
    """Show an event (its envelope) and its deliveries."""
    doc = await relay.event_view(event_id)
    if as_json:
        output.emit_json(doc)
        return
    output.fields(doc, skip=("output", "provider_payload", "deliveries"))
    click.echo()
    output.records(doc["deliveries"], output.DELIVERY_COLUMNS)


