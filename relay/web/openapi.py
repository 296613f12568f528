"""GET /openapi.json: the OpenAPI 3 document of every route."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay import __version__

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "relay", "version": __version__},
    "paths": {},
}


async def endpoint(request: Request) -> Response:
    return JSONResponse(SPEC)
