"""Pure functions: retry policy, signatures, glob filters, Runflow normalization (hypothesis)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from relay import backoff, clock, ids
from relay.errors import InvalidJSON, RelayError, ValidationFailed
from relay.models import glob_any
from relay.providers.base import CallbackContext
from relay.providers.runflow import Runflow
from relay.signing import secret_bytes, sign_webhook, verify_hex_hmac

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.integers(1, 7), st.floats(0, 1), st.integers(0, 2**32))
def test_delay_stays_within_jitter_of_the_schedule(attempt: int, jitter: float, seed: int) -> None:
    schedule = (5, 300, 1800, 7200, 18000, 36000, 36000)
    delay = backoff.next_delay(attempt, schedule, jitter, random.Random(seed))
    assert delay is not None
    base = schedule[attempt - 1]
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


@given(st.integers(8, 1000))
def test_no_delay_after_the_last_attempt(attempt: int) -> None:
    assert backoff.next_delay(attempt, (5, 300, 1800, 7200, 18000, 36000, 36000), 0.2) is None


def test_retry_after_accepts_seconds_and_http_dates_and_clamps() -> None:
    assert backoff.parse_retry_after("7", 0) == 7
    assert backoff.parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40) == 60
    assert backoff.parse_retry_after("99999999", 0) == backoff.MAX_RETRY_AFTER
    assert backoff.parse_retry_after("-5", 0) == 0
    assert backoff.parse_retry_after("soon", 0) is None
    assert backoff.parse_retry_after(None, 0) is None


@given(st.text(max_size=2000), st.integers(0, 2**33), st.integers(1, 3))
def test_signatures_match_the_standardwebhooks_library(text: str, ts: int, n: int) -> None:
    """Each space-separated signature equals the reference library's, one per key."""
    from datetime import UTC, datetime

    secrets = [ids.webhook_secret() for _ in range(n)]
    body = text.encode()
    signature = sign_webhook("evt_01TEST", ts, body, [secret_bytes(s) for s in secrets])
    when = datetime.fromtimestamp(ts, UTC)
    assert signature.split(" ") == [Webhook(s).sign("evt_01TEST", when, text) for s in secrets]


@given(st.binary(max_size=500), st.lists(st.text(min_size=1, max_size=20), min_size=1,
                                          max_size=3))
def test_hex_hmac_accepts_any_configured_secret_and_nothing_else(
        body: bytes, secrets: list[str]) -> None:
    import hashlib
    import hmac
    good = hmac.new(secrets[-1].encode(), body, hashlib.sha256).hexdigest()
    assert verify_hex_hmac(good, body, secrets)
    assert not verify_hex_hmac(good.upper(), body, secrets)
    assert not verify_hex_hmac(good, body + b"x", secrets)
    assert not verify_hex_hmac(None, body, secrets)
    assert not verify_hex_hmac(good, body, [])


def test_glob_filters() -> None:
    assert glob_any(["run.*"], ["run.completed"])
    assert not glob_any(["run.*"], ["batch.succeeded"])
    assert glob_any(["*"], ["relay.test"])
    assert glob_any(["tenant-?"], ["x", "tenant-a"])
    assert not glob_any(["tenant-a"], [])


CTX = CallbackContext(observed_at=1_800_000_000.0, channels=("c1",), metadata={"from": "token"})


def normalize(doc: Any) -> Any:
    return Runflow(["s"]).normalize(json.dumps(doc).encode(), CTX)


@given(json_values)
def test_normalize_never_fails_with_anything_but_a_4xx(doc: Any) -> None:
    try:
        event = normalize(doc)
    except (InvalidJSON, ValidationFailed) as exc:
        assert 400 <= exc.status < 500
        return
    body = json.loads(event.to_json())
    assert body["provider_payload"] == doc


@pytest.mark.parametrize(("given_", "event", "status"), [
    ({"event": "run.completed"}, "run.completed", "succeeded"),
    ({"status": "succeeded"}, "run.completed", "succeeded"),
    ({"status": "failed"}, "run.failed", "failed"),
    ({"status": "cancelled"}, "run.cancelled", "canceled"),
    ({"status": "canceled"}, "run.cancelled", "canceled"),
    ({"event": "run.cancelled", "status": "cancelled"}, "run.cancelled", "canceled"),
    ({"status": "partial_succeeded"}, "run.partial_succeeded", "partial_succeeded"),
])
def test_event_and_status_are_derived_from_each_other(
        given_: dict[str, str], event: str, status: str) -> None:
    e = normalize({"run_id": "r", **given_})
    assert (e.event, e.status) == (event, status)


def test_batch_envelopes_pass_through_with_batch_id() -> None:
    e = normalize({"batch_id": "b1", "event": "batch.succeeded", "status": "succeeded",
                   "output": {"items": [], "succeeded": 2, "failed": 0, "cancelled": 0,
                              "total": 2}})
    body = json.loads(e.to_json())
    assert body["event"] == "batch.succeeded" and body["batch_id"] == "b1"
    assert body["run_id"] is None and body["output"]["succeeded"] == 2
    assert normalize({"batch_id": "b2", "status": "cancelled"}).event == "batch.cancelled"


def test_output_metadata_and_payload_pass_through_untouched() -> None:
    raw = (b'{"event":"run.completed","run_id":"r9","status":"succeeded",'
           b'"output":{"image_urls":["https://x/1.png"],"n":1.50},'
           b'"metadata":{"job":1},"created_at":"2026-05-06T10:00:00.000+00:00"}')
    e = Runflow(["s"]).normalize(raw, CTX)
    body = e.to_json()
    assert body.endswith(b'"provider_payload":' + raw + b"}")
    doc = json.loads(body)
    assert doc["output"] == {"image_urls": ["https://x/1.png"], "n": 1.5}
    assert doc["metadata"] == {"from": "token", "job": 1}
    assert doc["channels"] == ["c1"] and doc["source"] == "callback"
    assert doc["created_at"] == "2026-05-06T10:00:00.000+00:00"
    assert doc["observed_at"] == clock.iso(1_800_000_000.0)
    assert doc["error"] is None


def test_failure_fields_become_the_error_in_both_spellings() -> None:
    a = normalize({"run_id": "r", "status": "failed", "failure_code": "X",
                   "failure_message": "boom", "failure_stage_code": "dispatch"})
    b = normalize({"run_id": "r", "status": "failed", "failure_code": "X",
                   "failure_message": "boom", "failure_stage": "dispatch"})
    assert a.error == b.error == {"code": "X", "message": "boom", "stage": "dispatch"}


def test_non_utf8_and_nan_bodies_are_invalid_json() -> None:
    for raw in (b'{"run_id": NaN}', b"\xff\xfe{}", '\ufeff{"run_id":"r"}'.encode()):
        with pytest.raises(RelayError) as err:
            Runflow(["s"]).normalize(raw, CTX)
        assert err.value.code == "invalid_json"


def test_parse_time_accepts_iso_and_unix_seconds() -> None:
    assert clock.parse_time("1700000000") == 1_700_000_000
    assert clock.parse_time(1_700_000_000.5) == 1_700_000_000.5
    assert clock.parse_time("2023-11-14T22:13:20Z") == 1_700_000_000
    assert clock.parse_time("2023-11-14T22:13:20+00:00") == 1_700_000_000
    with pytest.raises(ValueError):
        clock.parse_time("yesterday")
