"""The embedded store with real processes: one `relay serve` per data directory, no orphans."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import RelayProcess, free_port, relay_env, wait_until


def embedded_env() -> dict[str, str]:
    env = relay_env("", "relay")
    for name in ("REDIS_URL", "RELAY_SECRET_KEY", "RELAY_API_KEYS", "RELAY_KEY_PREFIX"):
        del env[name]
    return env


def running(pid: int) -> bool:
    """Alive and not a zombie (a reparented child may wait unreaped under a container's init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def redis_children(serve: RelayProcess) -> list[int]:
    assert serve.proc is not None
    found = []
    for task in Path(f"/proc/{serve.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
    return found


def redis_servers_on(socket_path: Path) -> list[int]:
    """Every running redis-server whose command line names this socket."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in cmdline and str(socket_path).encode() in cmdline \
                and running(int(entry.name)):
            found.append(int(entry.name))
    return found


def aof_state(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (data_dir / "appendonlydir").iterdir()}


def api_key(data_dir: Path) -> dict[str, str]:
    return {"authorization": f"Bearer {(data_dir / 'api-key').read_text().strip()}"}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relay-embedded-"))
    yield path
    for pid in redis_servers_on(path / "relay-data" / "redis.sock"):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def test_second_serve_on_a_data_dir_in_use_refuses_in_one_line_and_leaves_the_first_serving(
        workdir: Path) -> None:
    data_dir = workdir / "relay-data"
    first = RelayProcess("serve", embedded_env(), port=free_port(), cwd=workdir).start()
    second = RelayProcess("serve", embedded_env(), port=free_port(), cwd=workdir)
    try:
        assert first.proc is not None
        socket_inode = (data_dir / "redis.sock").stat().st_ino
        (redis_pid,) = redis_children(first)
        aof = aof_state(data_dir)
        second.start(wait=False)
        assert second.wait(15) != 0
        # The refusal is all it says: no key printed, no start-up line, nothing of the first's.
        (refusal,) = second.log().strip().splitlines()
        assert "in use" in refusal and f"pid {first.proc.pid}" in refusal
        assert "Traceback" not in second.log()
        assert (data_dir / "redis.sock").stat().st_ino == socket_inode
        assert redis_servers_on(data_dir / "redis.sock") == [redis_pid]
        assert aof_state(data_dir) == aof
        assert httpx.get(f"{first.base_url}/readyz", timeout=5).status_code == 200
        r = httpx.post(f"{first.base_url}/v1/subscriptions", headers=api_key(data_dir),
                       json={"url": "http://127.0.0.1:9/hook"}, timeout=5)
        assert r.status_code == 201
    finally:
        second.stop()
        first.stop()
    assert first.proc.returncode == 0


def test_redis_server_of_a_serve_killed_by_sigkill_exits_within_seconds(workdir: Path) -> None:
    serve = RelayProcess("serve", embedded_env(), port=free_port(), cwd=workdir).start()
    (redis_pid,) = redis_children(serve)
    serve.signal(signal.SIGKILL)
    serve.wait(5)
    wait_until(lambda: not running(redis_pid), 5)


def test_next_serve_ends_an_orphaned_redis_server_and_starts_with_the_data_intact(
        workdir: Path) -> None:
    """A redis-server left by a dead predecessor gets SIGTERM (it flushes its AOF) first."""
    data_dir = workdir / "relay-data"
    socket_path = data_dir / "redis.sock"
    serve = RelayProcess("serve", embedded_env(), port=free_port(), cwd=workdir).start()
    try:
        r = httpx.post(f"{serve.base_url}/v1/subscriptions", headers=api_key(data_dir),
                       json={"url": "http://127.0.0.1:9/hook"}, timeout=5)
        assert r.status_code == 201
        subscription = r.json()["id"]
    finally:
        serve.stop()
    # The orphan, as the embedded store starts it, from a shell that exits at once.
    binary = shutil.which("redis-server")
    subprocess.run(
        ["sh", "-c", '"$0" --port 0 --unixsocket "$1" --unixsocketperm 700 --dir "$2" '
                     '--appendonly yes --appendfsync everysec --save "" --daemonize no '
                     '>/dev/null 2>&1 & echo $! > "$2/redis.pid"',
         str(binary), str(socket_path), str(data_dir)], check=True, start_new_session=True)
    orphan = int((data_dir / "redis.pid").read_text())
    wait_until(lambda: subprocess.run(["redis-cli", "-s", str(socket_path), "ping"],
                                      capture_output=True, text=True).stdout.strip() == "PONG")
    # Written to the orphan only: intact afterwards if it flushed its AOF when it was ended.
    subprocess.run(["redis-cli", "-s", str(socket_path), "set", "orphan-wrote", "1"],
                   check=True, capture_output=True)
    serve = RelayProcess("serve", embedded_env(), port=free_port(), cwd=workdir).start()
    try:
        assert not running(orphan)
        assert redis_servers_on(socket_path) == redis_children(serve)
        assert "embedded_store_orphan" in serve.log()
        r = httpx.get(f"{serve.base_url}/v1/subscriptions/{subscription}",
                      headers=api_key(data_dir), timeout=5)
        assert r.status_code == 200
        written = subprocess.run(["redis-cli", "-s", str(socket_path), "get", "orphan-wrote"],
                                 capture_output=True, text=True).stdout.strip()
        assert written == "1"
    finally:
        serve.stop()
    assert serve.proc is not None and serve.proc.returncode == 0
