"""What the web modules share: the app state, request reading, admin auth and error bodies."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from relay import metrics, schemas
from relay.config import Settings
from relay.errors import (
    PayloadTooLarge,
    RelayError,
    StorageUnavailable,
    Unauthorized,
    ValidationFailed,
)
from relay.ingest import Ingest
from relay.providers import CallbackProvider
from relay.providers.base import parse_json
from relay.service import Relay
from relay.signing import TokenSigner
from relay.store import Store
from relay.tracking import Tracking

log = structlog.get_logger("relay.web")

T = TypeVar("T")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class AppState:
    """What the lifespan opens and every handler reads from `request.app.state.relay`."""

    settings: Settings
    store: Store
    relay: Relay
    providers: dict[str, CallbackProvider]
    signer: TokenSigner
    tracking: Tracking
    ingest: Ingest


def state_of(request: Request) -> AppState:
    st: AppState = request.app.state.relay
    return st


class ClientGone(Exception):
    """The caller hung up before its body arrived: there is nobody to answer."""


async def read_raw_body(receive: Receive, declared: str | None, cap: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `cap` (declared or streamed)."""
    # ASCII digits only: str.isdigit() also passes "²", which int() then refuses.
    if declared is not None and declared.isascii() and declared.isdigit() \
            and int(declared) > cap:
        raise PayloadTooLarge(f"the body is larger than {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"the body is larger than {cap} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, cap: int) -> bytes:
    return await read_raw_body(request.receive, request.headers.get("content-length"), cap)


_ADMIN_BODY_CAP = 64 * 1024


async def json_body(request: Request, shape: type[T], *, optional: bool = False) -> T:
    """The request's JSON object as `shape`; every problem becomes a 422 detail, never a 500."""
    raw = await read_body(request, _ADMIN_BODY_CAP)
    if not raw.strip():
        if optional:
            return schemas.parse(shape, {})
        raise ValidationFailed("validation_error", "a JSON object body is required",
                               details=[{"field": "$", "problem": "missing"}])
    doc = parse_json(raw)
    if not isinstance(doc, dict):
        raise ValidationFailed("validation_error", "the body must be a JSON object",
                               details=[{"field": "$", "problem": "expected an object"}])
    return schemas.parse(shape, doc)


def paging(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", "20")
    try:
        limit = int(raw)
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        raise ValidationFailed("validation_error", "the request is not valid", details=[
            {"field": "limit", "problem": "must be a whole number from 1 to 100"}]) from None
    return limit, request.query_params.get("cursor") or None


def admin(handler: Handler) -> Handler:
    """Require `Authorization: Bearer <one of RELAY_API_KEYS>`, compared in constant time."""

    async def wrapped(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        keys = state_of(request).settings.api_keys
        ok = False
        if scheme.lower() == "bearer" and token:
            for key in keys:
                ok |= hmac.compare_digest(key.reveal().encode(), token.strip().encode())
        if not ok:
            raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
        return await handler(request)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def route_of(request: Request) -> str:
    """The matched route's template: a logged path must not carry a callback-URL token."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def error_body(exc: RelayError, *, route: str) -> dict[str, Any]:
    """The contract's error body for `exc` (its status is `exc.status`); counts 503s."""
    if isinstance(exc, StorageUnavailable):
        metrics.STORAGE_ERRORS.labels(exc.reason).inc()
        log.warning("storage_unavailable", route=route, reason=exc.reason, error=exc.message)
    return exc.body()


def report_unexpected(route: str) -> None:
    """Log the exception being handled, which will be answered with a 500."""
    log.exception("unhandled_error", route=route)
