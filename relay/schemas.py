"""The admin API's request bodies, declared once for the API, the CLI and /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Required, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    with_config,
)

# pydantic reads TypedDicts from typing_extensions on Python 3.11.
from typing_extensions import TypedDict

from relay import clock
from relay.errors import ValidationFailed
from relay.providers import callback_names, poll_names

T = TypeVar("T")

# Unknown fields are refused so typos do not pass silently; strict: "yes" is not a boolean.
_CLOSED = ConfigDict(extra="forbid", strict=True)

Name = Annotated[str, Field(min_length=1, max_length=256)]
Names = Annotated[list[Name], Field(min_length=1, max_length=100)]
Url = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"format": "uri"})]
Description = Annotated[str, Field(min_length=1, max_length=1000)]
TechniqueId = Annotated[str, Field(min_length=1, max_length=256)]


def _registered(names: Any) -> Any:
    """A provider name, read from the registry when the request arrives."""

    def check(value: str) -> str:
        if value not in names():
            raise ValueError(f"must be one of {', '.join(names())}")
        return value

    return AfterValidator(check)


def _printable(value: str) -> str:
    # A run id goes into provider URLs (escaped) and Redis keys.
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain whitespace or control characters")
    return value


def _time(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be ISO 8601 or Unix seconds")
    try:
        return clock.parse_time(value)
    except (ValueError, OverflowError):
        raise ValueError("must be ISO 8601 or Unix seconds") from None


@with_config(_CLOSED)
class SubscriptionInput(TypedDict, total=False):
    url: Required[Url]
    events: Annotated[Names, Field(description="Glob patterns.",
                                   json_schema_extra={"default": ["*"]})]
    providers: Annotated[Names | None, Field(description="Glob patterns; null: no filter.")]
    channels: Annotated[Names | None, Field(description="Glob patterns; null: no filter.")]
    description: Description | None
    enabled: Annotated[bool, Field(json_schema_extra={"default": True})]


@with_config(_CLOSED)
class SubscriptionPatch(TypedDict, total=False):
    url: Url
    events: Annotated[Names, Field(description="Glob patterns.")]
    providers: Annotated[Names | None, Field(description="Glob patterns; null: no filter.")]
    channels: Annotated[Names | None, Field(description="Glob patterns; null: no filter.")]
    description: Description | None
    enabled: bool


@with_config(_CLOSED)
class RecoverRequest(TypedDict):
    since: Annotated[float, BeforeValidator(_time), WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "number"}],
         "description": "ISO 8601 or Unix seconds."})]


@with_config(_CLOSED)
class CallbackUrlRequest(TypedDict, total=False):
    provider: Required[Annotated[str, _registered(callback_names),
                                 WithJsonSchema({"type": "string",
                                                 "enum": list(callback_names())})]]
    channels: Names
    metadata: Annotated[Any, Field(description="Any JSON value.")]
    technique_id: TechniqueId


@with_config(_CLOSED)
class TrackRunRequest(TypedDict, total=False):
    # Any name passes here: an unknown or unpolled provider is `provider_not_configured`.
    provider: Required[Annotated[str, Field(min_length=1, max_length=64),
                                 WithJsonSchema({"type": "string",
                                                 "enum": list(poll_names())})]]
    run_id: Required[Annotated[Name, AfterValidator(_printable)]]
    technique_id: Annotated[TechniqueId | None, Field(
        description="Required for `flora`: its retrieve URL needs it.")]
    channels: Names
    metadata: Annotated[Any, Field(description="Any JSON value.")]


@with_config(_CLOSED)
class RedeliverRequest(TypedDict, total=False):
    subscription_ids: Annotated[Names, Field(
        description="Default: every subscription that matches the event now.")]


REQUESTS: tuple[type, ...] = (SubscriptionInput, SubscriptionPatch, RecoverRequest,
                              CallbackUrlRequest, TrackRunRequest, RedeliverRequest)
_ADAPTERS: dict[type, TypeAdapter[Any]] = {t: TypeAdapter(t) for t in REQUESTS}

# pydantic's words for the two problems every body can have, in the API's words.
_PROBLEMS = {"missing": "is required", "extra_forbidden": "unknown field"}


def parse(shape: type[T], doc: Any) -> T:
    """`doc` as a `shape`, or ValidationFailed with one `{field, problem}` per field at fault."""
    try:
        value: T = _ADAPTERS[shape].validate_python(doc)
    except ValidationError as exc:
        details: dict[str, str] = {}
        for error in exc.errors(include_url=False, include_context=False):
            # The top-level field: it is what a caller (or a CLI option) names.
            field = str(error["loc"][0]) if error["loc"] else "$"
            problem = _PROBLEMS.get(error["type"]) or error["msg"].removeprefix("Value error, ")
            details.setdefault(field, problem[:1].lower() + problem[1:])
        raise ValidationFailed(
            "validation_error", "the request is not valid",
            details=[{"field": f, "problem": p} for f, p in details.items()]) from None
    return value


def json_schemas(ref_template: str) -> dict[str, Any]:
    """Each request body's JSON Schema (2020-12, as OpenAPI 3.1 takes it), by its name."""
    _, doc = TypeAdapter.json_schemas(
        [(t, "validation", _ADAPTERS[t]) for t in REQUESTS], ref_template=ref_template)
    schemas: dict[str, Any] = doc["$defs"]
    return schemas
