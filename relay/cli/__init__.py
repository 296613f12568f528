"""The `relay` command: the server processes and the admin command groups, assembled here."""

from __future__ import annotations

import click

from relay import __version__
from relay.cli import callback_url, deliveries, events, runs, server, subscriptions


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: webhook receiver and callback relay for AI-generation run APIs."""


for command in (server.serve, server.web, server.worker, server.preflight,
                subscriptions.subscriptions, runs.runs, callback_url.callback_url,
                events.events, deliveries.deliveries):
    main.add_command(command)
