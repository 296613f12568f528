"""Admin commands: subscriptions, callback URLs, events and deliveries, straight on the store."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from relay.cli import admin_command, fail, load_settings, main
from relay.errors import ValidationFailed
from relay.models import DeliveryStatus

if TYPE_CHECKING:
    from relay.service import Relay
    from relay.web.validate import Problems

F = TypeVar("F", bound=Callable[..., Any])

# The HTTP API's field names, as the options that carry them here.
_OPTION = {"url": "--url", "events": "--event", "providers": "--provider",
           "channels": "--channel", "description": "--description",
           "technique_id": "--technique-id"}

# Table columns are the JSON fields, so what a person reads is what a script gets.
_SUBSCRIPTION_COLUMNS = ("id", "status", "events", "providers", "channels", "url")
_EVENT_COLUMNS = ("id", "event", "provider", "run_id", "status", "observed_at")
_DELIVERY_COLUMNS = ("id", "status", "attempts_made", "event_id", "subscription_id", "updated_at")
_ATTEMPT_COLUMNS = ("attempt", "at", "status_code", "duration_ms", "error")


class _OneLineUsage(click.UsageError):
    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"relay: {self.format_message()}", err=True)


class _Command(click.Command):
    """A command whose usage errors are one line, like every other failure (CONTRACT 6)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _OneLineUsage(exc.format_message(), exc.ctx) from None


class _Group(click.Group):
    command_class = _Command


# ---- output ---------------------------------------------------------------------------------


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


