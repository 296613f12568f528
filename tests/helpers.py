"""Test parts: real redis-server processes, real uvicorn subscribers, real relay processes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
RUNFLOW_SECRET = "whsec_runflow_test_secret"
API_KEY = "test-admin-key-0123456789"
SECRET_KEY = "test-secret-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) exists and is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def wait_until(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def eventually(check: Callable[[], Any], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s")


class RedisServer:
    """A redis-server child on a free port, in its own directory; killable and restartable."""

    cluster = False

    def __init__(self, *, appendonly: bool = False, extra: list[str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-redis-"))
        self.appendonly = appendonly
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install -y redis-server)"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--maxmemory-policy", "noeviction", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServer:
    """Three redis-server masters on free ports, joined by `redis-cli --cluster create`."""

    cluster = True

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer(appendonly=True, port=free_cluster_port(), extra=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000"]) for _ in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed (apt-get install -y redis-server)"
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{node.port}" for node in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60)
        wait_until(self._ok, 30, interval=0.1)
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            info = subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "info"],
                                  capture_output=True, text=True, timeout=5).stdout
            if "cluster_state:ok" not in info:
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def relay_env(redis: str | RedisServer | RedisClusterServer, prefix: str, **extra: str
              ) -> dict[str, str]:
    """The environment of a relay process; pass the server (not its URL) to follow its kind."""
    inherited = ("RELAY_", "RUNFLOW_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update(
        REDIS_URL=redis if isinstance(redis, str) else redis.url,
        REDIS_CLUSTER="true" if getattr(redis, "cluster", False) else "false",
        RELAY_KEY_PREFIX=prefix,
        RELAY_SECRET_KEY=SECRET_KEY,
        RELAY_API_KEYS=API_KEY,
        RUNFLOW_CALLBACK_SECRETS=RUNFLOW_SECRET,
        RELAY_ALLOW_PRIVATE_TARGETS="true",
        RELAY_LOG_FORMAT="json",
        RELAY_RETRY_SCHEDULE="0.2,0.4",
        RELAY_RETRY_JITTER="0",
        RELAY_DELIVERY_TIMEOUT="2",
        RELAY_CLAIM_TIMEOUT="3",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class RelayProcess:
    """`python -m relay <command>` as a real child process, with its log captured to a file."""

    def __init__(self, command: str, env: dict[str, str], *, port: int | None = None,
                 cwd: Path | None = None) -> None:
        self.command = command
        self.port = port or free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.cwd = cwd or ROOT
        self.log_path = Path(tempfile.mkstemp(prefix=f"relay-{command}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> RelayProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", self.command, "--host", "127.0.0.1"]
            if self.command in ("web", "serve") else [sys.executable, "-m", "relay", self.command],
            env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
        )
        if wait and self.command in ("web", "serve"):
            wait_until(self._ready, 30)
        elif wait:
            wait_until(lambda: b"worker_started" in self.log_path.read_bytes(), 30)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"relay {self.command} exited:\n{self.log()}")
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Subscriber:
    """A real HTTP subscriber (uvicorn in a thread) that records what it receives.

    `behaviour(request_number) -> (status, headers, delay_seconds)` scripts its answers.
    """

    behaviour: Callable[[int], tuple[int, dict[str, str], float]] = field(
        default=lambda n: (200, {}, 0.0))
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            number = len(self.received)
            self.received.append(Received(scope["path"], headers, body, time.time()))
        status, extra, delay = self.behaviour(number)
        if delay:
            await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in extra.items()]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    def start(self) -> Subscriber:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="off", loop="asyncio", interface="asgi3",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server is not None and self._server.started, 10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(5)

    def ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get("webhook-id", "") for r in self.received]


def runflow_signature(body: bytes, secret: str = RUNFLOW_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def runflow_body(run_id: str, event: str = "run.completed", **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "event": event,
        "run_id": run_id,
        "status": {"run.completed": "succeeded", "run.failed": "failed",
                   "run.cancelled": "canceled"}.get(event, "succeeded"),
        "output": {"image_urls": ["https://cdn.example.com/a.png"]},
        "duration_ms": 102345,
        "created_at": "2026-05-06T10:00:00.000+00:00",
        "completed_at": "2026-05-06T10:01:42.000+00:00",
        "metadata": None,
    }
    doc.update(fields)
    return json.dumps(doc).encode()


def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}"}
