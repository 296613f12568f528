"""`relay callback-url PROVIDER`: mint a signed callback URL, no store needed."""

from __future__ import annotations

from typing import Any

import click

from relay import schemas
from relay.cli import output
from relay.cli.common import (
    Command,
    error_line,
    fail,
    json_option,
    load_settings,
    parse_metadata,
)
from relay.errors import ValidationFailed
from relay.providers import callback_names


@click.command("callback-url", cls=Command)
@click.argument("provider", type=click.Choice(callback_names()))
@click.option("--channel", "channels", multiple=True,
              help="Channel attached to the events of runs called back here; repeatable.")
@click.option("--metadata", metavar="JSON", help="JSON attached to those events as metadata.")
@click.option("--technique-id", help="FLORA technique id (FLORA callbacks lack it).")
@json_option
def callback_url(provider: str, channels: tuple[str, ...], metadata: str | None,
                 technique_id: str | None, as_json: bool) -> None:
    """Mint a signed callback URL to give a provider when starting a run."""
    from relay.signing import CallbackClaims, TokenSigner

    settings = load_settings()
    doc: dict[str, Any] = {"provider": provider}
    if channels:
        doc["channels"] = list(channels)
    if technique_id is not None:
        doc["technique_id"] = technique_id
    try:
        body = schemas.parse(schemas.CallbackUrlRequest, doc)
    except ValidationFailed as exc:
        fail(error_line(exc))
    claims = CallbackClaims(provider, tuple(body.get("channels", ())), parse_metadata(metadata),
                            body.get("technique_id"))
    if settings.secret_key is not None:
        key = settings.secret_key.reveal()
    else:
        # The embedded store's key, kept where `relay serve` creates and reads it.
        from relay import ids
        from relay.embedded import local_secret

        key, _ = local_secret(settings.data_dir, "secret-key", ids.api_key)
    url = TokenSigner(key).url(settings.public_url, claims)
    if as_json:
        output.emit_json({"url": url})
    else:
        click.echo(url)


