"""Request validation for the admin API: every problem becomes a 422 detail, never a 500."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from relay import clock
from relay.errors import ValidationFailed
from relay.providers.base import parse_json
from relay.web.common import read_body

_ADMIN_BODY_CAP = 64 * 1024


class Problems:
    """Collects field problems, then raises them together."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, problem: str) -> None:
        self.items.append({"field": field, "problem": problem})

    def raise_if_any(self, message: str = "the request is not valid") -> None:
        if self.items:
            raise ValidationFailed("validation_error", message, details=self.items)


async def json_body(request: Request, *, allowed: set[str], optional: bool = False
                    ) -> dict[str, Any]:
    """The request's JSON object; unknown fields are refused so typos do not pass silently."""
    raw = await read_body(request, _ADMIN_BODY_CAP)
    if not raw.strip():
        if optional:
            return {}
        raise ValidationFailed("validation_error", "a JSON object body is required",
                               details=[{"field": "$", "problem": "missing"}])
    doc = parse_json(raw)
    if not isinstance(doc, dict):
        raise ValidationFailed("validation_error", "the body must be a JSON object",
                               details=[{"field": "$", "problem": "expected an object"}])
    problems = Problems()
    for name in sorted(set(doc) - allowed):
        problems.add(name, "unknown field")
    problems.raise_if_any()
    return doc


def string(doc: dict[str, Any], name: str, problems: Problems, *, required: bool = False,
           max_len: int = 2048, nullable: bool = False) -> str | None:
    if name not in doc or (doc[name] is None and nullable):
        if required:
            problems.add(name, "is required")
        return None
    value = doc[name]
    if not isinstance(value, str) or not value:
        problems.add(name, "must be a non-empty string")
        return None
    if len(value) > max_len:
        problems.add(name, f"must be at most {max_len} characters")
        return None
    return value


def run_id(doc: dict[str, Any], name: str, problems: Problems) -> str | None:
    """A provider's run id: it goes into provider URLs (escaped) and Redis keys, so no
    whitespace or control characters."""
    value = string(doc, name, problems, required=True, max_len=256)
    if value is not None and any(c.isspace() or not c.isprintable() for c in value):
        problems.add(name, "must not contain whitespace or control characters")
        return None
    return value


def string_list(doc: dict[str, Any], name: str, problems: Problems, *, nullable: bool = True,
                max_items: int = 100) -> list[str] | None:
    if name not in doc or doc[name] is None:
        if name in doc and not nullable:
            problems.add(name, "must be a list of strings")
        return None
    value = doc[name]
    if (not isinstance(value, list) or not value or len(value) > max_items
            or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)):
        problems.add(name, f"must be a non-empty list of at most {max_items} non-empty strings")
        return None
    return list(value)


def boolean(doc: dict[str, Any], name: str, problems: Problems) -> bool | None:
    if name not in doc:
        return None
    if not isinstance(doc[name], bool):
        problems.add(name, "must be true or false")
        return None
    return bool(doc[name])


def timestamp(doc: dict[str, Any], name: str, problems: Problems) -> float | None:
    if name not in doc:
        problems.add(name, "is required (ISO 8601 or Unix seconds)")
        return None
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.add(name, "must be ISO 8601 or Unix seconds")
        return None
    try:
        return clock.parse_time(value)
    except (ValueError, OverflowError):
        problems.add(name, "must be ISO 8601 or Unix seconds")
        return None


def paging(request: Request) -> tuple[int, str | None]:
    problems = Problems()
    raw = request.query_params.get("limit", "20")
    limit = 20
    try:
        limit = int(raw)
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        problems.add("limit", "must be a whole number from 1 to 100")
    problems.raise_if_any()
    return limit, request.query_params.get("cursor") or None
