"""The providers relay knows, as plain data: names, variables, defaults and rate limits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderSpec:
    """What configuration and the registry need to know of one provider (CONTRACT 3).

    Pure data, so that `relay.config` reads it without importing any adapter; the adapters
    that go with it are paired with it in the registry (`relay.providers`).
    """

    name: str  # in routes, Redis keys, events and the API: lower case, no colon
    env: str  # the prefix of its variables: {env}_API_KEY, {env}_BASE_URL, {env}_RATE_LIMIT
    base_url: str  # the default of {env}_BASE_URL
    # Requests per second for the whole deployment: the default of {env}_RATE_LIMIT. None: the
    # provider documents no limit, and there is no such variable.
    rate_limit: float | None = None
    # The variable holding its callback signing secrets; None: it never calls relay back.
    callback_secrets: str | None = None
    # A run is read through the technique that made it (FLORA): tracking needs its id.
    needs_technique: bool = False


SPECS: dict[str, ProviderSpec] = {spec.name: spec for spec in (
    ProviderSpec("betterprompt", "BETTERPROMPT", "https://api.betterprompt.me", rate_limit=5.0),
    ProviderSpec("flora", "FLORA", "https://app.flora.ai/api/v1", rate_limit=5.0,
                 callback_secrets="FLORA_WEBHOOK_SECRETS", needs_technique=True),
    ProviderSpec("runflow", "RUNFLOW", "https://api.runflow.io",
                 callback_secrets="RUNFLOW_CALLBACK_SECRETS"),
)}
