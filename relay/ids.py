"""Identifiers and generated secrets: time-ordered ULIDs behind a type prefix."""

from __future__ import annotations

import base64
import os
import secrets
import socket

from ulid import ULID

from relay import clock


def new_id(prefix: str) -> str:
    """`evt_01J...`: sortable by creation time, so lists can page newest first."""
    return f"{prefix}_{ULID.from_timestamp(clock.now())}"


def event_id() -> str:
    return new_id("evt")


def subscription_id() -> str:
    return new_id("sub")


def delivery_id() -> str:
    return new_id("dlv")


def webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def api_key() -> str:
    return "rk_" + secrets.token_urlsafe(32)


def consumer_name() -> str:
    """A worker process's name in Redis (stream consumer, lease holder, heartbeat)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
