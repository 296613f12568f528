"""Signed Runflow callbacks: unique run ids, realistic size, and the file wrk replays."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

_PROMPT = ("a studio photograph of a ceramic teapot on a linen tablecloth, soft window light, "
           "shallow depth of field, 85mm lens, muted earth tones, morning haze, film grain")


def signature(body: bytes, secret: str) -> str:
    """`Runflow-Signature`: lowercase hex HMAC-SHA256 of the raw body keyed by the secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def callback_body(run_id: str, seq: int, extra: dict[str, object] | None = None) -> bytes:
    """A `run.completed` envelope of about 600 bytes."""
    metadata: dict[str, object] = {
        "bench": "relay.bench",  # a label; kept, so the callbacks stay 636 bytes as measured before
        "seq": seq,
        "user_id": "usr_8c1f2d7e4b9a",
        "project_id": "prj_benchmark_0001",
        "workflow": "product-shots/v3",
        "request_id": "req_5b2e9c0d41f7a8e3",
        "prompt": _PROMPT,
        **(extra or {}),
    }
    doc = {
        "event": "run.completed",
        "run_id": run_id,
        "status": "succeeded",
        "output": {"image_urls": ["https://cdn.example.com/a.png"]},
        "duration_ms": 1234,
        "created_at": "2026-05-06T10:00:00.000+00:00",
        "completed_at": "2026-05-06T10:01:42.000+00:00",
        "metadata": metadata,
    }
    return json.dumps(doc, separators=(", ", ": ")).encode()


def run_id_prefix(label: str) -> str:
    """A prefix no other batch shares, so no callback is ever a duplicate of another."""
    return f"run_{label}_{secrets.token_hex(6)}_"


def signed_callbacks(count: int, secret: str, label: str) -> Iterator[tuple[str, bytes, str]]:
    """(run_id, body, signature) for `count` distinct runs."""
    prefix = run_id_prefix(label)
    for seq in range(count):
        run_id = f"{prefix}{seq:08d}"
        body = callback_body(run_id, seq)
        yield run_id, body, signature(body, secret)


def write_request_file(path: Path, count: int, secret: str, label: str) -> int:
    """One request per line, `signature<TAB>body`; returns the mean body size in bytes."""
    total = 0
    with path.open("wb") as out:
        for _, body, sig in signed_callbacks(count, secret, label):
            total += len(body)
            out.write(sig.encode() + b"\t" + body + b"\n")
    return total // max(count, 1)
