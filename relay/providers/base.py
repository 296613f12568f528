"""The provider protocol: what every upstream adapter offers relay."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.errors import InvalidJSON
from relay.models import TERMINAL_EVENTS, Event


@dataclass(frozen=True)
class CallbackContext:
    """What relay knows about an inbound callback besides its body."""

    observed_at: float
    channels: tuple[str, ...] = ()
    metadata: Any = None
    claims: Mapping[str, Any] = field(default_factory=dict)


def dedupe_key(event: Event) -> str:
    """One terminal event per run whoever reports it; other types once per (subject, type)."""
    return "terminal" if event.event in TERMINAL_EVENTS else event.event


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def parse_json(body: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN, Infinity, BOM or UTF-16, which other parsers reject, and
    which could not be spliced byte for byte into relay's UTF-8 event) or InvalidJSON."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidJSON("the body is not valid JSON") from None


def merge_metadata(sent: Any, attached: Any) -> Any:
    """The provider's metadata, with what the callback URL carried filled in underneath."""
    if isinstance(sent, dict) and isinstance(attached, dict):
        return {**attached, **sent}
    return attached if sent is None else sent


class CallbackProvider(Protocol):
    """A provider that calls relay back: verify the request, then normalize its body."""

    name: str

    @property
    def has_secrets(self) -> bool:
        """True when signing secrets are configured (a token alone then does not suffice)."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise InvalidSignature unless the request is authentic."""

    def normalize(self, body: bytes, context: CallbackContext) -> Event:
        """Turn a verified body into relay's event; raise InvalidJSON or ValidationFailed."""
