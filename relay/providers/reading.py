"""Reading a run from a provider's API: one GET, classified, spaced within the rate limit."""

from __future__ import annotations

from dataclasses import dataclass

from relay import backoff, clock
from relay.config import Settings
from relay.errors import InvalidJSON
from relay.outbound import ProviderClient
from relay.providers.base import Observation, PollProvider, parse_json

# Slots are spaced this much wider than 1/rate, so that network jitter can never make the
# provider count more than its limit in any one-second window.
RATE_MARGIN = 1.02


@dataclass(frozen=True)
class PollResult:
    """One provider read, classified."""

    kind: str  # ok, not_found, auth, rate_limited, retry, client_error
    observation: Observation | None = None
    raw: bytes = b""
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


async def read_run(client: ProviderClient, adapter: PollProvider, run_id: str,
                   technique_id: str | None, deadline: float) -> PollResult:
    """GET the run and classify the answer; never raises for anything the provider does."""
    try:
        url = adapter.run_url(run_id, technique_id)
    except ValueError as exc:
        return PollResult("client_error", error=str(exc))
    got = await client.get(url, adapter.headers(), deadline)
    code = got.status
    if code is None or got.error is not None:
        return PollResult("retry", status_code=code, error=got.error)
    if 200 <= code < 300:
        try:
            doc = parse_json(got.body)
            obs = adapter.observe(doc, outputs_seen=clock.now())
        except (InvalidJSON, ValueError) as exc:
            text = exc.message if isinstance(exc, InvalidJSON) else str(exc)
            return PollResult("retry", status_code=code, error=f"unreadable answer: {text}")
        return PollResult("ok", obs, got.body, code)
    if code in (404, 410):
        return PollResult("not_found", status_code=code, error=f"HTTP {code}")
    if code in (401, 403):
        return PollResult("auth", status_code=code, error=f"HTTP {code}: the provider refused "
                          f"the API key")
    if code == 429:
        hint = None
        if adapter.honours_retry_after:
            hint = backoff.parse_retry_after(got.retry_after, clock.now())
        return PollResult("rate_limited", status_code=code, error="HTTP 429", retry_after=hint)
    if code >= 500 or code == 408:
        return PollResult("retry", status_code=code, error=f"HTTP {code}")
    return PollResult("client_error", status_code=code, error=f"HTTP {code}")


def spacing_ms(settings: Settings, provider: str) -> float:
    """Milliseconds between two request slots of `provider`, deployment-wide; 0: no limit."""
    rate = settings.provider(provider).rate_limit
    return 1000.0 / rate * RATE_MARGIN if rate else 0.0
