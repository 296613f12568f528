"""The provider registry: each provider's spec (`relay.catalog`) paired with its adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.catalog import SPECS, ProviderSpec
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

__all__ = ["ADAPTERS", "Adapters", "CallbackContext", "CallbackProvider", "DedupeRule",
           "Observation", "PollProvider", "callback_names", "callback_providers", "dedupe_rule",
           "names", "poll_names", "poll_providers", "spec"]


@dataclass(frozen=True)
class Adapters:
    """A provider's code: what takes in its callbacks, and what reads its runs."""

    callback: Callable[[Sequence[str]], CallbackProvider] | None = None  # given its secrets
    poll: Callable[[str, str], PollProvider] | None = None  # given its API key and base URL


# Adding a provider: its adapters in a module here, its spec in the catalog, its entry below.
# The API, the OpenAPI document, the CLI, the store and the scheduler read the rest from the
# functions that follow.
ADAPTERS: dict[str, Adapters] = {
    "betterprompt": Adapters(poll=BetterPrompt),
    "flora": Adapters(callback=Flora, poll=FloraAPI),
    "runflow": Adapters(callback=Runflow, poll=RunflowAPI),
}


def names() -> tuple[str, ...]:
    """Every provider relay knows, sorted."""
    return tuple(sorted(SPECS))


def callback_names() -> tuple[str, ...]:
    """The providers that may call relay back (a `/callbacks/<name>` route each)."""
    return tuple(name for name in names() if ADAPTERS[name].callback is not None)


def poll_names() -> tuple[str, ...]:
    """The providers whose runs relay can poll (given an API key)."""
    return tuple(name for name in names() if ADAPTERS[name].poll is not None)


def spec(name: str) -> ProviderSpec:
    return SPECS[name]


def callback_providers(settings: Settings) -> dict[str, CallbackProvider]:
    """Every provider that may call relay back, by the name in its callback route."""
    out: dict[str, CallbackProvider] = {}
    for name in callback_names():
        make = ADAPTERS[name].callback
        assert make is not None
        out[name] = make([s.reveal() for s in settings.provider(name).callback_secrets])
    return out


def poll_providers(settings: Settings) -> dict[str, PollProvider]:
    """The providers this process can poll: those with an API key configured."""
    out: dict[str, PollProvider] = {}
    for name in poll_names():
        make, configured = ADAPTERS[name].poll, settings.provider(name)
        if make is not None and configured.api_key:
            out[name] = make(configured.api_key.reveal(), configured.base_url)
    return out
