"""Provider adapters; adding a provider means adding one module and one line here."""

from __future__ import annotations

from relay.config import Settings
from relay.providers.base import (
    CallbackContext,
    CallbackProvider,
    DedupeRule,
    Observation,
    PollProvider,
    dedupe_rule,
)
from relay.providers.betterprompt import BetterPrompt
from relay.providers.flora import Flora, FloraAPI
from relay.providers.runflow import Runflow, RunflowAPI

__all__ = ["CallbackContext", "CallbackProvider", "DedupeRule", "Observation", "PollProvider",
           "Runflow", "callback_providers", "dedupe_rule", "poll_providers"]


def callback_providers(settings: Settings) -> dict[str, CallbackProvider]:
    """The providers that may call relay back, by the name in their callback route."""
    return {
        "runflow": Runflow([s.reveal() for s in settings.runflow_callback_secrets]),
        "flora": Flora([s.reveal() for s in settings.flora_webhook_secrets]),
    }


def poll_providers(settings: Settings) -> dict[str, PollProvider]:
    """The providers relay can poll: those with an API key configured."""
    out: dict[str, PollProvider] = {}
    for name, api, cls in (("betterprompt", settings.betterprompt, BetterPrompt),
                           ("flora", settings.flora, FloraAPI),
                           ("runflow", settings.runflow, RunflowAPI)):
        if api.api_key:
            out[name] = cls(api.api_key.reveal(), api.base_url)
    return out


def rate_limit(settings: Settings, provider: str) -> float | None:
    """Requests per second to `provider` for the whole deployment; None: no documented limit."""
    if provider == "betterprompt":
        return settings.betterprompt.rate_limit
    if provider == "flora":
        return settings.flora.rate_limit
    return None


# The registry's read side, which the API, OpenAPI document, CLI and scheduler read.
# (Interim: the names are still written out here until the registry declares each provider once.)
def names() -> tuple[str, ...]:
    """Every provider relay knows, sorted."""
    return ("betterprompt", "flora", "runflow")


def callback_names() -> tuple[str, ...]:
    """The providers that may call relay back (a `/callbacks/<name>` route each)."""
    return ("flora", "runflow")


def poll_names() -> tuple[str, ...]:
    """The providers whose runs relay can poll (given an API key)."""
    return ("betterprompt", "flora", "runflow")
