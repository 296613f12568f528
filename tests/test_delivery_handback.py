"""A worker stopped mid-dispatch hands back what it claimed and had not started."""

from __future__ import annotations

import asyncio
import signal

import pytest

from relay.config import Settings
from relay.delivery import DeliveryWorker
from relay.outbound import Outbound
from relay.service import Relay
from relay.store import Store
from tests.helpers import RedisServer, Subscriber, eventually


async def test_deliveries_claimed_but_not_started_at_shutdown_are_handed_back_at_once(
        settings: Settings, subscriber: Subscriber) -> None:
    """Shutdown cancels a dispatch that Redis (hung: SIGSTOP) holds up. The five deliveries it
    had claimed go back to the queue, so the next worker sends them at once instead of waiting
    RELAY_CLAIM_TIMEOUT (30 s here) to take them over."""
    redis = RedisServer().start()
    strict = settings.with_overrides(claim_timeout=30.0)
    store = Store(strict, redis.url)
    outbound = Outbound(allow_private=True)
    relay = Relay(strict, store)
    try:
        await store.ensure_groups()
        sub, _ = await relay.create_subscription({"url": subscriber.url})
        sent = {(await relay.send_test(sub.id))[0] for _ in range(5)}
        stopping = DeliveryWorker(relay, outbound, name="w-stopping")
        entries = await store.read_queue(stopping.name, 10, 0)
        assert len(entries) == 5
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)
        dispatching = asyncio.create_task(stopping.dispatch(entries))
        await asyncio.sleep(0.5)  # reading the deliveries, from a Redis that does not answer
        dispatching.cancel()  # what run() does to its loops on SIGTERM
        redis.proc.send_signal(signal.SIGCONT)
        with pytest.raises(asyncio.CancelledError):
            await dispatching
        assert subscriber.received == []

        await relay.subs.refresh()
        await DeliveryWorker(relay, outbound, name="w-next").run_once()
        await eventually(lambda: set(subscriber.ids()) == sent, within=5)
    finally:
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        await outbound.aclose()
        await store.aclose()
        redis.stop()
