"""Shared fixtures: one real redis-server per session, a fresh key prefix per test."""

from __future__ import annotations

import inspect
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from relay.config import Settings
from relay.service import Relay
from relay.store import Store
from tests.helpers import (
    API_KEY,
    RUNFLOW_SECRET,
    SECRET_KEY,
    RedisClusterServer,
    RedisServer,
    Subscriber,
)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Mark every coroutine test for anyio before parametrization sees it."""
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# RELAY_TEST_REDIS=cluster runs every test on a three-master Redis Cluster; by default the tests
# marked `both_redis` (the end-to-end and storage-heavy modules) run on both kinds.
FORCED_KIND = os.environ.get("RELAY_TEST_REDIS", "")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_kind" not in metafunc.fixturenames:
        return
    if FORCED_KIND in ("standalone", "cluster"):
        kinds = [FORCED_KIND]
    elif metafunc.definition.get_closest_marker("both_redis"):
        kinds = ["standalone", "cluster"]
    else:
        kinds = ["standalone"]
    metafunc.parametrize("redis_kind", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def redis_server(redis_kind: str) -> Iterator[RedisServer | RedisClusterServer]:
    """A real redis-server (or a three-master cluster) on free ports, never the shared 6379."""
    server: RedisServer | RedisClusterServer = (
        RedisClusterServer() if redis_kind == "cluster" else RedisServer(appendonly=True))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """Every test gets its own key prefix, so tests never see each other's data."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def settings(redis_server: RedisServer, prefix: str) -> Settings:
    return Settings.from_env({
        "REDIS_URL": redis_server.url,
        "REDIS_CLUSTER": "true" if redis_server.cluster else "false",
        "RELAY_KEY_PREFIX": prefix,
        "RELAY_SECRET_KEY": SECRET_KEY,
        "RELAY_API_KEYS": API_KEY,
        "RUNFLOW_CALLBACK_SECRETS": RUNFLOW_SECRET,
        "RELAY_ALLOW_PRIVATE_TARGETS": "true",
        "RELAY_RETRY_SCHEDULE": "0.2,0.4",
        "RELAY_RETRY_JITTER": "0",
        "RELAY_DELIVERY_TIMEOUT": "2",
        "RELAY_CLAIM_TIMEOUT": "1",
        "RELAY_LOG_FORMAT": "json",
    })


@pytest.fixture
async def store(settings: Settings, redis_server: RedisServer) -> AsyncIterator[Store]:
    s = Store(settings, redis_server.url)
    await s.ensure_groups()
    yield s
    await s.aclose()


@pytest.fixture
async def relay(settings: Settings, store: Store) -> Relay:
    r = Relay(settings, store)
    await r.subs.refresh()
    return r


@pytest.fixture
async def client(settings: Settings, redis_server: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (ASGI) with its lifespan running, for API-level tests."""
    from relay.web.app import create_app

    app = create_app(settings, redis_server.url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as c:
            yield c


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    sub = Subscriber().start()
    yield sub
    sub.stop()
