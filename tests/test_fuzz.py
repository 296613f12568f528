"""Fuzzing the callback routes (hypothesis): any body, header, signature or token gets a < 500
answer in the contract's shape, and verification always comes before parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
import structlog.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import Settings
from relay.signing import CallbackClaims, TokenSigner
from tests.fakes import FLORA_SECRET, flora_signature
from tests.helpers import (
    API_KEY,
    RUNFLOW_SECRET,
    SECRET_KEY,
    RedisServer,
    free_port,
    runflow_signature,
)

CAP = 64 * 1024  # RELAY_MAX_BODY_BYTES here: oversized bodies stay cheap to send
CODE = re.compile(r"^[a-z]+(_[a-z]+)*$")


def fuzz(examples: int) -> settings:
    """The app fixture lives across examples on purpose: one lifespan, one Redis prefix."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


ROUTES = ["/callbacks/runflow", "/callbacks/flora"]
pytestmark = [
    pytest.mark.anyio,  # @given hides the coroutine from conftest's automatic marking
    # A falsifying example may be a 60 kB body; hypothesis warns that printing it is costly.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


@pytest.fixture
async def app(redis_server: RedisServer, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with its lifespan and the real Redis; both providers' secrets set,
    and a FLORA API key whose base URL is a closed port (callbacks try to read their run)."""
    from relay.web.app import create_app

    settings = Settings.from_env({
        "REDIS_URL": redis_server.url, "RELAY_KEY_PREFIX": prefix,
        "RELAY_SECRET_KEY": SECRET_KEY, "RELAY_API_KEYS": API_KEY,
        "RUNFLOW_CALLBACK_SECRETS": RUNFLOW_SECRET, "FLORA_WEBHOOK_SECRETS": FLORA_SECRET,
        "FLORA_API_KEY": "flora-key", "FLORA_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "RELAY_MAX_BODY_BYTES": str(CAP),
    })
    asgi = create_app(settings, redis_server.url)
    # Thousands of requests: collect their log entries instead of rendering each one (the
    # previous configuration comes back on exit, so later tests' log capture is unaffected).
    with structlog.testing.capture_logs():
        async with asgi.router.lifespan_context(asgi):
            # A crash must come back as the 500 a client would see, for assert_contract.
            transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay") as c:
                yield c


def assert_contract(r: httpx.Response) -> Any:
    """< 500, JSON, and the documented body: CallbackAccepted on 200, else exactly the error
    shape (`details` only on 422). Returns the parsed body."""
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = r.json()
    if r.is_success:
        assert r.status_code == 200, r.text
        assert set(doc) == {"ok", "event_id", "duplicate"} and doc["ok"] is True, doc
        assert isinstance(doc["event_id"], str) and doc["event_id"].startswith("evt_"), doc
        assert isinstance(doc["duplicate"], bool), doc
        return doc
    assert set(doc) == {"error"}, doc
    error = doc["error"]
    allowed = {"code", "message", "details"} if r.status_code == 422 else {"code", "message"}
    assert {"code", "message"} <= set(error) <= allowed, (r.status_code, doc)
    assert isinstance(error["code"], str) and CODE.match(error["code"]), doc
    assert isinstance(error["message"], str), doc
    if "details" in error:
        assert isinstance(error["details"], list), doc
    return doc


# ---- strategies -------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**80), 2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=15)


def maybe(good: Any) -> st.SearchStrategy[Any]:
    """Mostly the right value (or a draw from the right strategy), sometimes any JSON value."""
    right = good if isinstance(good, st.SearchStrategy) else st.just(good)
    return st.one_of(right, right, json_values)


def envelope(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An almost-valid envelope: each field right or wrong, some fields dropped."""
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).flatmap(
        lambda doc: st.sets(st.sampled_from(sorted(doc))).map(
            lambda drop: {k: v for k, v in doc.items() if k not in drop}))


runflow_envelopes = envelope({
    "event": st.sampled_from(["run.completed", "run.failed", "run.canceled", "run.cancelled",
                              "run.partial_succeeded", "batch.completed", "batch.", "run.x"]),
    "run_id": st.text(min_size=1, max_size=40), "batch_id": "b-1",
    "status": st.sampled_from(["succeeded", "failed", "canceled", "cancelled",
                               "partial_succeeded", "queued", ""]),
    "output": {"image_urls": ["https://cdn.example.com/a.png"]},
    "duration_ms": st.one_of(st.integers(-5, 2**64), st.floats()),
    "created_at": "2026-05-06T10:00:00.000+00:00", "metadata": None,
})

flora_envelopes = st.builds(
    lambda doc, data: {**doc, **({"data": data} if data is not None else {})},
    envelope({"id": "whd_fuzz", "type": "run.completed", "api_version": "2026-06-11",
              "created_at": 1_778_061_661_234}),
    st.none() | maybe({"run_id": "run_fuzz", "status": "completed", "error_code": None})
    | envelope({"run_id": "run_fuzz", "status": "failed", "error_code": "E1",
                "error_message": "boom"}),
).map(lambda doc: {**doc, "id": f"{doc['id']}_{time.monotonic_ns()}"}
       if isinstance(doc.get("id"), str) else doc)


def deep(n: int) -> bytes:
    return b'{"run_id": "deep", "status": "succeeded", "metadata": ' + b'[' * n + b']' * n + b'}'


ODD_BODIES = [
    b"", b" ", b"null", b"0", b'""', b"[]", b"{}", b"NaN", b"Infinity", b"-Infinity",
    b'{"run_id": "n", "status": "succeeded", "duration_ms": NaN}',
    b'{"run_id": "n", "status": "succeeded", "duration_ms": 1e999}',
    b'{"run_id": "n", "status": "succeeded", "duration_ms": ' + b"9" * 5000 + b"}",
    b'{"run_id": "\\ud800", "status": "succeeded"}',
    b'{"run_id": "s", "status": "succeeded", "metadata": "\\udfff\\ud800"}',
    b'{"id": "whd_\\ud83d", "type": "run.completed", "data": {"run_id": "r\\udc00"}}',
    b'\xef\xbb\xbf{"run_id": "bom", "status": "succeeded"}',
    '{"run_id": "utf16", "status": "succeeded"}'.encode("utf-16"),
    b'{"run_id": "latin1-\xe9", "status": "succeeded"}',
    b'{"run_id": "dup", "run_id": 5, "status": "succeeded"}',
    b'{"run_id": "nul\\u0000", "status": "succeeded", "metadata": {"\\u0000": 1}}',
    b"[" * 60_000, b"{" * 60_000, deep(200), deep(900), deep(990), deep(5000),
    b'{"run_id": "trail", "status": "succeeded"} x', b"\x00\xff\xfe" * 10,
]
# By index: a strategy over the bodies themselves would have a repr of hundreds of kB.
odd_bodies = st.integers(0, len(ODD_BODIES) - 1).map(ODD_BODIES.__getitem__)

bodies = st.one_of(
    runflow_envelopes.map(lambda d: json.dumps(d).encode()),
    flora_envelopes.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    odd_bodies,
)

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
garbage_signatures = st.one_of(
    st.just(""), hex64, hex64.map(str.upper), hex64.map(lambda s: s[:-1]), hex64.map(
        lambda s: s + "0"), hex64.map(lambda s: f"sha256={s}"), hex64.map(lambda s: f" {s}\n"),
    st.text(max_size=100), st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()),
    st.builds(lambda n, s: ",".join([f"v1={s}"] * n), st.integers(1, 300), hex64),
    st.just("t=1,v1=" + "0" * 64), st.just("x" * 20_000),
)


