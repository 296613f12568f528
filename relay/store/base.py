"""The store's shell: its Redis clients and key names, which every part of the store shares."""

from __future__ import annotations

from typing import Any

from relay.config import Settings
from relay.store import scripts
from relay.store.client import drop_connections, make_client
from relay.store.keys import Keys
from relay.store.scripts import Atomic


class StoreBase:
    """Clients for one key prefix. Each part of the store is a mixin over this class that
    registers its own scripts in `__init__` (Store in the package face composes them)."""

    # Longest a queue read blocks; an idle worker sends one read per this many seconds.
    block_seconds = 60.0

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        # Typed Any on purpose: redis-py's annotations cannot express decode_responses=True, so
        # every reply would be typed bytes | str although this client only ever returns str.
        # REDIS_MAX_CONNECTIONS caps the process: one connection for blocking queue reads, one
        # for the poller's doorbell, the rest for everything else.
        self.redis: Any = make_client(settings, url,
                                      max_connections=max(settings.redis_max_connections - 2, 1))
        # Blocking queue reads hold their connection for the whole BLOCK; a separate client with
        # a longer socket timeout keeps them from tripping the 5 s timeout of ordinary commands.
        # No health-check PING before each read: a failed blocking read already says as much.
        self.blocking: Any = make_client(settings, url, max_connections=1,
                                         socket_timeout=self.block_seconds + 10,
                                         health_check_interval=0, retries=0)
        self.poll_blocking: Any = make_client(settings, url, max_connections=1,
                                              socket_timeout=self.block_seconds + 10,
                                              health_check_interval=0, retries=0)
        self._retention = max(1, int(settings.event_retention))
        self._exec_all = self.redis.register_script(scripts.EXEC_ALL)

    async def run_atomic(self, tx: Atomic) -> list[Any]:
        return list(await self._exec_all(keys=tx.keys, args=tx.args))

    async def interrupt_reads(self) -> None:
        """Close the blocking-read connections, ending any read in progress."""
        await drop_connections(self.blocking)
        await drop_connections(self.poll_blocking)

    async def aclose(self) -> None:
        for client in (self.redis, self.blocking, self.poll_blocking):
            await client.aclose()
