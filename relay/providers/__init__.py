"""Provider adapters; adding a provider means adding one module and one line here."""

from __future__ import annotations

from relay.config import Settings
from relay.providers.base import (
    CallbackContext,
    CallbackProvider,
    DedupeRule,
    dedupe_key,
    dedupe_rule,
)
from relay.providers.runflow import Runflow

__all__ = ["CallbackContext", "CallbackProvider", "DedupeRule", "Runflow", "callback_providers",
           "dedupe_key", "dedupe_rule"]


def callback_providers(settings: Settings) -> dict[str, CallbackProvider]:
    """The providers that may call relay back, by the name in their callback route."""
    return {
        "runflow": Runflow([s.reveal() for s in settings.runflow_callback_secrets]),
    }
