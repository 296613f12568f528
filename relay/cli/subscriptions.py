"""`relay subscriptions`: create, list, show, delete, rotate and test subscriptions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from relay import schemas
from relay.cli import output
from relay.cli.common import Group, admin_command, json_option, paging_options

if TYPE_CHECKING:
    from relay.service import Relay

# Table columns are the JSON fields, so what a person reads is what a script gets.
_COLUMNS = ("id", "status", "events", "providers", "channels", "url")


@click.group(cls=Group)
def subscriptions() -> None:
    """Create, list, show, delete, rotate and test subscriptions."""


@subscriptions.command()
@click.option("--url", required=True, help="Where events are POSTed (http or https).")
@click.option("--event", "--events", "events", multiple=True, metavar="PATTERN",
              help="Event type glob; repeatable (default: every event).")
@click.option("--provider", "providers", multiple=True, help="Only these providers; repeatable.")
@click.option("--channel", "channels", multiple=True,
              help="Only events carrying one of these channels; repeatable.")
@click.option("--description", help="Free text for operators.")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@json_option
@admin_command
async def create(relay: Relay, url: str, events: tuple[str, ...], providers: tuple[str, ...],
                 channels: tuple[str, ...], description: str | None, disabled: bool,
                 as_json: bool) -> None:
    """Create a subscription; prints it with its signing secret."""
    doc: dict[str, Any] = {"url": url, "enabled": not disabled}
    for name, given in (("events", events), ("providers", providers), ("channels", channels)):
        if given:
            doc[name] = list(given)
    if description is not None:
        doc["description"] = description
    spec = schemas.parse(schemas.SubscriptionInput, doc)
    sub, secret = await relay.create_subscription(dict(spec))
    doc = {**sub.public(), "secret": secret}
    output.show(doc, as_json)


@subscriptions.command("list")
@paging_options
@json_option
@admin_command
async def list_subscriptions(relay: Relay, limit: int, cursor: str | None, as_json: bool) -> None:
    """List subscriptions, newest first."""
    page = await relay.store.list_subscriptions(limit, cursor)
    subs = await relay.store.get_subscriptions(page.ids)
    data = [s.public() for s in subs.values() if s is not None]
    output.listing(data, page.next_cursor, as_json, _COLUMNS)


@subscriptions.command()
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def show(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Show one subscription (without its secret)."""
    doc = (await relay.subscription(sub_id)).public()
    output.show(doc, as_json)


@subscriptions.command()
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def delete(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Delete a subscription and cancel its pending deliveries."""
    await relay.delete_subscription(sub_id)
    # The HTTP API answers 204 with no body; scripts still get a JSON document to parse.
    if as_json:
        output.emit_json({"id": sub_id, "deleted": True})
    else:
        click.echo(f"deleted {sub_id}")


@subscriptions.command("rotate-secret")
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def rotate_secret(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Issue a new signing secret; the old one keeps signing for RELAY_ROTATION_GRACE."""
    output.show(await relay.rotate_secret(sub_id), as_json)


@subscriptions.command()
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def test(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Send a relay.test event to this subscription only."""
    event_id, delivery_id = await relay.send_test(sub_id)
    if as_json:
        output.emit_json({"event_id": event_id, "delivery_id": delivery_id})
    else:
        click.echo(f"queued relay.test event {event_id} as delivery {delivery_id}")


