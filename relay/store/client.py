"""The Redis client: bounded pool, timeouts, and "Redis is unavailable" as one exception."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
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
    if isinstance(exc, rexc.SlotNotCoveredError) or (
            # The cluster client's word for "no node answers"; its other errors are bugs.
            isinstance(exc, rexc.RedisClusterException) and "cannot be connected" in str(exc)):
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


class _GatedCluster(RedisCluster):
    """RedisCluster whose commands wait for a free connection instead of failing.

    redis-py's cluster client raises MaxConnectionsError the moment a node's connections are
    all busy; relay's keys share one slot, so every burst would hit that one node and turn into
    503s. A semaphore over the process' commands queues them the way BlockingConnectionPool does
    for a single Redis.
    """

    def __init__(self, *args: Any, gate: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Semaphore(gate)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with _waited(self.gate):
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None
                 ) -> ClusterPipeline:
        return _GatedPipeline(self, transaction)  # type: ignore[abstract]


class _GatedPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True
                      ) -> list[Any]:
        gate = self.cluster_client.gate  # type: ignore[attr-defined]
        async with _waited(gate):
            return await super().execute(raise_on_error, allow_redirections)


@asynccontextmanager
async def _waited(gate: asyncio.Semaphore) -> AsyncIterator[None]:
    """Hold `gate`, waiting at most POOL_WAIT like the single-Redis pool does."""
    try:
        async with asyncio.timeout(POOL_WAIT):
            await gate.acquire()
    except TimeoutError:
        raise rexc.ConnectionError("no free Redis connection") from None
    try:
        yield
    finally:
        gate.release()


def writes_ahead_hang() -> StorageUnavailable:
    """Why a batched write that never got to start fails (see batching.GroupCommit)."""
    return StorageUnavailable("storage is unavailable: Redis has not answered the writes ahead",
                              reason="timeout")


def make_client(settings: Settings, url: str, *, max_connections: int,
                socket_timeout: float = COMMAND_TIMEOUT,
                health_check_interval: int = 10, retries: int = 2) -> Any:
    """A redis-py asyncio client with a bounded pool, timeouts and reconnect back-off.

    The pool blocks (up to POOL_WAIT) when all `REDIS_MAX_CONNECTIONS` are busy: redis-py's
    default pool raises at once instead, which turned ordinary bursts of callbacks into 503s. With
    `REDIS_CLUSTER=true` it is a cluster client that discovers the other nodes from `url`.
    `retries=0` for blocking reads: closing their connection must end them, not start them again.
    """
    common: dict[str, Any] = dict(
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=COMMAND_TIMEOUT,
        health_check_interval=health_check_interval,
        # The asyncio Retry class: the sync one looks compatible and silently does not retry.
        # Only a broken connection is retried (Redis restarted): its default also retries
        # timeouts, which made a hung Redis take three socket timeouts to answer.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries,
                    supported_errors=(rexc.ConnectionError,)),
    )
    if settings.redis_cluster:
        return _GatedCluster.from_url(
            url, gate=max_connections,
            # Room above the gate for the client's own topology reads.
            max_connections=max_connections + 2,
            # A node that is down must not keep a worker from starting; calls then give 503.
            require_full_coverage=False,
            **common,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT,
        retry_on_error=[rexc.ConnectionError], **common,
    )
    return aioredis.Redis.from_pool(pool)


async def drop_connections(client: Any) -> None:
    """Close every connection of `client` now, ending blocking reads in progress."""
    if isinstance(client, RedisCluster):
        await asyncio.gather(*(node.disconnect() for node in client.get_nodes()))
    else:
        await client.connection_pool.disconnect()
