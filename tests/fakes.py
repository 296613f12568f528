"""Fake BetterPrompt, FLORA and Runflow APIs: real HTTP on 127.0.0.1, documented shapes,
scripted answers per run, every request recorded."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.helpers import free_port, wait_until

FLORA_SECRET = "whsec_flora_test_secret"


@dataclass
class Step:
    """One scripted answer."""

    status: int = 200
    body: Any = None  # a JSON value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    at: float
    path: str
    run_id: str
    technique_id: str | None
    authorization: str | None


def bp(status: str, outputs: list[dict[str, str]] | None = None, *, tokens: int | None = 0,
       credits: int | None = None, run_id: str = "r") -> Step:
    """A BetterPrompt `GET /v1/runs/{runId}` answer."""
    data: dict[str, Any] = {"runId": run_id, "outputs": outputs or [], "runStatus": status}
    if tokens is not None:
        data["tokens"] = tokens
    if credits is not None:
        data["credits"] = credits
    return Step(body={"status": "SUCCESS", "data": data})


def flora(status: str, *, progress: float = 0, outputs: list[dict[str, str]] | None = None,
          run_id: str = "run_x", **extra: Any) -> Step:
    """A FLORA `GET /techniques/{id}/runs/{runId}` answer."""
    doc: dict[str, Any] = {"run_id": run_id, "status": status, "progress": progress,
                           "created_at": 1_778_061_600_000, "outputs": outputs or []}
    doc.update(extra)
    return Step(body=doc)


def runflow(status_code: str, **extra: Any) -> Step:
    """A Runflow `GET /v1/runs/{id}` answer."""
    doc: dict[str, Any] = {"id": "01J0", "status_code": status_code, "output": None,
                           "created_at": "2026-05-06T10:00:00.000+00:00", "completed_at": None,
                           "duration_ms": None}
    doc.update(extra)
    return Step(body=doc)


class FakeProvider:
    """Serves `GET /v1/runs/{id}` (BetterPrompt, Runflow) and
    `GET /techniques/{technique}/runs/{id}` (FLORA) from per-run scripts: each request takes the
    next step, and the last step repeats. Unscripted runs get `default(run_id)` (404 if None)."""

    def __init__(self, default: Callable[[str], Step] | None = None) -> None:
        self.port = free_port()
        self.scripts: dict[str, list[Step]] = {}
        self.default = default
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, run_id: str, *steps: Step) -> None:
        with self._lock:
            self.scripts[run_id] = list(steps)

    def requests_for(self, run_id: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.run_id == run_id]

    def _next(self, run_id: str) -> Step:
        with self._lock:
            steps = self.scripts.get(run_id)
            if steps:
                return steps.pop(0) if len(steps) > 1 else steps[0]
        if self.default is not None:
            return self.default(run_id)
        return Step(404, {"status": "NOT_FOUND_ERROR", "message": "no such run", "data": None})

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        parts = scope["path"].strip("/").split("/")
        technique = None
        if len(parts) == 4 and parts[0] == "techniques" and parts[2] == "runs":
            technique, run_id = parts[1], parts[3]
        elif len(parts) == 3 and parts[:2] == ["v1", "runs"]:
            run_id = parts[2]
        else:
            await _answer(send, Step(404, {"error": "no route"}))
            return
        from urllib.parse import unquote

        run_id = unquote(run_id)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.requests.append(Seen(time.time(), scope["path"], run_id,
                                      unquote(technique) if technique else None,
                                      headers.get("authorization")))
        step = self._next(run_id)
        if step.delay:
            await asyncio.sleep(step.delay)
        await _answer(send, step)

    def start(self) -> FakeProvider:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="off", loop="asyncio",
                                interface="asgi3", timeout_graceful_shutdown=1, backlog=2048)
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


async def _answer(send: Any, step: Step) -> None:
    body = step.body if isinstance(step.body, bytes) else json.dumps(step.body).encode()
    headers = [(b"content-type", b"application/json"),
               *((k.encode(), v.encode()) for k, v in step.headers.items())]
    await send({"type": "http.response.start", "status": step.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def flora_signature(body: bytes, *, t: int | None = None, secret: str = FLORA_SECRET) -> str:
    stamp = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def flora_callback(run_id: str, *, kind: str = "run.completed", delivery_id: str = "whd_1",
                   **data: Any) -> bytes:
    doc = {"id": delivery_id, "type": kind, "api_version": "2026-06-11",
           "created_at": 1_778_061_661_234,
           "data": {"run_id": run_id, "run_type": "technique", "workspace_id": "ws_1",
                    "status": "completed" if kind == "run.completed" else "failed", **data}}
    return json.dumps(doc).encode()


def succeeding_betterprompt() -> FakeProvider:
    """A started fake BetterPrompt on which every run has already succeeded with a text."""
    return FakeProvider(default=lambda run_id: bp("succeeded", [
        {"type": "text", "data": f"done {run_id}"}], run_id=run_id)).start()