def flora_header(t: str, body: bytes, *, secret: str = FLORA_SECRET, extra: int = 0) -> str:
    """A Flora-Signature for stamp `t` (any text), its HMAC correct under `secret`."""
    stamp = t.encode("latin-1") if all(ord(c) < 256 for c in t) else t.encode(
        "utf-8", "surrogatepass")
    good = hmac.new(secret.encode(), stamp + b"." + body,
                    hashlib.sha256).hexdigest()
    return ",".join([f"t={t}", *["v1=" + "0" * 64] * extra, f"v1={good}"])


def signer(secret: str = SECRET_KEY) -> TokenSigner:
    return TokenSigner(secret)


def tamper(token: str, at: int) -> str:
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]


claims = st.fixed_dictionaries({}, optional={
    "c": st.lists(st.text(min_size=1, max_size=10), max_size=3),
    "m": json_values, "t": st.text(min_size=1, max_size=20)})


# ---- tests ------------------------------------------------------------------------------


@fuzz(250)
@given(route=st.sampled_from(ROUTES), token=st.none() | claims, body=bodies)
async def test_any_body_with_a_valid_signature_is_answered_in_the_contract_shape(
        app: httpx.AsyncClient, route: str, token: dict[str, Any] | None, body: bytes) -> None:
    """Valid signatures (and tokens) over any body reach parsing: 200, 400, 413 or 422, always
    in the documented shape, never a 5xx."""
    provider = route.rsplit("/", 1)[1]
    path = route if token is None else \
        f"{route}/{signer().dumps(CallbackClaims.from_doc({**token, 'p': provider}))}"
    headers = ({"runflow-signature": runflow_signature(body)} if provider == "runflow"
               else {"flora-signature": flora_signature(body)})
    r = await app.post(path, content=body, headers=headers)
    assert_contract(r)
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text)


