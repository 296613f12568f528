"""Inbound callbacks: read raw bytes, verify, normalize, store; 200 only once stored."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay import clock, metrics
from relay.errors import RelayError
from relay.providers import CallbackContext
from relay.providers.flora import Flora
from relay.web.app import read_body, state_of

log = structlog.get_logger("relay.ingest")


async def callback(request: Request) -> Response:
    """Verify and accept a provider callback (CONTRACT 4.1)."""
    # The raw scope path: building request.url costs a parse per callback.
    provider_name = request.scope["path"].split("/")[2]
    token = request.path_params.get("token")
    state = state_of(request)
    provider = state.providers[provider_name]
    log_fields = {"provider": provider_name, "request_id": request.headers.get(
        "runflow-request-id") or request.headers.get("flora-webhook-id")}
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        claims = {}
        if token is not None:
            claims = state.signer.loads(token, provider=provider_name)
            if not provider.token_suffices:
                provider.verify(request.headers, body)
        else:
            provider.verify(request.headers, body)
        observed_at = clock.now()
        if provider_name == "flora":
            # FLORA's callback carries no outputs: the run is read before the event is made.
            flora = state.providers["flora"]
            assert isinstance(flora, Flora)
            accepted, event_type, run_id = await state.tracking.flora_callback(
                flora, body, claims, observed_at)
        else:
            channels = claims.get("c") or ()
            event = provider.normalize(body, CallbackContext(
                observed_at=observed_at,
                channels=tuple(str(c) for c in channels),
                metadata=claims.get("m"),
                claims=claims,
            ))
            accepted = await state.relay.accept(event)
            event_type, run_id = event.event, event.subject
    except RelayError as exc:
        metrics.CALLBACKS.labels(provider_name, exc.code).inc()
        log.info("callback_refused", status=exc.status, code=exc.code, reason=exc.message,
                 **log_fields)
        raise
    outcome = "duplicate" if accepted.duplicate else "accepted"
    metrics.CALLBACKS.labels(provider_name, outcome).inc()
    if not accepted.duplicate:
        metrics.EVENTS.labels(provider_name, event_type, "callback").inc()
    log.info("callback_accepted", event_id=accepted.event_id, run_id=run_id, event_type=event_type,
             duplicate=accepted.duplicate, **log_fields)
    return JSONResponse({"ok": True, "event_id": accepted.event_id,
                         "duplicate": accepted.duplicate})


routes = [
    Route("/callbacks/runflow", callback, methods=["POST"]),
    Route("/callbacks/runflow/{token}", callback, methods=["POST"]),
    Route("/callbacks/flora", callback, methods=["POST"]),
    Route("/callbacks/flora/{token}", callback, methods=["POST"]),
]
