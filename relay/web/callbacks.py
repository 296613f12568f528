"""Inbound callbacks: read raw bytes, verify, normalize, store; 200 only once stored."""

from __future__ import annotations

import json
from typing import Any

import structlog
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from relay import clock, metrics
from relay.errors import RelayError
from relay.providers import callback_names
from relay.web.common import AppState, ClientGone, error_body, read_raw_body, report_unexpected

log = structlog.get_logger("relay.ingest")

PROVIDERS = frozenset(callback_names())
_JSON_HEADERS = [(b"content-type", b"application/json")]


def is_callback(scope: Scope) -> bool:
    """POST /callbacks/<provider> or /callbacks/<provider>/<token>: the fast path's paths."""
    if scope["method"] != "POST":
        return False
    parts = scope["path"].split("/")
    return 3 <= len(parts) <= 4 and parts[1] == "callbacks" and parts[2] in PROVIDERS \
        and (len(parts) == 3 or parts[3] != "")


async def respond(send: Send, status: int, doc: dict[str, Any]) -> None:
    await respond_bytes(send, status, json.dumps(doc, separators=(",", ":")).encode())


async def respond_bytes(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# A plain ASGI app: the hottest path relay has, which RelayApp hands the request before
# Starlette's middleware and router (a third of a callback's CPU in the profile). Under the
# router, for the routes below, it serves the same way.
class _Endpoint:
    """An object, not a function, so that Starlette's Route calls it as a plain ASGI app."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await callback(scope, receive, send)


async def callback(scope: Scope, receive: Receive, send: Send) -> None:
    """Verify and accept a provider callback (CONTRACT 4.1)."""
    state: AppState = scope["app"].state.relay
    _, _, provider_name, *rest = scope["path"].split("/")
    token = rest[0] if rest else None
    # The first of a repeated header wins, as in Starlette's Headers.
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
    log_fields = {"provider": provider_name, "request_id": headers.get(
        state.providers[provider_name].request_id_header)}
    try:
        doc = await _accept(state, provider_name, token, receive, headers, log_fields)
    except ClientGone:
        return
    except RelayError as exc:
        metrics.labelled(metrics.CALLBACKS, provider_name, exc.code).inc()
        log.info("callback_refused", status=exc.status, code=exc.code, reason=exc.message,
                 **log_fields)
        await respond(send, exc.status, error_body(exc, route=f"/callbacks/{provider_name}"))
        return
    except Exception:
        report_unexpected(f"/callbacks/{provider_name}")
        await respond(send, 500, {"error": {"code": "internal_error",
                                            "message": "internal error"}})
        return
    await respond_bytes(send, 200, doc)


async def _accept(state: AppState, provider_name: str, token: str | None,
                  receive: Receive, headers: dict[str, str], log_fields: dict[str, Any]
                  ) -> bytes:
    provider = state.providers[provider_name]
    body = await read_raw_body(receive, headers.get("content-length"),
                               state.settings.max_body_bytes)
    claims = None
    if token is not None:
        claims = state.signer.loads(token, provider=provider_name)
        if not provider.token_suffices:
            provider.verify(headers, body)
    else:
        provider.verify(headers, body)
    accepted, event = await state.ingest.take(provider, body, claims, clock.now())
    outcome = "duplicate" if accepted.duplicate else "accepted"
    metrics.labelled(metrics.CALLBACKS, provider_name, outcome).inc()
    if not accepted.duplicate:
        metrics.labelled(metrics.EVENTS, provider_name, event.event, "callback").inc()
    log.info("callback_accepted", event_id=accepted.event_id, run_id=event.subject,
             event_type=event.event, duplicate=accepted.duplicate, **log_fields)
    # The answer as bytes at once: event ids are ASCII letters, digits and "_".
    return b'{"ok":true,"event_id":"%s","duplicate":%s}' % (
        accepted.event_id.encode(), b"true" if accepted.duplicate else b"false")


endpoint = _Endpoint()
routes = [Route(path, endpoint, methods=["POST"]) for name in sorted(PROVIDERS)
          for path in (f"/callbacks/{name}", f"/callbacks/{name}/{{token}}")]