def _records(docs: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    table(([d.get(key) for key in columns] for d in docs), [c.upper() for c in columns])


def _fields(doc: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    table((k, v) for k, v in doc.items() if k not in skip)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit_json(doc)
    else:
        _fields(doc)


def _listing(data: list[dict[str, Any]], next_cursor: str | None, as_json: bool,
             columns: Sequence[str]) -> None:
    if as_json:
        _emit_json({"data": data, "next_cursor": next_cursor})
        return
    _records(data, columns)
    if next_cursor:
        # On stderr so the table on stdout stays clean for grep and cut.
        click.echo(f"more: --cursor {next_cursor}", err=True)


# ---- shared options and validation ----------------------------------------------------------


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON in the HTTP API's shapes.")(fn)


def paging_options(fn: F) -> F:
    fn = click.option("--cursor", help="next_cursor of the previous page.")(fn)
    return click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True,
                        help="Items per page (1-100).")(fn)


def _problems_line(problems: Problems) -> str | None:
    if not problems.items:
        return None
    return "; ".join(f"{_OPTION.get(p['field'], p['field'])} {p['problem']}"
                     for p in problems.items)


def _subscription_spec(url: str, events: tuple[str, ...], providers: tuple[str, ...],
                       channels: tuple[str, ...], description: str | None,
                       enabled: bool) -> dict[str, Any]:
    """The HTTP API's checks (admin_routes._subscription_spec) over the options given."""
    from relay.web import validate as v

    doc: dict[str, Any] = {"url": url, "events": list(events), "providers": list(providers),
                           "channels": list(channels), "description": description}
    problems = v.Problems()
    spec: dict[str, Any] = {"url": v.string(doc, "url", problems, required=True),
                            "enabled": enabled}
    for name in ("events", "providers", "channels"):
        if doc[name]:
            spec[name] = v.string_list(doc, name, problems)
    if description is not None:
        spec["description"] = v.string(doc, "description", problems, max_len=1000)
    message = _problems_line(problems)
    if message:
        raise ValidationFailed("validation_error", message)
    return spec


# ---- subscriptions --------------------------------------------------------------------------


@main.group(cls=_Group)
def subscriptions() -> None:
    """Create, list, show, delete, rotate and test subscriptions."""


@subscriptions.command()
@click.option("--url", required=True, help="Where events are POSTed (http or https).")
@click.option("--event", "events", multiple=True, metavar="PATTERN",
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
    spec = _subscription_spec(url, events, providers, channels, description, not disabled)
    sub, secret = await relay.create_subscription(spec)
    doc = {**sub.public(), "secret": secret}
    _show(doc, as_json)


@subscriptions.command("list")
@paging_options
@json_option
@admin_command
async def list_subscriptions(relay: Relay, limit: int, cursor: str | None, as_json: bool) -> None:
    """List subscriptions, newest first."""
    page = await relay.store.list_subscriptions(limit, cursor)
    subs = await relay.store.get_subscriptions(page.ids)
    data = [s.public() for s in subs.values() if s is not None]
    _listing(data, page.next_cursor, as_json, _SUBSCRIPTION_COLUMNS)


@subscriptions.command()
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def show(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Show one subscription (without its secret)."""
    doc = (await relay.subscription(sub_id)).public()
    _show(doc, as_json)


@subscriptions.command()
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def delete(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Delete a subscription and cancel its pending deliveries."""
    await relay.delete_subscription(sub_id)
    # The HTTP API answers 204 with no body; scripts still get a JSON document to parse.
    if as_json:
        _emit_json({"id": sub_id, "deleted": True})
    else:
        click.echo(f"deleted {sub_id}")


@subscriptions.command("rotate-secret")
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def rotate_secret(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Issue a new signing secret; the old one keeps signing for RELAY_ROTATION_GRACE."""
    _show(await relay.rotate_secret(sub_id), as_json)


@subscriptions.command()
@click.argument("sub_id", metavar="ID")
@json_option
@admin_command
async def test(relay: Relay, sub_id: str, as_json: bool) -> None:
    """Send a relay.test event to this subscription only."""
    event_id, delivery_id = await relay.send_test(sub_id)
    if as_json:
        _emit_json({"event_id": event_id, "delivery_id": delivery_id})
    else:
        click.echo(f"queued relay.test event {event_id} as delivery {delivery_id}")


# ---- callback URLs --------------------------------------------------------------------------


@main.command("callback-url", cls=_Command)
@click.argument("provider", type=click.Choice(["runflow", "flora"]))
@click.option("--channel", "channels", multiple=True,
              help="Channel attached to the events of runs called back here; repeatable.")
@click.option("--metadata", metavar="JSON", help="JSON attached to those events as metadata.")
@click.option("--technique-id", help="FLORA technique id (FLORA callbacks lack it).")
@json_option
def callback_url(provider: str, channels: tuple[str, ...], metadata: str | None,
                 technique_id: str | None, as_json: bool) -> None:
    """Mint a signed callback URL to give a provider when starting a run."""
    from relay.signing import CallbackClaims, TokenSigner
    from relay.web import validate as v

    settings = load_settings()
    problems = v.Problems()
    doc: dict[str, Any] = {"channels": list(channels) or None}
    if technique_id is not None:
        doc["technique_id"] = technique_id
    chosen = v.string_list(doc, "channels", problems)
    technique = v.string(doc, "technique_id", problems, max_len=256)
    message = _problems_line(problems)
    if message:
        fail(message)
    meta = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError as exc:
            fail(f"--metadata is not valid JSON: {exc}")
    claims = CallbackClaims(provider, tuple(chosen or ()), meta, technique)
    if settings.secret_key is not None:
        key = settings.secret_key.reveal()
    else:
        # The embedded store's key, kept where `relay serve` creates and reads it.
        from relay import ids
        from relay.embedded import local_secret

        key, _ = local_secret(settings.data_dir, "secret-key", ids.api_key)
    url = TokenSigner(key).url(settings.public_url, claims)
    if as_json:
        _emit_json({"url": url})
    else:
        click.echo(url)


# ---- events ---------------------------------------------------------------------------------


@main.group(cls=_Group)
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
    _listing(data, page.next_cursor, as_json, _EVENT_COLUMNS)


@events.command("show")
@click.argument("event_id", metavar="ID")
@json_option
@admin_command
async def show_event(relay: Relay, event_id: str, as_json: bool) -> None:
    """Show an event (its envelope) and its deliveries."""
    doc = await relay.event_view(event_id)
    if as_json:
        _emit_json(doc)
        return
    _fields(doc, skip=("output", "provider_payload", "deliveries"))
    click.echo()
    _records(doc["deliveries"], _DELIVERY_COLUMNS)


# ---- deliveries -----------------------------------------------------------------------------


@main.group(cls=_Group)
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
    _listing(data, page.next_cursor, as_json, _DELIVERY_COLUMNS)


@deliveries.command()
@click.argument("delivery_id", metavar="ID")
@json_option
@admin_command
async def retry(relay: Relay, delivery_id: str, as_json: bool) -> None:
    """Queue a delivery for an attempt now, with a fresh retry schedule."""
    doc = await relay.retry_delivery(delivery_id)
    if as_json:
        _emit_json(doc)
        return
    _fields(doc, skip=("attempts",))
    if doc["attempts"]:
        click.echo()
        _records(doc["attempts"], _ATTEMPT_COLUMNS)


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
        _emit_json({"requeued": count})
    else:
        click.echo(f"requeued {count} dead deliveries of {subscription_id}")
