"""OpenAPI component schemas: responses, errors, the emitted event, and relay.schemas' bodies."""

from __future__ import annotations

from typing import Any

from relay import schemas
from relay.models import DeliveryStatus
from relay.providers import names
from relay.runs import RunState

Doc = dict[str, Any]

# ---- schema helpers ---------------------------------------------------------------------


def ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def typ(kind: str, *, null: bool = False, **extra: Any) -> Doc:
    """A typed schema; `null=True` also admits null (OpenAPI 3.1 type arrays)."""
    return {"type": [kind, "null"] if null else kind, **extra}


def obj(props: dict[str, Doc], *, required: tuple[str, ...] | None = None,
        optional: tuple[str, ...] = (), closed: bool = False, **extra: Any) -> Doc:
    """An object; every property but `optional` is required unless `required` names them."""
    names = [p for p in props if p not in optional] if required is None else list(required)
    doc: Doc = {"type": "object", "properties": props, **extra}
    if names:
        doc["required"] = names
    if closed:
        doc["additionalProperties"] = False
    return doc


def array(items: Doc, *, null: bool = False, **extra: Any) -> Doc:
    return typ("array", null=null, items=items, **extra)


def page(item: str) -> Doc:
    cursor = typ("string", null=True, description="`?cursor=` of the next page; null at the end.")
    return obj({"data": array(ref(item)), "next_cursor": cursor})


def extend(base: str, props: dict[str, Doc]) -> Doc:
    return {"allOf": [ref(base), obj(props)]}


STR = typ("string")
TIME = typ("string", format="date-time", description="ISO 8601 UTC, `+00:00`")
TIME_OR_NULL = typ("string", null=True, format="date-time")
ANY: Doc = {"description": "Any JSON value."}
PROVIDERS = list(names())
DELIVERY_STATUSES = [s.value for s in DeliveryStatus]

