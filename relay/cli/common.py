"""The command line's plumbing: settings, failure lines, the event loop and admin commands."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import click

from relay import logs
from relay.config import ConfigError, Settings
from relay.errors import RelayError

F = TypeVar("F", bound=Callable[..., Any])

# The HTTP API's field names, as the options that carry them here.
OPTION = {"url": "--url", "events": "--event", "providers": "--provider",
          "channels": "--channel", "description": "--description",
          "technique_id": "--technique-id", "run_id": "RUN_ID"}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"relay: {message}", err=True)
    sys.exit(code)


def load_settings(*, need_redis: bool = False) -> Settings:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}", 2)
    if need_redis and settings.redis_url is None:
        fail("REDIS_URL is not set; only `relay serve` can run on the embedded store", 2)
    logs.configure(settings)
    return settings


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)


def admin_command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., None]:
    """Wrap an async admin command: open the store, map errors to one line and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from relay.service import Relay
        from relay.store import open_store

        settings = load_settings()
        url = settings.redis_url.reveal() if settings.redis_url else _embedded_url(settings)

        async def go() -> Any:
            async with open_store(settings, url) as store:
                return await fn(Relay(settings, store), *args, **kwargs)

        try:
            run(go())
        except RelayError as exc:
            fail(error_line(exc))

    return wrapper


def error_line(exc: RelayError) -> str:
    """`code: message (field: problem; ...)`, the field named as the option that carries it."""
    details = "; ".join(f"{OPTION.get(d['field'], d['field'])}: {d['problem']}"
                        for d in exc.details or () if isinstance(d, dict))
    return f"{exc.code}: {exc.message}" + (f" ({details})" if details else "")


def _embedded_url(settings: Settings) -> str:
    sock = (settings.data_dir / "redis.sock").resolve()
    if not Path(sock).exists():
        fail("REDIS_URL is not set and no `relay serve` is running on ./relay-data/")
    return f"unix://{sock}"


def parse_metadata(text: str | None) -> Any:
    """`--metadata JSON`, or a one-line failure."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"--metadata is not valid JSON: {exc}")


class _OneLineUsage(click.UsageError):
    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"relay: {self.format_message()}", err=True)


class Command(click.Command):
    """A command whose usage errors are one line, like every other failure (CONTRACT 6)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _OneLineUsage(exc.format_message(), exc.ctx) from None


class Group(click.Group):
    command_class = Command


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON in the HTTP API's shapes.")(fn)


def paging_options(fn: F) -> F:
    fn = click.option("--cursor", help="next_cursor of the previous page.")(fn)
    return click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True,
                        help="Items per page (1-100).")(fn)

