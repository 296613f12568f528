"""The provider registry: each provider declared once, and a fourth one, registered there and
nowhere else, is configured, accepted by the API, polled to its end and counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from relay import catalog, providers
from relay.catalog import ProviderSpec
from relay.config import ConfigError, Settings
from relay.heartbeat import Heartbeat
from relay.outbound import ProviderClient
from relay.poller import Poller
from relay.providers import Adapters, Observation
from relay.service import Relay
from relay.store import Store
from relay.tracking import Tracking
from relay.web.app import create_app
from tests.fakes import FakeProvider, Step
from tests.helpers import RedisServer, admin_headers, eventually, relay_env


def test_every_provider_in_the_catalog_has_its_adapters_and_callbacks_have_secrets() -> None:
    assert providers.names() == ("betterprompt", "flora", "runflow")
    assert set(providers.ADAPTERS) == set(catalog.SPECS)
    for name, spec in catalog.SPECS.items():
        assert spec.name == name
        adapters = providers.ADAPTERS[name]
        assert (adapters.callback is not None) == (spec.callback_secrets is not None), name
    assert providers.callback_names() == ("flora", "runflow")
    assert providers.poll_names() == ("betterprompt", "flora", "runflow")


class AcmeAPI:
    """A made-up provider: `GET {base}/v1/runs/{id}` answers {"state": ..., "text": ...}."""

    name = "acme"
    honours_retry_after = False
    wraps_outputs = True

    def __init__(self, api_key: str, base_url: str) -> None:
        self._headers = {"authorization": f"Token {api_key}"}
        self._base = base_url

    def run_url(self, run_id: str, technique_id: str | None) -> str:
        return f"{self._base}/v1/runs/{quote(run_id, safe='')}"

    def headers(self) -> dict[str, str]:
        return self._headers

    def observe(self, doc: Any, *, outputs_seen: float) -> Observation:
        if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
            raise ValueError("an acme run has a state")
        state: str = doc["state"]
        status = {"working": "running", "done": "succeeded"}.get(state, state)
        text = doc.get("text")
        return Observation(status, outputs=[{"type": "text", "text": text}] if text else None)


@pytest.fixture
def acme() -> Iterator[FakeProvider]:
    """A fourth provider in the registry (and only there), served by a fake API."""
    fake = FakeProvider().start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(catalog.SPECS, "acme",
                      ProviderSpec("acme", "ACME", "https://api.acme.invalid", rate_limit=50.0))
        patch.setitem(providers.ADAPTERS, "acme", Adapters(poll=AcmeAPI))
        yield fake
    fake.stop()


def test_a_registered_provider_is_configured_from_its_own_variables(
        acme: FakeProvider) -> None:
    base = {"ACME_API_KEY": "acme-key", "ACME_RATE_LIMIT": "7"}
    configured = Settings.from_env(base).provider("acme")
    assert configured.api_key is not None and configured.api_key.reveal() == "acme-key"
    assert (configured.base_url, configured.rate_limit) == ("https://api.acme.invalid", 7.0)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**base, "ACME_BASE_URL": "ftp://acme"})
    assert err.value.variable == "ACME_BASE_URL"
    assert "acme" in providers.names() and "acme" in providers.poll_names()
    assert "acme" not in providers.callback_names()


@pytest.fixture
async def worker_and_api(acme: FakeProvider, redis_server: RedisServer, prefix: str
                         ) -> AsyncIterator[tuple[Relay, httpx.AsyncClient]]:
    settings = Settings.from_env(relay_env(
        redis_server, prefix, ACME_API_KEY="acme-key", ACME_BASE_URL=acme.url,
        RELAY_POLL_MIN_INTERVAL="0.05", RELAY_POLL_MAX_INTERVAL="0.2"))
    store = Store(settings, redis_server.url)
    relay = Relay(settings, store)
    client = ProviderClient(max_bytes=settings.max_body_bytes)
    poller = Poller(relay, providers.poll_providers(settings), client)
    heartbeat = Heartbeat(relay, poller.name, poller.providers)
    assert heartbeat.providers == ["acme"]
    await heartbeat.beat()
    stop = asyncio.Event()
    jobs = asyncio.gather(poller.run(stop, grace=1), heartbeat.run(stop))
    app = create_app(settings, redis_server.url)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay") as api:
                yield relay, api
    finally:
        stop.set()
        await jobs
        await client.aclose()
        await store.aclose()


async def test_a_fourth_provider_registered_alone_is_tracked_through_the_api_and_polled_to_its_end(
        acme: FakeProvider, worker_and_api: tuple[Relay, httpx.AsyncClient]) -> None:
    relay, api = worker_and_api
    h = admin_headers()
    acme.script("a1", Step(body={"state": "working"}),
                Step(body={"state": "done", "text": "made by acme"}))
    made = await api.post("/v1/runs", headers=h, json={"provider": "acme", "run_id": "a1"})
    assert made.status_code == 201, made.text
    tracking = Tracking(relay)

    async def finished() -> bool:
        return bool((await tracking.show("acme", "a1"))["state"] == "finished")

    await eventually(finished, within=10)
    shown = (await api.get("/v1/runs/acme/a1", headers=h)).json()
    events = [(await api.get(f"/v1/events/{e}", headers=h)).json() for e in shown["events"]]
    assert [(e["event"], e["status"]) for e in events] == [
        ("run.updated", "running"), ("run.completed", "succeeded")]
    assert events[-1]["provider"] == "acme" and events[-1]["source"] == "poll"
    assert events[-1]["output"] == {"outputs": [{"type": "text", "text": "made by acme"}]}
    assert {r.authorization for r in acme.requests_for("a1")} == {"Token acme-key"}
    listed = (await api.get("/v1/runs?provider=acme", headers=h)).json()
    assert [r["run_id"] for r in listed["data"]] == ["a1"]
    assert 'relay_tracked_runs{provider="acme"} 0.0' in (await api.get("/metrics")).text