@fuzz(200)
@given(route=st.sampled_from(ROUTES), body=bodies, signature=garbage_signatures,
       name=st.sampled_from(["runflow-signature", "flora-signature", "Runflow-Signature",
                             "FLORA-SIGNATURE", "x-signature"]),
       copies=st.integers(0, 3), other_secret=st.booleans())
async def test_forged_or_malformed_signature_headers_are_401_whatever_the_body(
        app: httpx.AsyncClient, route: str, body: bytes, signature: str, name: str,
        copies: int, other_secret: bool) -> None:
    """Missing, duplicated, mis-spelled, truncated, other-secret or junk signatures: 401
    invalid_signature, whatever the body holds."""
    if other_secret:  # right form and right body, wrong key
        signature = (runflow_signature(body, "whsec_someone_else") if "runflow" in name.lower()
                     else flora_signature(body, secret="whsec_someone_else"))
    headers = [(name.encode(), signature.encode("utf-8", "surrogatepass"))] * copies
    r = await app.post(route, content=body, headers=headers)
    doc = assert_contract(r)
    assert r.status_code == 401 and doc["error"]["code"] == "invalid_signature", r.text


@fuzz(150)
@given(route=st.sampled_from(ROUTES), body=bodies, raw=st.binary(min_size=1, max_size=200),
       big=st.integers(1, 16 * 1024), length=st.none() | st.sampled_from([
           b"\xb2", b"1\xb9", b"\xd9\xa1", b"-1", b"1e3", b" 7", b"0x10", b"9" * 30]))
async def test_non_ascii_and_huge_header_values_are_refused_cleanly(
        app: httpx.AsyncClient, route: str, body: bytes, raw: bytes, big: int,
        length: bytes | None) -> None:
    """Header bytes outside ASCII (read as latin-1), very long values and odd Content-Length
    spellings, in the signature and other headers: 401 (413 for a huge declared length), never
    a 5xx."""
    header = "runflow-signature" if route.endswith("runflow") else "flora-signature"
    headers = [(header.encode(), raw), (b"runflow-request-id", raw),
               (b"flora-webhook-id", b"\xff" * big), (b"content-type", raw)]
    if length is not None:
        headers.append((b"content-length", length))
    r = await app.post(route, content=body, headers=headers)
    doc = assert_contract(r)
    if length == b"9" * 30:
        assert r.status_code == 413 and doc["error"]["code"] == "payload_too_large", r.text
    else:
        assert r.status_code == 401 and doc["error"]["code"] == "invalid_signature", r.text


