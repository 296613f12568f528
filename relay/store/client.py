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


# Why Redis refused, for the metric: (error class or reply prefix, reason). First match wins,
# so subclasses come before their bases (BusyLoadingError is a ConnectionError, the builtin
# TimeoutError an OSError).
_REASONS: tuple[tuple[type[BaseException] | str, str], ...] = (
    (rexc.OutOfMemoryError, "oom"), ("OOM", "oom"),
    (rexc.ReadOnlyError, "readonly"), ("READONLY", "readonly"),
    (rexc.BusyLoadingError, "loading"), ("LOADING", "loading"),
    ("MISCONF", "misconf"), ("BUSY ", "busy"),
    (rexc.TimeoutError, "timeout"), (TimeoutError, "timeout"),
)


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, _UNAVAILABLE_CLASSES):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


def _reason(exc: Exception) -> str:
    for match, reason in _REASONS:
        if isinstance(match, str):
            if isinstance(exc, rexc.ResponseError) and str(exc).startswith(match):
                return reason
        elif isinstance(exc, match):
            return reason
    if isinstance(exc, rexc.ResponseError):
        return "cluster"  # CLUSTERDOWN, MASTERDOWN, TRYAGAIN
    return "unreachable"


def storage_op(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis being unreachable, hung or full into StorageUnavailable (HTTP 503)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if _unavailable(exc):
                raise StorageUnavailable(f"storage is unavailable: {type(exc).__name__}",
                                         reason=_reason(exc)) from exc
            raise

    return wrapper


# A hung Redis must turn into a 503 within 2 s (CONTRACT: the provider retries): one command
# waits at most COMMAND_TIMEOUT, after at most POOL_WAIT for a free connection, and a timeout is
# never retried (retrying a hung server only multiplies the wait). Blocking reads pass their own
# longer socket timeout.
COMMAND_TIMEOUT = 1.0
POOL_WAIT = 0.5


def make_client(settings: Settings, url: str, *, max_connections: int,
                socket_timeout: float = COMMAND_TIMEOUT,
                health_check_interval: int = 10) -> aioredis.Redis:
    """A redis-py asyncio client with a bounded pool, timeouts and reconnect back-off.

    The pool blocks (up to POOL_WAIT) when all `REDIS_MAX_CONNECTIONS` are busy: redis-py's
    default pool raises at once instead, which turned ordinary bursts of callbacks into 503s.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=COMMAND_TIMEOUT,
        health_check_interval=health_check_interval,
        # The asyncio Retry class: the sync one looks compatible and silently does not retry.
        # Only a broken connection is retried (Redis restarted): its default also retries
        # timeouts, which made a hung Redis take three socket timeouts to answer.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 2,
                    supported_errors=(rexc.ConnectionError,)),
        retry_on_error=[rexc.ConnectionError],
    )
    return aioredis.Redis.from_pool(pool)
