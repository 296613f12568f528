"""Admin commands: subscriptions, callback URLs, events and deliveries, straight on the store."""

from __future__ import annotations
