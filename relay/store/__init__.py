"""The store: the only part of relay that talks to Redis, composed of one mixin per record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay.config import Settings
from relay.store.deliveries import DeliveriesMixin, Delivery
from relay.store.events import EventsMixin, EventWrite
from relay.store.maintenance import MaintenanceMixin
from relay.store.paging import Page
from relay.store.queue import Outcome, QueueEntry, QueueMixin
from relay.store.runs import Claim, RunsMixin
from relay.store.scripts import Atomic, Reply
from relay.store.subscriptions import SubscriptionsMixin
from relay.store.workers import WorkersMixin

__all__ = ["Atomic", "Claim", "Delivery", "EventWrite", "Outcome", "Page", "QueueEntry", "Reply",
           "Store", "open_store"]


class Store(EventsMixin, SubscriptionsMixin, DeliveriesMixin, QueueMixin, RunsMixin,
            WorkersMixin, MaintenanceMixin):
    """Redis-backed storage for one key prefix: the clients of StoreBase, and each mixin's
    methods and scripts over them."""


@asynccontextmanager
async def open_store(settings: Settings, url: str) -> AsyncIterator[Store]:
    store = Store(settings, url)
    try:
        yield store
    finally:
        await store.aclose()
