"""The worker process: poll scheduler and delivery workers over one store, and their shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from relay.config import Settings
from relay.delivery import DeliveryWorker
from relay.errors import StorageUnavailable
from relay.heartbeat import Heartbeat
from relay.ids import consumer_name
from relay.outbound import Outbound, ProviderClient
from relay.poller import Poller
from relay.providers import poll_providers
from relay.service import Relay
from relay.store import open_store

if TYPE_CHECKING:
    from relay.web.app import Background

log = structlog.get_logger("relay.worker")

# Platforms send SIGKILL 30 s after SIGTERM (Heroku, Render); finish well inside that.
SHUTDOWN_GRACE = 18.0


def on_signals(callback: Callable[[], None]) -> None:
    """Call `callback` in the running loop on SIGTERM or SIGINT.

    A plain `signal.signal` handler that hops into the loop with `call_soon_threadsafe`: uvloop's
    `add_signal_handler` sometimes never ran the callback for a SIGTERM that arrived just after
    start-up (seen in about one start in ten), and a worker that ignores SIGTERM gets SIGKILLed.
    """
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(callback)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


async def run_worker(settings: Settings, url: str, *, once: bool = False) -> None:
    async with open_store(settings, url) as store:
        outbound = Outbound(allow_private=settings.allow_private_targets)
        client = ProviderClient(max_bytes=settings.max_body_bytes)
        try:
            relay = Relay(settings, store)
            delivery = DeliveryWorker(relay, outbound)
            providers = poll_providers(settings)
            poller = Poller(relay, providers, client, name=delivery.name) if providers else None
            heartbeat = Heartbeat(relay, delivery.name, providers)
            if once:
                polled = await poller.run_once() if poller else 0
                swept = await heartbeat.sweep()
                count = await delivery.run_once()
                log.info("worker_pass_done", attempted=count, polled=polled, swept=swept)
                return
            stop = asyncio.Event()
            on_signals(stop.set)
            # Live before it says it has started, so that a run tracked then is accepted; with
            # Redis down, the heartbeat's loop keeps trying like every other loop.
            with contextlib.suppress(StorageUnavailable):
                await heartbeat.beat()
            jobs = [delivery.run(stop, grace=SHUTDOWN_GRACE), heartbeat.run(stop)]
            if poller is not None:
                jobs.append(poller.run(stop, grace=SHUTDOWN_GRACE))
            await asyncio.gather(*jobs)
        finally:
            await outbound.aclose()
            await client.aclose()


def poller_background() -> Background:
    """The poll scheduler and the heartbeat as tasks of the web process (`relay serve`)."""

    async def run(relay: Relay, stop: asyncio.Event) -> None:
        providers = poll_providers(relay.settings)
        heartbeat = Heartbeat(relay, consumer_name(), providers)
        if not providers:
            await heartbeat.run(stop)  # nothing to poll, but a worker still: it sweeps
            return
        client = ProviderClient(max_bytes=relay.settings.max_body_bytes)
        try:
            await asyncio.gather(heartbeat.run(stop),
                                 Poller(relay, providers, client, name=heartbeat.name).run(stop))
        finally:
            await client.aclose()

    return run


def delivery_background(outbound_limit: int = 512) -> Background:
    """The delivery worker as a task of the web process (`relay serve`)."""

    async def run(relay: Relay, stop: asyncio.Event) -> None:
        outbound = Outbound(allow_private=relay.settings.allow_private_targets,
                            limit=outbound_limit)
        try:
            await DeliveryWorker(relay, outbound).run(stop)
        finally:
            await outbound.aclose()

    return run
