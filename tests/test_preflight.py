"""relay preflight: checks Redis, prepares the consumer group, fails with one clear line."""

from __future__ import annotations

import subprocess
import sys

import redis

from tests.helpers import ROOT, RedisClusterServer, RedisServer, free_port, relay_env


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


def test_preflight_passes_with_a_warning_when_redis_hides_config(prefix: str) -> None:
    locked = RedisServer(extra=["--rename-command", "CONFIG", ""]).start()
    try:
        proc = preflight(relay_env(locked.url, prefix))
        assert proc.returncode == 0, proc.stderr
        assert "WARNING" in proc.stderr and "CONFIG" in proc.stderr
    finally:
        locked.stop()
