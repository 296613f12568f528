"""The Starlette application: lifespan-owned resources, routes, and the one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from relay import metrics
from relay.config import Settings
from relay.errors import RelayError, StorageUnavailable
from relay.ingest import Ingest
from relay.outbound import ProviderClient
from relay.providers import callback_providers, poll_providers
from relay.service import Relay
from relay.signing import TokenSigner
from relay.store import Store
from relay.tracking import Tracking
from relay.web import admin_routes, callbacks, openapi, ui
from relay.web.common import AppState, error_body, report_unexpected, route_of, state_of

log = structlog.get_logger("relay.web")

async def relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return JSONResponse(error_body(exc, route=route_of(request)), status_code=exc.status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail)}},
                        status_code=exc.status_code, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    report_unexpected(route_of(request))
    return JSONResponse({"error": {"code": "internal_error", "message": "internal error"}},
                        status_code=500)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    try:
        async with asyncio.timeout(1.5):
            await state_of(request).store.ping()
    except (StorageUnavailable, TimeoutError):
        return JSONResponse({"error": {"code": "unavailable", "message": "Redis does not answer"}},
                            status_code=503)
    return JSONResponse({"ok": True})


async def metrics_endpoint(request: Request) -> Response:
    with contextlib.suppress(StorageUnavailable, TimeoutError):
        async with asyncio.timeout(1.5):
            depths = await state_of(request).store.depths()
        metrics.QUEUE_DEPTH.labels("pending").set(depths["pending"])
        metrics.QUEUE_DEPTH.labels("scheduled_retries").set(depths["scheduled_retries"])
        metrics.QUEUE_DEPTH.labels("dead").set(depths["dead"])
        metrics.SUBSCRIPTIONS.set(depths["subscriptions"])
        await state_of(request).tracking.count()
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


# A job that shares the app's lifespan (the workers of `relay serve`): runs until the event is set.
Background = Callable[[Relay, asyncio.Event], Coroutine[Any, Any, None]]


def create_app(
    settings: Settings,
    redis_url: str,
    *,
    background: list[Background] | None = None,
) -> Starlette:
    """The HTTP app; `background` tasks (the workers of `relay serve`) share its lifespan."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(settings, redis_url)
        relay = Relay(settings, store)
        try:
            await store.ensure_groups()
            await relay.subs.refresh()
        except StorageUnavailable as exc:
            # Start anyway: /readyz says 503 and ingest answers 503 until Redis is back.
            log.warning("storage_unavailable_at_start", error=exc.message)
        pollable = poll_providers(settings)
        # Provider reads from this process: FLORA callbacks fetch their run at once.
        client = ProviderClient(max_bytes=settings.max_body_bytes) if pollable else None
        state = AppState(settings, store, relay, callback_providers(settings),
                         TokenSigner(settings.secret_key.reveal() if settings.secret_key else ""),
                         Tracking(relay), Ingest(relay, client, pollable))
        app.state.relay = state
        stop = asyncio.Event()
        tasks = [asyncio.create_task(job(relay, stop)) for job in background or []]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            if client is not None:
                await client.aclose()
            await store.aclose()

    routes = [
        *callbacks.routes,
        *admin_routes.routes,
        *ui.routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {
        RelayError: relay_error,
        HTTPException: http_error,
        Exception: unexpected_error,
    }
    return RelayApp(callbacks.endpoint, callbacks.is_callback, routes=routes,
                    exception_handlers=handlers, lifespan=lifespan)


class RelayApp(Starlette):
    """Starlette, with provider callbacks handed straight to their endpoint.

    The endpoint maps its own errors (with the same functions as the handlers above), so the
    middleware and router would add nothing to a callback but a third of its CPU.
    """

    def __init__(self, fast: ASGIApp, is_fast: Callable[[Scope], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast, self._is_fast = fast, is_fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._is_fast(scope):
            scope["app"] = self
            await self._fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
