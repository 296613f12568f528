"""Callback fuzzing over real sockets to a real `relay web`: header casing, duplicates, raw
bytes and body framing as uvicorn hands them to relay, oversized bodies declared or chunked."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import FLORA_SECRET, flora_signature
from tests.helpers import RedisServer, RelayProcess, relay_env, runflow_body, runflow_signature
from tests.test_fuzz import CODE

CAP = 64 * 1024


@pytest.fixture(scope="module")
def relay_web(redis_server: RedisServer) -> Iterator[RelayProcess]:
    env = relay_env(redis_server, "fw" + secrets.token_hex(4),
                    FLORA_WEBHOOK_SECRETS=FLORA_SECRET, RELAY_MAX_BODY_BYTES=str(CAP),
                    RELAY_LOG_LEVEL="warning")
    proc = RelayProcess("web", env).start()
    yield proc
    proc.stop()


def exchange(port: int, head: bytes, body_parts: Iterator[bytes] | list[bytes]
             ) -> tuple[int, dict[str, str], bytes]:
    """Send `head` then the body parts on a fresh connection (stopping early if relay answers
    first), and read the answer with h11."""
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # relay answered and closed before the whole body was sent
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    data = b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, headers, body


def request_head(path: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1",
             b"Connection: close", *(k + b": " + v for k, v in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def check_shape(status: int, headers: dict[str, str], body: bytes) -> Any:
    """< 500, JSON, CallbackAccepted on 200 or exactly the error shape otherwise."""
    assert 200 <= status < 500, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(body)
    if status == 200:
        assert set(doc) == {"ok", "event_id", "duplicate"}, doc
    else:
        assert set(doc) == {"error"}, doc
        allowed = {"code", "message", "details"} if status == 422 else {"code", "message"}
        assert {"code", "message"} <= set(doc["error"]) <= allowed, doc
        assert CODE.match(doc["error"]["code"]) and isinstance(doc["error"]["message"], str)
    return doc


def chunked(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def test_a_body_declared_larger_than_the_cap_is_413_before_it_is_sent(
        relay_web: RelayProcess) -> None:
    """Content-Length of 1 GB and only a few bytes sent: relay answers 413 at once instead of
    waiting for (or buffering) the body."""
    started = time.monotonic()
    status, headers, body = exchange(relay_web.port, request_head("/callbacks/runflow", [
        (b"Content-Length", b"1000000000"), (b"Runflow-Signature", b"0" * 64)]), [b"{"])
    doc = check_shape(status, headers, body)
    assert status == 413 and doc["error"]["code"] == "payload_too_large"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("route", ["/callbacks/runflow", "/callbacks/flora"])
def test_a_chunked_body_past_the_cap_is_413(relay_web: RelayProcess, route: str) -> None:
    """No Content-Length, Transfer-Encoding: chunked, 4x the cap in 1 kB chunks: 413."""
    body = b'{"run_id": "' + b"x" * (4 * CAP) + b'"}'
    status, headers, answer = exchange(relay_web.port, request_head(route, [
        (b"Transfer-Encoding", b"chunked")]), chunked(body, 1024))
    doc = check_shape(status, headers, answer)
    assert status == 413 and doc["error"]["code"] == "payload_too_large"


name_casings = st.sampled_from([str.lower, str.upper, str.title, lambda s: s.swapcase()])
header_bytes = st.binary(min_size=1, max_size=120).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7f).strip() or b"x")  # obs-text kept


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(provider=st.sampled_from(["runflow", "flora"]), casing=name_casings,
       valid=st.booleans(), copies=st.integers(0, 3), junk=header_bytes,
       framing=st.sampled_from(["length", "chunked"]), chunk=st.integers(1, 512),
       run=st.text("abcdef0123456789", min_size=1, max_size=12))
def test_headers_with_any_casing_duplicates_and_raw_bytes_over_the_wire(
        relay_web: RelayProcess, provider: str, casing: Any, valid: bool, copies: int,
        junk: bytes, framing: str, chunk: int, run: str) -> None:
    """The signature header in any casing, repeated, next to junk copies and raw non-ASCII
    bytes, the body sent with Content-Length or chunked: a valid signature sent once is
    accepted; anything else is 401; every answer is in the contract's shape."""
    body = runflow_body(f"wire-{run}") if provider == "runflow" else json.dumps({
        "id": f"whd_{secrets.token_hex(6)}", "type": "run.completed",
        "data": {"run_id": f"wire-{run}", "status": "completed"}}).encode()
    name = casing(f"{provider}-signature").encode()
    good = (runflow_signature(body) if provider == "runflow" else flora_signature(body)).encode()
    headers = [(name, good)] if valid else []
    headers += [(name, junk)] * copies
    headers += [(b"X-Junk", junk), (casing("content-type").encode(), junk)]
    framing_header = ((b"Content-Length", str(len(body)).encode()) if framing == "length"
                      else (b"Transfer-Encoding", b"chunked"))
    parts = [body] if framing == "length" else list(chunked(body, chunk))
    status, answer_headers, answer = exchange(
        relay_web.port, request_head(f"/callbacks/{provider}", [*headers, framing_header]),
        parts)
    doc = check_shape(status, answer_headers, answer)
    if valid and copies == 0:
        assert status == 200 and doc["ok"] is True, doc
    elif not valid:
        assert status == 401 and doc["error"]["code"] == "invalid_signature", doc