@fuzz(200)
@given(body=bodies, t=st.one_of(
    st.integers(-(10**15), 10**15).map(str), st.integers(301, 10**9).map(
        lambda d: str(int(time.time()) - d)), st.integers(301, 10**6).map(
        lambda d: str(int(time.time()) + d)), st.floats().map(str),
    st.just(f"{time.time():.3f}"), st.text(max_size=15), st.just("9" * 400),
    st.just("\u00b2"), st.just("\u0661\u0662"), st.just(" 1"), st.just("")),
    extra=st.integers(0, 50))
async def test_flora_timestamps_stale_future_or_malformed_are_401(
        app: httpx.AsyncClient, body: bytes, t: str, extra: int) -> None:
    """`t=` stale, in the future, negative, float, non-numeric, non-ASCII digits or huge, with
    an HMAC that is right for it: 401 unless `t` is a whole number within 300 s of now."""
    header = flora_header(t, body, extra=extra)
    # Latin-1 where it can be: that is how servers hand header bytes to the app.
    raw = (header.encode("latin-1") if all(ord(c) < 256 for c in header)
           else header.encode("utf-8", "surrogatepass"))
    r = await app.post("/callbacks/flora", content=body, headers=[(b"flora-signature", raw)])
    doc = assert_contract(r)
    fresh = re.fullmatch(r"[0-9]{1,12}", t) is not None and abs(time.time() - int(t)) < 290
    if not fresh:
        assert r.status_code == 401 and doc["error"]["code"] == "invalid_signature", (t, r.text)


@fuzz(150)
@given(route=st.sampled_from(ROUTES), body=runflow_envelopes.map(
    lambda d: json.dumps(d).encode()), claims=claims, form=st.sampled_from([
        "other_secret", "truncated", "junk", "other_provider", "text", "tampered"]),
    cut=st.integers(1, 60), junk=st.binary(max_size=60), text=st.text(min_size=1, max_size=60))
async def test_forged_truncated_or_junk_tokens_are_401_invalid_token(
        app: httpx.AsyncClient, route: str, body: bytes, claims: dict[str, Any], form: str,
        cut: int, junk: bytes, text: str) -> None:
    """A token signed with another key, cut short, tampered, base64 junk, any text, or minted
    for the other provider: 401 invalid_token even with a valid body signature."""
    provider = route.rsplit("/", 1)[1]
    def minted(key: TokenSigner, for_provider: str) -> str:
        return key.dumps(CallbackClaims.from_doc({**claims, "p": for_provider}))

    good = minted(signer(), provider)
    token = {
        "other_secret": minted(signer("another-secret-key-0123456789abcd"), provider),
        "truncated": good[:max(1, len(good) - cut)],
        "junk": base64.urlsafe_b64encode(junk).decode().rstrip("=") or "x",
        "other_provider": minted(signer(), "flora" if provider == "runflow" else "runflow"),
        "text": quote(text, safe=""),  # any text, percent-encoded as a client must
        # The first signature character: the last one may carry only base64 padding bits.
        "tampered": tamper(good, good.rindex(".") + 1),
    }[form]
    headers = ({"runflow-signature": runflow_signature(body)} if provider == "runflow"
               else {"flora-signature": flora_signature(body)})
    r = await app.post(f"{route}/{token}", content=body, headers=headers)
    doc = assert_contract(r)
    assert r.status_code in (401, 404), (token, r.text)
    if r.status_code == 401:
        assert doc["error"]["code"] == "invalid_token", (token, r.text)


@fuzz(40)
@given(route=st.sampled_from(ROUTES), size=st.integers(CAP + 1, 4 * CAP),
       chunk=st.integers(1, 20_000), declared=st.booleans())
async def test_oversized_bodies_declared_or_chunked_are_413(
        app: httpx.AsyncClient, route: str, size: int, chunk: int, declared: bool) -> None:
    """Past RELAY_MAX_BODY_BYTES, announced by Content-Length or streamed without one: 413
    payload_too_large before any verification."""
    body = b'{"run_id": "' + b"x" * size + b'"}'

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i:i + chunk]

    content: Any = body if declared else stream()
    r = await app.post(route, content=content)
    doc = assert_contract(r)
    assert r.status_code == 413 and doc["error"]["code"] == "payload_too_large", r.text
