"""`relay deliveries`: list, retry and recover deliveries."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

from relay.cli import output
from relay.cli.common import Group, admin_command, json_option, paging_options
from relay.errors import ValidationFailed
from relay.models import DeliveryStatus

if TYPE_CHECKING:
    from relay.service import Relay

_ATTEMPT_COLUMNS = ("attempt", "at", "status_code", "duration_ms", "error")

@click.group(cls=Group)
def deliveries() -> None:
    """List, retry and recover deliveries."""


@deliveries.command("list")
@click.option("--subscription-id", help="Only this subscription's deliveries.")
@click.option("--event-id", help="Only this event's deliveries.")
@click.option("--status", type=click.Choice([s.value for s in DeliveryStatus]),
              help="Only deliveries in this status.")
@paging_options
@json_option
@admin_command
async def list_deliveries(relay: Relay, subscription_id: str | None, event_id: str | None,
                          status: str | None, limit: int, cursor: str | None,
                          as_json: bool) -> None:
    """List deliveries, newest first."""
    page = await relay.store.list_deliveries(
        subscription_id=subscription_id or None, event_id=event_id or None, status=status,
        limit=limit, cursor=cursor or None)
    views = await relay.delivery_views(page.ids)
    data = [d for d in views if d is not None]
    output.listing(data, page.next_cursor, as_json, output.DELIVERY_COLUMNS)


@deliveries.command()
@click.argument("delivery_id", metavar="ID")
@json_option
@admin_command
async def retry(relay: Relay, delivery_id: str, as_json: bool) -> None:
    """Queue a delivery for an attempt now, with a fresh retry schedule."""
    doc = await relay.retry_delivery(delivery_id)
    if as_json:
        output.emit_json(doc)
        return
    output.fields(doc, skip=("attempts",))
    if doc["attempts"]:
        click.echo()
        output.records(doc["attempts"], _ATTEMPT_COLUMNS)


@deliveries.command()
@click.argument("subscription_id")
@click.option("--since", required=True, metavar="TIME",
              help="Recover deliveries created since then (ISO 8601 or Unix seconds).")
@json_option
@admin_command
async def recover(relay: Relay, subscription_id: str, since: str, as_json: bool) -> None:
    """Re-queue a subscription's dead deliveries created since TIME."""
    from relay import clock

    try:
        when = clock.parse_time(since)
    except (ValueError, OverflowError):
        when = math.nan
    # "nan" and "inf" parse as floats but name no time (and break the millisecond conversion).
    if not math.isfinite(when):
        raise ValidationFailed("validation_error", "--since must be ISO 8601 or Unix seconds")
    count = await relay.recover(subscription_id, when)
    if as_json:
        output.emit_json({"requeued": count})
    else:
        click.echo(f"requeued {count} dead deliveries of {subscription_id}")
