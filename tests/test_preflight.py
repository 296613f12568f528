"""Server process start: preflight checks Redis and fails with one clear line; each server
process announces itself in one line that carries no secret."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from relay import __version__
from tests.helpers import (
    ROOT,
    RedisClusterServer,
    RedisServer,
    RelayProcess,
    free_port,
    relay_env,
)


def preflight(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "preflight"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_preflight_passes_and_creates_the_consumer_group(
        redis_server: RedisServer, prefix: str) -> None:
    proc = preflight(relay_env(redis_server, prefix))
    assert proc.returncode == 0, proc.stderr
    assert "preflight ok" in proc.stdout
    groups = redis.Redis.from_url(redis_server.url).xinfo_groups("{" + prefix + "}:q")
    assert [g["name"] for g in groups] == [b"delivery"]


def test_preflight_warns_loudly_when_redis_may_evict(prefix: str) -> None:
    evicting = RedisServer(extra=["--maxmemory-policy", "allkeys-lru"]).start()
    try:
        proc = preflight(relay_env(evicting.url, prefix))
        assert proc.returncode == 0
        assert "WARNING" in proc.stderr and "noeviction" in proc.stderr
    finally:
        evicting.stop()


def test_preflight_fails_with_one_line_when_redis_is_unreachable(prefix: str) -> None:
    proc = preflight(relay_env(f"redis://127.0.0.1:{free_port()}/0", prefix))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "Redis is not reachable" in line


def test_preflight_on_a_cluster_needs_redis_cluster_true_and_then_passes(prefix: str) -> None:
    cluster = RedisClusterServer().start()
    try:
        plain = preflight(relay_env(cluster.url, prefix))
        assert plain.returncode == 1
        (line,) = plain.stderr.strip().splitlines()
        assert "REDIS_CLUSTER=true" in line
        proc = preflight(relay_env(cluster, prefix))
        assert proc.returncode == 0, proc.stderr
        assert "preflight ok" in proc.stdout
    finally:
        cluster.stop()


def test_redis_cluster_true_against_a_single_redis_fails_with_one_line(
        redis_server: RedisServer, prefix: str) -> None:
    proc = preflight(relay_env(redis_server, prefix, REDIS_CLUSTER="true"))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "REDIS_CLUSTER=true" in line


@pytest.mark.parametrize("role", ["web", "worker"])
def test_a_server_process_logs_one_start_line_without_secrets(
        redis_server: RedisServer, prefix: str, role: str) -> None:
    """Version, role, Redis host and port, the non-secret settings; no password, key or secret."""
    if redis_server.cluster:
        pytest.skip("one Redis user on one server is enough to see the password left out")
    password = "redis-pass-Zq81"
    user = f"{prefix}-user"
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                     commands=["+@all"])
    secrets = {"REDIS_URL": f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0",
               "RELAY_SECRET_KEY": "secret-key-Kx4b7Qm2Lw9p", "RELAY_API_KEYS": "api-key-Hv3n",
               "RUNFLOW_CALLBACK_SECRETS": "rf-secret-Pd6s", "FLORA_WEBHOOK_SECRETS": "fl-sec-Tz2",
               "BETTERPROMPT_API_KEY": "bp-key-Wr7c", "FLORA_API_KEY": "fl-key-Mb5e"}
    process = RelayProcess(role, {**relay_env(redis_server, prefix), **secrets})
    try:
        text = process.start().log()
    finally:
        process.stop()
        admin.acl_deluser(user)
    for value in (password, user, *secrets.values()):
        assert value not in text, value
    lines = [json.loads(line) for line in text.splitlines() if '"relay_starting"' in line]
    assert len(lines) == 1, text
    (start,) = lines
    assert start["version"] == __version__ and start["role"] == role
    assert start["redis"] == f"redis://127.0.0.1:{redis_server.port}"
    assert start["key_prefix"] == prefix and start["betterprompt_polled"] is True
    assert start["retry_schedule"] == [0.2, 0.4] and start["port"] == process.port


def test_preflight_passes_with_a_warning_when_redis_hides_config(prefix: str) -> None:
    locked = RedisServer(extra=["--rename-command", "CONFIG", ""]).start()
    try:
        proc = preflight(relay_env(locked.url, prefix))
        assert proc.returncode == 0, proc.stderr
        assert "WARNING" in proc.stderr and "CONFIG" in proc.stderr
    finally:
        locked.stop()
