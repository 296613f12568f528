"""`relay callback-url PROVIDER`: mint a signed callback URL, no store needed."""

from __future__ import annotations

from typing import Any

import click

from relay.cli import output
from relay.cli.common import (
    Command,
    fail,
    json_option,
    load_settings,
    parse_metadata,
    problems_line,
)
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
    from relay.web import validate as v

    settings = load_settings()
    problems = v.Problems()
    doc: dict[str, Any] = {"channels": list(channels) or None}
    if technique_id is not None:
        doc["technique_id"] = technique_id
    chosen = v.string_list(doc, "channels", problems)
    technique = v.string(doc, "technique_id", problems, max_len=256)
    message = problems_line(problems)
    if message:
        fail(message)
    meta = parse_metadata(metadata)
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
        output.emit_json({"url": url})
    else:
        click.echo(url)


