"""The Redis client: bounded pool, timeouts, and "Redis is unavailable" as one exception."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from relay.config import Settings
from relay.errors import StorageUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# Errors that mean "Redis cannot take this now", as opposed to a bug in a command.
_UNAVAILABLE_PREFIXES = ("OOM", "MISCONF", "READONLY", "LOADING", "CLUSTERDOWN", "MASTERDOWN",
                         "TRYAGAIN", "BUSY ")

# redis-py raises these as their own classes, whose text no longer carries the Redis prefix.
_UNAVAILABLE_CLASSES = (rexc.ConnectionError, rexc.TimeoutError, OSError, rexc.OutOfMemoryError,
                        rexc.ReadOnlyError, rexc.BusyLoadingError, rexc.ClusterDownError,
                        rexc.MasterDownError, rexc.TryAgainError)


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, _UNAVAILABLE_CLASSES):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


def storage_op(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis being unreachable, hung or full into StorageUnavailable (HTTP 503)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if _unavailable(exc):
                raise StorageUnavailable(f"storage is unavailable: {type(exc).__name__}") from exc
            raise

    return wrapper


def make_client(settings: Settings, url: str, *, max_connections: int,
                socket_timeout: float = 5.0, health_check_interval: int = 10) -> aioredis.Redis:
    """A redis-py asyncio client with a bounded pool, timeouts and reconnect back-off.

    The pool blocks (up to 5 s) when all `REDIS_MAX_CONNECTIONS` are busy: redis-py's default
    pool raises at once instead, which turned ordinary bursts of callbacks into 503s.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=health_check_interval,
        # The asyncio Retry class: the sync one looks compatible and silently does not retry.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 2),
        retry_on_error=[rexc.ConnectionError],
    )
    return aioredis.Redis.from_pool(pool)
