"""Operations shared by the HTTP API, the CLI and the workers: accept, subscribe, replay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from relay import clock, ids, netguard
from relay.config import Settings
from relay.errors import NotFound, ValidationFailed
from relay.models import DeliveryStatus, Event, Subscription, SubscriptionStatus
from relay.providers import dedupe_rule
from relay.store import Delivery, EventWrite, Page, Reply, Store


@dataclass(frozen=True)
class Accepted:
    event_id: str
    duplicate: bool


class SubscriptionCache:
    """Subscriptions held in memory, trusted only while Redis' version counter agrees."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.version = "-1"
        self.subs: dict[str, Subscription] = {}
        self._lock = asyncio.Lock()

    async def refresh(self, seen_version: str | None = None) -> None:
        """Reload when `seen_version` differs from the cached one (or always when None)."""
        if seen_version is not None and seen_version == self.version:
            return
        async with self._lock:
            if seen_version is not None and seen_version == self.version:
                return
            version, subs = await self._store.load_subscriptions()
            self.subs = {s.id: s for s in subs}
            self.version = version

    def matching(self, event_type: str, provider: str, channels: list[str]) -> list[Subscription]:
        return [s for s in self.subs.values() if s.matches(event_type, provider, channels)]


class Relay:
    """The application's operations over one store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.subs = SubscriptionCache(store)

    # ---- events -------------------------------------------------------------------------

    async def accept(self, event: Event, *, dedupe: bool = True) -> Accepted:
        """Store `event` and queue a delivery per matching subscription, atomically."""
        code, value = await self.store_matched(event, dedupe=dedupe,
                                               write=self.store.accept_event)
        return Accepted(value, duplicate=code == Reply.DUPLICATE)

    async def store_matched(
        self, event: Event, *, write: Callable[[EventWrite], Awaitable[tuple[Reply, str]]],
        dedupe: bool = True,
    ) -> tuple[Reply, str]:
        """Match `event` against the cached subscriptions and hand it to `write` (one Lua
        script); the script refuses a stale cache (Reply.STALE), and the match is redone, so a
        subscription is never missed or used after deletion."""
        body = event.to_json()
        rule = dedupe_rule(event) if dedupe else None
        for _ in range(20):
            subs = self.subs.matching(event.event, event.provider, event.channels)
            code, value = await write(EventWrite(
                event_id=event.id, body=body, event_type=event.event, provider=event.provider,
                subject=event.subject, dedupe_kind=rule.kind if rule else None,
                dedupe_mode=rule.mode if rule else "0",
                ends_run=bool(rule and rule.ends_run), run_status=event.status,
                deliveries=tuple((ids.delivery_id(), s.id) for s in subs),
                subs_version=self.subs.version,
            ))
            if code == Reply.STALE:
                await self.subs.refresh(value)
                continue
            return code, value
        raise RuntimeError("subscriptions changed twenty times while one event was stored")

    async def deliver_to(self, event_id: str, body: bytes | str, event: dict[str, str],
                         sub_ids: list[str]) -> list[str]:
        """Queue new deliveries of a stored event to the given subscriptions (redeliver, test)."""
        pairs = tuple((ids.delivery_id(), s) for s in sub_ids)
        await self.store.accept_event(EventWrite(
            event_id=event_id, body=body.encode() if isinstance(body, str) else body,
            event_type=event["type"], provider=event["provider"], subject=event["subject"],
            dedupe_kind=None, dedupe_mode="0", deliveries=pairs,
        ))
        return [d for d, _ in pairs]

    async def event_view(self, event_id: str) -> dict[str, Any]:
        stored = await self.store.get_event(event_id)
        if stored is None:
            raise NotFound(f"no event {event_id}")
        doc: dict[str, Any] = json.loads(stored["body"])
        ids_ = await self.store.event_delivery_ids(event_id)
        doc["deliveries"] = [d for d in await self.delivery_views(ids_) if d is not None]
        return doc

    async def event_summaries(self, page: Page) -> list[dict[str, Any]]:
        bodies = await self.store.get_event_bodies(page.ids)
        return [json.loads(b) for b in bodies if b is not None]

    async def redeliver(self, event_id: str, sub_ids: list[str] | None) -> list[str]:
        stored = await self.store.get_event(event_id)
        if stored is None:
            raise NotFound(f"no event {event_id}")
        if sub_ids is None:
            await self.subs.refresh()
            doc = json.loads(stored["body"])
            targets = [s.id for s in self.subs.matching(
                stored["type"], stored["provider"], doc.get("channels") or [])]
        else:
            found = await self.store.get_subscriptions(sub_ids)
            missing = [i for i, s in found.items() if s is None]
            if missing:
                raise ValidationFailed("unknown_subscription", "no such subscription",
                                       details=[{"field": "subscription_ids", "problem": m}
                                                for m in missing])
            targets = list(found)
        return await self.deliver_to(event_id, stored["body"], stored, targets)

    # ---- subscriptions ------------------------------------------------------------------

    async def create_subscription(self, spec: dict[str, Any]) -> tuple[Subscription, str]:
        await netguard.check_url(spec["url"], allow_private=self.settings.allow_private_targets)
        now = clock.now()
        sub = Subscription(
            id=ids.subscription_id(), url=spec["url"], events=spec.get("events") or ["*"],
            providers=spec.get("providers"), channels=spec.get("channels"),
            description=spec.get("description"),
            status=SubscriptionStatus.ENABLED if spec.get("enabled", True)
            else SubscriptionStatus.DISABLED,
            disabled_reason=None if spec.get("enabled", True) else "disabled by an operator",
            created_at=now, updated_at=now, secret=ids.webhook_secret(),
        )
        await self.store.save_subscription(sub, new=True)
        return sub, sub.secret

    async def subscription(self, sub_id: str) -> Subscription:
        sub = await self.store.get_subscription(sub_id)
        if sub is None:
            raise NotFound(f"no subscription {sub_id}")
        return sub

    async def update_subscription(self, sub_id: str, changes: dict[str, Any]) -> Subscription:
        sub = await self.subscription(sub_id)
        if "url" in changes:
            await netguard.check_url(changes["url"],
                                     allow_private=self.settings.allow_private_targets)
            sub.url = changes["url"]
        for name in ("events", "providers", "channels", "description"):
            if name in changes:
                setattr(sub, name, changes[name])
        if sub.events is None:
            sub.events = ["*"]
        disabling = False
        if "enabled" in changes:
            if changes["enabled"]:
                sub.status, sub.disabled_reason = SubscriptionStatus.ENABLED, None
            elif sub.status is SubscriptionStatus.ENABLED:
                sub.status = SubscriptionStatus.DISABLED
                sub.disabled_reason = "disabled by an operator"
                disabling = True
        sub.updated_at = clock.now()
        # Re-enabling starts the RELAY_DISABLE_AFTER clock afresh.
        await self.store.save_subscription(sub, reset_failures=bool(changes.get("enabled")))
        if disabling:
            await self.store.cancel_pending(sub_id)
        return sub

    async def delete_subscription(self, sub_id: str) -> None:
        if not await self.store.delete_subscription(sub_id):
            raise NotFound(f"no subscription {sub_id}")
        await self.store.cancel_pending(sub_id)

    async def rotate_secret(self, sub_id: str) -> dict[str, str | None]:
        """A new secret; the old one keeps signing until `previous_secret_expires_at`."""
        sub = await self.subscription(sub_id)
        now = clock.now()
        if self.settings.rotation_grace > 0:
            sub.old_secret, sub.old_secret_until = sub.secret, now + self.settings.rotation_grace
        else:
            sub.old_secret, sub.old_secret_until = None, None
        sub.secret = ids.webhook_secret()
        sub.updated_at = now
        await self.store.save_subscription(sub)
        until = sub.old_secret_until
        return {"secret": sub.secret,
                "previous_secret_expires_at": clock.iso(until) if until else None}

    async def send_test(self, sub_id: str) -> tuple[str, str]:
        """Store a `relay.test` event and queue it for this one subscription."""
        sub = await self.subscription(sub_id)
        now = clock.now()
        event = Event(
            id=ids.event_id(), event="relay.test", provider="relay", run_id=None, status=None,
            output=None, error=None, duration_ms=None, created_at=clock.iso(now),
            completed_at=None, metadata={"subscription_id": sub.id}, channels=[],
            source="relay", observed_at=clock.iso(now),
        )
        body = event.to_json()
        stored = {"type": event.event, "provider": event.provider, "subject": event.id}
        (delivery,) = await self.deliver_to(event.id, body, stored, [sub.id])
        return event.id, delivery

    async def recover(self, sub_id: str, since: float) -> int:
        await self.subscription(sub_id)
        count, cursor = 0, None
        while True:
            page = await self.store.list_deliveries(
                subscription_id=sub_id, event_id=None, status="dead", limit=100, cursor=cursor,
                since_ms=int(since * 1000),
            )
            for delivery_id in page.ids:
                if await self.store.requeue(delivery_id) == DeliveryStatus.DEAD:
                    count += 1
            # A page can come back empty with a cursor (the scan cap met only successes).
            if page.next_cursor is None:
                return count
            cursor = page.next_cursor

    # ---- deliveries ---------------------------------------------------------------------

    async def delivery_views(self, delivery_ids: list[str]) -> list[dict[str, Any] | None]:
        return [None if d is None else _delivery_doc(d)
                for d in await self.store.get_deliveries(delivery_ids)]

    async def delivery_view(self, delivery_id: str) -> dict[str, Any]:
        (doc,) = await self.delivery_views([delivery_id])
        if doc is None:
            raise NotFound(f"no delivery {delivery_id}")
        doc["attempts"] = await self.store.get_attempts(delivery_id)
        return doc

    async def retry_delivery(self, delivery_id: str) -> dict[str, Any]:
        if await self.store.requeue(delivery_id) is None:
            raise NotFound(f"no delivery {delivery_id}")
        return await self.delivery_view(delivery_id)


def _delivery_doc(d: Delivery) -> dict[str, Any]:
    """The API's Delivery (CONTRACT 4.2)."""
    pending = d.status is DeliveryStatus.PENDING
    return {
        "id": d.id,
        "event_id": d.event_id,
        "subscription_id": d.subscription_id,
        "status": d.status.value,
        "attempts_made": d.attempts,
        "next_attempt_at": clock.iso(d.next_ms / 1000) if pending and d.next_ms else None,
        "created_at": clock.iso(d.created_ms / 1000),
        "updated_at": clock.iso(d.updated_ms / 1000),
    }
