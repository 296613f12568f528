"""Admin commands for tracked runs: `relay runs track|list|show|untrack`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from relay import schemas
from relay.cli import output
from relay.cli.common import Group, admin_command, json_option, paging_options, parse_metadata
from relay.providers import poll_names
from relay.runs import STATE_FILTERS

if TYPE_CHECKING:
    from relay.service import Relay

_RUN_COLUMNS = ("provider", "run_id", "state", "status", "polls", "last_polled_at",
                "next_poll_at")
_PROVIDERS = click.Choice(poll_names())


@click.group(cls=Group)
def runs() -> None:
    """Track runs on the poll scheduler until they end."""


@runs.command()
@click.argument("provider", type=_PROVIDERS)
@click.argument("run_id")
@click.option("--technique-id", help="FLORA technique id or slug (required for flora).")
@click.option("--channel", "channels", multiple=True,
              help="Channel attached to this run's events; repeatable.")
@click.option("--metadata", metavar="JSON", help="JSON attached to this run's events.")
@json_option
@admin_command
async def track(relay: Relay, provider: str, run_id: str, technique_id: str | None,
                channels: tuple[str, ...], metadata: str | None, as_json: bool) -> None:
    """Start polling a run until it ends; idempotent."""
    from relay.tracking import Tracking

    doc: dict[str, object] = {"provider": provider, "run_id": run_id}
    if channels:
        doc["channels"] = list(channels)
    if technique_id is not None:
        doc["technique_id"] = technique_id
    body = schemas.parse(schemas.TrackRunRequest, doc)
    meta = parse_metadata(metadata)
    view, created = await Tracking(relay).track(provider, run_id, technique_id=technique_id,
                                                channels=body.get("channels"), metadata=meta)
    if as_json:
        output.emit_json(view)
        return
    output.fields(view)
    if not created:
        click.echo("(already tracked: shown as it is)", err=True)


@runs.command("list")
@click.option("--provider", type=_PROVIDERS, help="Only this provider's runs.")
@click.option("--state", type=click.Choice(STATE_FILTERS), help="Only these runs.")
@paging_options
@json_option
@admin_command
async def list_runs(relay: Relay, provider: str | None, state: str | None, limit: int,
                    cursor: str | None, as_json: bool) -> None:
    """List tracked runs, newest first."""
    from relay.tracking import Tracking

    data, next_cursor = await Tracking(relay).list(
        provider=provider, state=state, limit=limit, cursor=cursor or None)
    output.listing(data, next_cursor, as_json, _RUN_COLUMNS)


@runs.command("show")
@click.argument("provider", type=_PROVIDERS)
@click.argument("run_id")
@json_option
@admin_command
async def show_run(relay: Relay, provider: str, run_id: str, as_json: bool) -> None:
    """Show a tracked run: its state, polls, last error and events."""
    from relay.tracking import Tracking

    output.show(await Tracking(relay).show(provider, run_id), as_json)


@runs.command("untrack")
@click.argument("provider", type=_PROVIDERS)
@click.argument("run_id")
@json_option
@admin_command
async def untrack(relay: Relay, provider: str, run_id: str, as_json: bool) -> None:
    """Stop tracking a run (its events stay)."""
    from relay.tracking import Tracking

    await Tracking(relay).untrack(provider, run_id)
    if as_json:
        output.emit_json({"untracked": True})
    else:
        click.echo(f"no longer tracking {provider} run {run_id}")