SCHEMAS: dict[str, Doc] = {
    **schemas.json_schemas("#/components/schemas/{model}"),
    "Problem": obj({"field": STR, "problem": STR}),
    "Error": obj({"error": obj({
        "code": typ("string", pattern="^[a-z_]+$"),
        "message": typ("string", description="Human-readable."),
        "details": array(ref("Problem"), description="Present on 422 answers."),
    }, required=("code", "message"))}),
    "OutputItem": obj({
        "type": typ("string", enum=["image", "video", "audio", "text", "document"]),
        "url": typ("string", format="uri"), "expires_at": TIME, "text": STR,
    }, required=("type",)),
    "RunError": obj({"code": typ("string", null=True), "message": typ("string", null=True),
                     "stage": typ("string", null=True)}),
    "Event": obj({
        "id": typ("string", pattern="^evt_", description="Also the `webhook-id` header."),
        "event": typ("string", examples=["run.completed", "run.failed", "run.cancelled",
                                         "run.partial_succeeded", "run.updated", "run.expired",
                                         "relay.test", "batch.completed"]),
        "provider": typ("string", examples=[*PROVIDERS, "relay"]),
        "run_id": typ("string", null=True),
        "batch_id": typ("string", description="Runflow `batch.*` events only."),
        "status": typ("string", null=True, examples=["succeeded", "failed", "canceled"]),
        "output": {"description": "Runflow's `output` as received; for synthesized events "
                                  "`{outputs: [OutputItem]}`; null when failed or cancelled.",
                   "anyOf": [obj({"outputs": array(ref("OutputItem"))}), {}]},
        "error": {"anyOf": [ref("RunError"), {"type": "null"}]},
        "duration_ms": typ("integer", null=True),
        "created_at": TIME_OR_NULL, "completed_at": TIME_OR_NULL,
        "metadata": ANY, "channels": array(STR),
        "source": typ("string", enum=["callback", "poll", "relay"]), "observed_at": TIME,
        "provider_payload": {"description": "The provider's own JSON, untouched."},
    }, optional=("batch_id",), description="The body delivered to subscribers (CONTRACT 5)."),
    "EventWithDeliveries": extend("Event", {"deliveries": array(ref("Delivery"))}),
    "EventPage": page("Event"),
    "RunflowEnvelope": obj({
        "event": STR, "run_id": STR, "batch_id": STR,
        "status": typ("string", examples=["succeeded", "failed", "canceled", "cancelled"]),
        "output": ANY, "duration_ms": typ("number", null=True),
        "created_at": typ("string", null=True), "completed_at": typ("string", null=True),
        "metadata": ANY,
    }, required=(), description="Needs `run_id` or `batch_id`, and `event` or `status`."),
    "FloraCallback": obj({
        "id": STR,
        "type": typ("string", enum=["run.completed", "run.failed"]),
        "created_at": typ("integer", description="Unix milliseconds."),
        "data": obj({"run_id": STR, "status": STR, "error_code": typ("string", null=True),
                     "error_message": typ("string", null=True)}, required=("run_id", "status")),
    }),
    "CallbackAccepted": obj({"ok": typ("boolean", const=True), "event_id": STR,
                             "duplicate": typ("boolean")}),
    "Subscription": obj({
        "id": typ("string", pattern="^sub_"), "url": typ("string", format="uri"),
        "events": array(STR), "providers": array(STR, null=True),
        "channels": array(STR, null=True), "description": typ("string", null=True),
        "enabled": typ("boolean"), "status": typ("string", enum=["enabled", "disabled"]),
        "disabled_reason": typ("string", null=True), "created_at": TIME, "updated_at": TIME,
    }),
    "SubscriptionCreated": extend("Subscription", {"secret": ref("Secret")}),
    "SubscriptionPage": page("Subscription"),
    "Secret": typ("string", pattern="^whsec_", description="`whsec_` + base64 of 32 bytes."),
    "SecretView": obj({"secret": ref("Secret")}),
    "RotatedSecret": obj({"secret": ref("Secret"), "previous_secret_expires_at": TIME_OR_NULL}),
    "TestSent": obj({"event_id": STR, "delivery_id": STR}),
    "Recovered": obj({"requeued": typ("integer", minimum=0)}),
    "CallbackUrl": obj({"url": typ("string", format="uri")}),
    "Redelivered": obj({"deliveries": array(STR, description="The new delivery ids.")}),
    "Delivery": obj({
        "id": STR, "event_id": STR, "subscription_id": STR,
        "status": typ("string", enum=DELIVERY_STATUSES),
        "attempts_made": typ("integer", minimum=0),
        "next_attempt_at": TIME_OR_NULL, "created_at": TIME, "updated_at": TIME,
    }),
    "Attempt": obj({
        "attempt": typ("integer", minimum=1), "at": TIME,
        "status_code": typ("integer", null=True), "duration_ms": typ("integer"),
        "error": typ("string", null=True),
        "response_body": typ("string", null=True, description="The first 4 KiB."),
    }),
    "DeliveryWithAttempts": extend("Delivery", {"attempts": array(ref("Attempt"))}),
    "DeliveryPage": page("Delivery"),
    "TrackedRun": obj({
        "provider": typ("string", enum=PROVIDERS), "run_id": STR,
        "technique_id": typ("string", null=True),
        "status": typ("string", null=True, description="The last status seen; null before "
                      "the first poll.", examples=["queued", "running", "succeeded"]),
        "state": typ("string", enum=[s.value for s in RunState]),
        "progress": typ("number", null=True),
        "tracked_since": TIME, "last_polled_at": TIME_OR_NULL, "next_poll_at": TIME_OR_NULL,
        "polls": typ("integer", minimum=0),
        "last_error": {"anyOf": [obj({"code": STR, "message": STR,
                                     "status_code": typ("integer", null=True)}),
                                 {"type": "null"}],
                       "description": "The last poll's failure (auth, 404, 429, 5xx...)."},
        "channels": array(STR), "metadata": ANY, "finished_at": TIME_OR_NULL,
        "events": array(STR, description="Event ids, oldest first."),
    }),
    "TrackedRunPage": page("TrackedRun"),
    "Ok": obj({"ok": typ("boolean", const=True)}),
}
