"""The provider protocol: what every upstream adapter offers relay."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from relay.errors import InvalidJSON
from relay.models import TERMINAL_BATCH_EVENTS, TERMINAL_EVENTS, TERMINAL_STATUSES, Event
from relay.signing import CallbackClaims


@dataclass(frozen=True)
class CallbackContext:
    """What relay knows about an inbound callback besides its body."""

    observed_at: float
    channels: tuple[str, ...] = ()
    metadata: Any = None
    claims: CallbackClaims | None = None


@dataclass(frozen=True)
class DedupeRule:
    kind: str  # the dedupe key's kind: "terminal" or the event type
    mode: str  # "1" once per key, "g" refused once the key exists (never sets it)
    ends_run: bool  # tracking of the run stops with this event


def dedupe_rule(event: Event) -> DedupeRule:
    """How an event is deduplicated: one terminal event per (provider, run), whoever sees it
    first, and one per batch; `run.updated` and `run.expired` never after it; anything else
    once per type."""
    if event.event in TERMINAL_EVENTS:
        return DedupeRule("terminal", "1", True)
    if event.event in TERMINAL_BATCH_EVENTS:
        return DedupeRule("terminal", "1", False)  # a batch is never a tracked run
    if event.event == "run.updated":
        return DedupeRule("terminal", "g", False)
    if event.event == "run.expired":
        return DedupeRule("terminal", "g", True)
    return DedupeRule(event.event, "1", False)


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON syntax, but no JSON number can hold it
        raise ValueError(text)
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_json(body: bytes) -> Any:
    """Strict JSON or InvalidJSON: UTF-8 only (no BOM or UTF-16), no NaN or Infinity, no number
    that overflows a float, and no lone surrogate escape, so that whatever is accepted can be
    re-encoded, spliced byte for byte into relay's UTF-8 event, and read by any subscriber."""
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("a byte order mark")
        doc = _DECODER.decode(text)
        if b"\\u" in body:
            # Only an escape can produce a lone surrogate; encoding finds it.
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError):
        raise InvalidJSON("the body is not valid JSON") from None
    return doc


def merge_metadata(sent: Any, attached: Any) -> Any:
    """The provider's metadata, with what the callback URL carried filled in underneath."""
    if isinstance(sent, dict) and isinstance(attached, dict):
        return {**attached, **sent}
    return attached if sent is None else sent


class CallbackProvider(Protocol):
    """A provider that calls relay back: verify the request, then normalize its body."""

    name: str
    # Its callbacks say that a run ended but not what it made (FLORA): ingest reads the run
    # from the provider's API before the event goes out, and dedupes on the delivery id.
    reads_run: bool
    # The request header that names one callback request in the provider's own logs; relay's
    # log line for the callback carries it as request_id.
    request_id_header: str

    @property
    def token_suffices(self) -> bool:
        """True when a valid callback token alone authenticates (no signature checked)."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise InvalidSignature unless the request is authentic."""

    def normalize(self, body: bytes, context: CallbackContext) -> Event:
        """Turn a verified body into relay's event; raise InvalidJSON or ValidationFailed."""

    def delivery_id(self, body: bytes) -> str | None:
        """The provider's id of this delivery of a normalized body, which its redeliveries
        repeat; None when it has none (the event's own dedupe key is enough)."""


@dataclass(frozen=True)
class Observation:
    """What one poll saw of a run, in relay's vocabulary (CONTRACT 5)."""

    status: str  # queued, running, or a terminal status (succeeded, failed, canceled, ...)
    progress: float | None = None
    # Synthesized providers: a list of output entries; Runflow: its `output` as given.
    outputs: Any = None
    error: dict[str, Any] | None = None
    created_at: str | None = None  # None: relay uses its own observation (BetterPrompt)
    completed_at: str | None = None
    duration_ms: int | None = None
    cost: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class PollProvider(Protocol):
    """A provider whose runs relay polls: where to ask, and what the answer means."""

    name: str
    # 429 answers carry a Retry-After worth obeying (BetterPrompt); else relay backs off.
    honours_retry_after: bool
    # Runflow's `output` is relayed as given; the others are `{"outputs": [...]}`.
    wraps_outputs: bool

    def run_url(self, run_id: str, technique_id: str | None) -> str:
        """The URL that reads one run."""

    def headers(self) -> dict[str, str]:
        """Request headers, the API key among them."""

    def observe(self, doc: Any, *, outputs_seen: float) -> Observation:
        """Read a parsed 200 answer; ValueError when it is not the documented shape.
        `outputs_seen` is when relay first saw this run's outputs (for expiry times)."""


def number_time(value: Any) -> str | None:
    """A numeric provider time as ISO 8601: above 1e12 it is milliseconds, else seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    seconds = value / 1000 if value > 1e12 else float(value)
    if not math.isfinite(seconds) or seconds > 1e11:
        return None
    from relay.clock import iso

    return iso(seconds)


def first(doc: Mapping[str, Any], *names: str) -> Any:
    """The first of `names` present (not None) in `doc`: providers drift between spellings."""
    for name in names:
        if doc.get(name) is not None:
            return doc[name]
    return None
