"""Pure parts of polling: delay policy, poll decisions, FLORA signatures, provider mappings."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from relay import backoff
from relay.config import Settings
from relay.errors import InvalidJSON, ValidationFailed
from relay.poller import NOT_FOUND_LIMIT, decide
from relay.providers.base import CallbackContext, Observation, number_time
from relay.providers.betterprompt import BetterPrompt
from relay.providers.flora import Flora, FloraAPI
from relay.providers.reading import PollResult
from relay.providers.runflow import RunflowAPI
from relay.runs import TrackedRun, callback_event, pending_callback
from relay.signing import verify_flora_signature
from tests.test_pure import json_values

SETTINGS = Settings(poll_min_interval=2.0, poll_max_interval=30.0, poll_max_age=86_400.0)
NOW = 1_800_000_000.0
ADAPTERS = [BetterPrompt("k", "http://bp"), FloraAPI("k", "http://flora"),
            RunflowAPI("k", "http://rf")]
KINDS = ["ok", "not_found", "auth", "rate_limited", "retry", "client_error"]


@given(st.floats(0, 100), st.booleans(), st.booleans(), st.floats(0.1, 10), st.floats(10, 100))
def test_poll_interval_stays_within_bounds_and_resets_on_change(
        previous: float, changed: bool, failed: bool, low: float, high: float) -> None:
    interval = backoff.next_poll_interval(previous, changed=changed, failed=failed, low=low,
                                          high=high)
    assert low <= interval <= high
    if changed:
        assert interval == low


@given(st.floats(0.1, 100), st.integers(0, 2**32))
def test_jitter_is_bounded(interval: float, seed: int) -> None:
    low, high = 2.0, 30.0
    value = backoff.jittered(interval, low=low, high=high, rand=random.Random(seed))
    assert low <= value <= high
    if low <= interval <= high:
        assert abs(value - interval) <= interval * backoff.POLL_JITTER + 1e-9


def _run(**fields: Any) -> TrackedRun:
    return TrackedRun(provider="betterprompt", run_id="r", since=NOW - 100, **fields)


observations = st.builds(
    Observation,
    status=st.sampled_from(["queued", "running", "succeeded", "failed", "canceled"]),
    progress=st.none() | st.floats(0, 100),
    outputs=st.none() | st.just([{"type": "text", "text": "x"}]),
)


@given(st.sampled_from(KINDS), observations, st.integers(0, 5), st.floats(0, 60),
       st.none() | st.floats(0, 100), st.sampled_from([None, "queued", "running"]),
       st.booleans())
def test_a_poll_decision_is_consistent(kind: str, obs: Observation, misses: int,
                                       interval: float, retry_after: float | None,
                                       status: str | None, pending: bool) -> None:
    run = _run(not_found=misses, interval=interval, status=status, polls=3,
               pending_event="evt_pending" if pending else None,
               pending_callback={"s": "succeeded", "raw": "{}"} if pending else None)
    result = PollResult(kind, obs if kind == "ok" else None, b"{}", 200,
                        retry_after=retry_after if kind == "rate_limited" else None)
    d = decide(run, result, now=NOW, settings=SETTINGS, wraps_outputs=True)
    assert d.fields["n"] == "4"
    event = d.event
    if event is not None and event.event in ("run.completed", "run.failed", "run.cancelled",
                                             "run.expired"):
        return  # the run ends: no next poll
    assert NOW < d.next_poll <= run.since + SETTINGS.poll_max_age
    if kind != "rate_limited":
        assert d.next_poll - NOW <= SETTINGS.poll_max_interval * 1.1 + 1e-6
    if event is not None:
        assert event.event == "run.updated"
        assert kind == "ok" and (obs.status != status or obs.progress is not None)


def test_terminal_observation_gives_the_terminal_event_under_a_pending_callback_id() -> None:
    run = _run(pending_event="evt_answered", pending_callback={"s": "succeeded"})
    obs = Observation(status="succeeded", outputs=[{"type": "text", "text": "hi"}])
    d = decide(run, PollResult("ok", obs, b'{"a": 1}', 200), now=NOW, settings=SETTINGS,
               wraps_outputs=True)
    assert d.event is not None and d.event.id == "evt_answered"
    assert d.event.source == "callback" and d.event.output == {"outputs": obs.outputs}


def test_the_third_404_in_a_row_expires_the_run() -> None:
    result = PollResult("not_found", status_code=404)
    assert decide(_run(not_found=NOT_FOUND_LIMIT - 2), result, now=NOW, settings=SETTINGS,
                  wraps_outputs=True).event is None
    d = decide(_run(not_found=NOT_FOUND_LIMIT - 1), result, now=NOW, settings=SETTINGS,
               wraps_outputs=True)
    assert d.event is not None and d.event.event == "run.expired"
    assert d.event.error == {"code": "not_found", "message": "the provider answered 404 3 times "
                             "in a row", "stage": "relay"}


def test_unchanged_status_emits_nothing_and_grows_the_delay() -> None:
    run = _run(status="running", interval=4.0)
    d = decide(run, PollResult("ok", Observation(status="running"), b"{}", 200), now=NOW,
               settings=SETTINGS, wraps_outputs=True)
    assert d.event is None and d.fields["iv"] == "6000"


def test_betterprompt_retry_after_pauses_the_whole_budget() -> None:
    d = decide(_run(), PollResult("rate_limited", status_code=429, retry_after=7.0), now=NOW,
               settings=SETTINGS, wraps_outputs=True)
    assert d.pause_until == NOW + 7.0 and d.next_poll == NOW + 7.0


def _flora_header(body: bytes, t: int, *secrets: str) -> str:
    sigs = ",".join("v1=" + hmac.new(s.encode(), f"{t}.".encode() + body,
                                     hashlib.sha256).hexdigest() for s in secrets)
    return f"t={t},{sigs}"


@given(st.binary(max_size=200), st.integers(-300, 300), st.sampled_from(["a", "b"]))
def test_flora_signature_under_any_configured_secret_within_300_s_verifies(
        body: bytes, skew: int, secret: str) -> None:
    header = _flora_header(body, int(NOW) + skew, secret)
    assert verify_flora_signature(header, body, ["a", "b"], NOW) is None


@given(st.binary(max_size=200), st.integers(301, 10**6), st.booleans())
def test_flora_signature_outside_the_window_or_for_another_body_fails(
        body: bytes, skew: int, future: bool) -> None:
    t = int(NOW) + (skew if future else -skew)
    assert verify_flora_signature(_flora_header(body, t, "a"), body, ["a"], NOW) is not None
    fresh = _flora_header(body, int(NOW), "a")
    assert verify_flora_signature(fresh, body + b"x", ["a"], NOW) is not None
    assert verify_flora_signature(fresh, body, ["other"], NOW) is not None


@given(st.text(max_size=80))
def test_any_flora_signature_header_is_refused_without_an_exception(header: str) -> None:
    assert verify_flora_signature(header, b"{}", ["a"], NOW) is not None


def _is_flora_callback(doc: Any) -> bool:
    data = doc.get("data") if isinstance(doc, dict) else None
    return (isinstance(data, dict) and isinstance(doc.get("id"), str) and bool(doc["id"])
            and doc.get("type") in ("run.completed", "run.failed")
            and isinstance(data.get("run_id"), str) and bool(data["run_id"]))


@given(json_values)
def test_flora_callback_parsing_refuses_anything_but_a_callback_with_a_4xx_error(
        doc: Any) -> None:
    assume(not _is_flora_callback(doc))
    body = json.dumps(doc).encode()
    with pytest.raises((InvalidJSON, ValidationFailed)) as refused:
        Flora(["s"]).parse(body)
    assert refused.value.status in (400, 422)


def test_flora_callback_parsing_reads_a_callback() -> None:
    body = json.dumps({"id": "whd_9", "type": "run.failed", "created_at": 1_778_061_661_234,
                       "data": {"run_id": "r", "error_code": 7}}).encode()
    cb = Flora(["s"]).parse(body)
    assert (cb.delivery_id, cb.run_id, cb.status) == ("whd_9", "r", "failed")
    assert cb.error == {"code": "7", "message": None, "stage": "provider"}
    assert cb.created_at == "2026-05-06T10:01:01.234+00:00"


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
@given(doc=json_values)
def test_provider_answers_of_any_shape_are_read_or_refused_with_value_error(
        adapter: Any, doc: Any) -> None:
    for shaped in (doc, {"status": "SUCCESS", "data": doc}, {"runStatus": "x", **(
            doc if isinstance(doc, dict) else {})}):
        try:
            obs = adapter.observe(shaped, outputs_seen=NOW)
        except ValueError:
            continue
        assert isinstance(obs.status, str) and obs.status


@given(st.integers(1_000_000_001, 4_000_000_000))  # past 2001: 13-digit milliseconds
def test_numeric_times_in_seconds_and_milliseconds_agree(seconds: int) -> None:
    assert number_time(seconds) == number_time(seconds * 1000)


def test_betterprompt_maps_outputs_errors_and_cost() -> None:
    obs = BetterPrompt("k", "http://bp").observe({"status": "SUCCESS", "data": {
        "runId": "r", "runStatus": "failed", "credits": 9, "outputs": [
            {"type": "text", "data": "partial"}, {"type": "error", "data": "moderated"},
            {"type": "image", "data": "https://i"}]}}, outputs_seen=NOW)
    assert obs.status == "failed" and obs.terminal
    assert obs.error == {"code": None, "message": "moderated", "stage": "provider"}
    assert obs.cost == {"amount": 9, "unit": "credits"}
    assert obs.outputs == [{"type": "text", "text": "partial"},
                           {"type": "image", "url": "https://i",
                            "expires_at": "2027-01-16T08:00:00.000+00:00"}]


def test_a_flora_callback_kept_for_the_poller_comes_back_as_the_event_it_normalized_to() -> None:
    body = json.dumps({"id": "whd_3", "type": "run.failed", "created_at": 1_778_061_661_234,
                       "data": {"run_id": "r", "error_message": "boom"}}).encode()
    flora = Flora(["s"])
    context = CallbackContext(observed_at=NOW, channels=("c",), metadata={"m": 1})
    said = flora.normalize(body, context)
    assert flora.reads_run and flora.delivery_id(body) == "whd_3"
    assert (said.event, said.output, said.source) == ("run.failed", None, "callback")
    run = TrackedRun(provider="flora", run_id="r", since=NOW - 5, channels=["c"],
                     metadata={"m": 1}, pending_event=said.id,
                     pending_callback=json.loads(json.dumps(pending_callback(said, body,
                                                                             "whd_3"))))
    again = callback_event(run, NOW)
    assert again.to_json() == said.to_json()
