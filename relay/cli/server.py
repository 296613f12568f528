"""The server processes: `relay serve`, `web`, `worker` and `preflight` (Procfile roles)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import click
import structlog

from relay import __version__, ids
from relay.cli.common import fail, load_settings, run
from relay.config import Secret, Settings
from relay.worker import SHUTDOWN_GRACE, on_signals, run_worker

log = structlog.get_logger("relay.cli")

def announce(role: str, settings: Settings) -> None:
    """The one start-up line: what runs, which version, on which Redis, with which settings."""
    log.info("relay_starting", version=__version__, role=role, **settings.describe())


def embedded_settings(settings: Settings) -> Settings:
    """Fill RELAY_SECRET_KEY and RELAY_API_KEYS from ./relay-data/, generating them once."""
    from relay.embedded import local_secret

    changes: dict[str, Any] = {}
    if settings.secret_key is None:
        value, _ = local_secret(settings.data_dir, "secret-key", lambda: ids.api_key())
        changes["secret_key"] = Secret(value)
    if not settings.api_keys:
        value, created = local_secret(settings.data_dir, "api-key", ids.api_key)
        changes["api_keys"] = (Secret(value),)
        where = settings.data_dir / "api-key"
        # Printed on purpose: the operator needs this key and has no other way to learn it.
        click.echo(f"relay: admin API key ({'new' if created else 'kept'} in {where}): {value}",
                   err=True)
    return settings.with_overrides(**changes) if changes else settings


def _quiet_server(config: Any) -> Any:
    """uvicorn's Server, exiting 0 after a graceful SIGTERM instead of re-raising the signal."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            on_signals(lambda: self.handle_exit(signal.SIGTERM, None))
            yield

    return Server(config)


async def serve_http(settings: Settings, url: str, *, host: str, with_workers: bool) -> None:
    import uvicorn

    from relay.web.app import create_app
    from relay.worker import delivery_background, poller_background

    background = [delivery_background(), poller_background()] if with_workers else []
    app = create_app(settings, url, background=background)
    config = uvicorn.Config(
        app, host=host, port=settings.port, loop="none", http="httptools", lifespan="on",
        log_config=None, access_log=False, proxy_headers=True, forwarded_allow_ips="*",
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE), timeout_keep_alive=75,
        backlog=4096,
    )
    await _quiet_server(config).serve()


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
def serve(host: str) -> None:
    """Everything in one process: HTTP, poll scheduler and delivery workers."""
    settings = load_settings()

    async def go() -> None:
        if settings.redis_url is not None:
            announce("serve", settings)
            await serve_http(settings, settings.redis_url.reveal(), host=host, with_workers=True)
            return
        from relay.embedded import embedded_redis

        # The data directory's lock comes first: a second serve there is refused in one line
        # before it reads or writes anything of the first one's (keys, socket, log lines).
        async with embedded_redis(settings.data_dir) as url:
            local = embedded_settings(settings)
            announce("serve", local)
            log.info("embedded_store", data_dir=str(local.data_dir.resolve()),
                     note="REDIS_URL is unset: relay runs its own Redis under the data directory")
            await serve_http(local, url, host=host, with_workers=True)

    run(go())


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
def web(host: str) -> None:
    """HTTP only (Procfile `web`); needs REDIS_URL."""
    settings = load_settings(need_redis=True)
    assert settings.redis_url is not None
    announce("web", settings)
    run(serve_http(settings, settings.redis_url.reveal(), host=host, with_workers=False))


@click.command()
@click.option("--once", is_flag=True, help="One pass over due work, then exit (for tests).")
def worker(once: bool) -> None:
    """Poll scheduler and delivery workers (Procfile `worker`); any number may run."""
    settings = load_settings(need_redis=True)
    assert settings.redis_url is not None
    announce("worker", settings)
    run(run_worker(settings, settings.redis_url.reveal(), once=once))


@click.command()
def preflight() -> None:
    """Check Redis and prepare it (Procfile `release`); exit 0 or say what is wrong."""
    settings = load_settings(need_redis=True)
    assert settings.redis_url is not None
    run(run_preflight(settings, settings.redis_url.reveal()))


async def run_preflight(settings: Settings, url: str) -> None:
    from redis.exceptions import RedisClusterException

    from relay.errors import StorageUnavailable
    from relay.store import open_store

    async with open_store(settings, url) as store:
        try:
            info = await store.server_info()
            if info["cluster_enabled"] == "1" and not settings.redis_cluster:
                fail("this Redis runs in cluster mode: set REDIS_CLUSTER=true")
            await store.ensure_groups()
        except (StorageUnavailable, RedisClusterException) as exc:
            reason = exc.message if isinstance(exc, StorageUnavailable) else str(exc)
            kind = " as a cluster (REDIS_CLUSTER=true)" if settings.redis_cluster else ""
            fail(f"Redis is not reachable{kind}: {reason}")
        version = tuple(int(p) for p in info["redis_version"].split(".")[:2] if p.isdigit())
        if version < (6, 2):
            fail(f"Redis {info['redis_version']} is too old: relay needs 6.2 or newer")
        if info["maxmemory_policy"] != "noeviction":
            click.echo(
                f"relay: WARNING: maxmemory-policy is {info['maxmemory_policy']}, not noeviction:"
                " Redis may silently evict queued events and deliveries. Set it to noeviction.",
                err=True,
            )
        click.echo(f"relay: preflight ok (Redis {info['redis_version']}, "
                   f"maxmemory-policy {info['maxmemory_policy']})")
