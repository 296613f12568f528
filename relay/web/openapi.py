"""GET /openapi.json: the OpenAPI 3.1 document of every route and of the event relay emits."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay import __version__
from relay.runs import STATE_FILTERS
from relay.web.components import (
    DELIVERY_STATUSES,
    PROVIDERS,
    SCHEMAS,
    STR,
    Doc,
    ref,
    typ,
)

JSON = "application/json"

# ---- responses and parameters -----------------------------------------------------------

ERRORS: dict[str, tuple[int, str, str]] = {  # code: (status, example message, 422 field)
    "invalid_json": (400, "the body is not valid JSON", ""),
    "unauthorized": (401, "a valid API key is required: Authorization: Bearer <key>", ""),
    "invalid_signature": (401, "the signature does not match the body", ""),
    "invalid_token": (401, "the callback token is not valid", ""),
    "forbidden": (403, "log in again: the form has expired", ""),
    "not_found": (404, "no such resource", ""),
    "payload_too_large": (413, "the body is larger than the limit", ""),
    "invalid_envelope": (422, "the body is not a callback envelope", "run_id"),
    "invalid_url": (422, "the URL must be an absolute http:// or https:// URL", "url"),
    "validation_error": (422, "the request is not valid", "limit"),
    "unknown_subscription": (422, "no such subscription", "subscription_ids"),
    "provider_not_configured": (422, "the provider has no API key configured", "provider"),
    "unavailable": (503, "storage cannot be reached; retry later", ""),
}


def errors(*codes: str) -> dict[str, Doc]:
    """One response per status, naming its codes, with an example body for each code."""
    by_status: dict[str, list[str]] = {}
    for code in sorted(dict.fromkeys(codes), key=lambda c: ERRORS[c][0]):
        by_status.setdefault(str(ERRORS[code][0]), []).append(code)
    out: dict[str, Doc] = {}
    for status, group in by_status.items():
        examples: Doc = {}
        for code in group:
            _, message, field = ERRORS[code]
            error: Doc = {"code": code, "message": message}
            if field:
                error["details"] = [{"field": field, "problem": "is not valid"}]
            examples[code] = {"value": {"error": error}}
        out[status] = {"description": " or ".join(f"`{c}`" for c in group),
                       "content": {JSON: {"schema": ref("Error"), "examples": examples}}}
    return out


def query(name: str, schema: Doc, description: str) -> Doc:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def header(name: str, description: str, *, required: bool) -> Doc:
    return {"name": name, "in": "header", "required": required, "schema": STR,
            "description": description}


PAGING = [
    query("limit", typ("integer", minimum=1, maximum=100, default=20), "Page size."),
    query("cursor", STR, "`next_cursor` of the previous page."),
]
PATH_PARAMS = {
    "id": "The resource id.",
    "token": "A callback token minted by `POST /v1/callback-urls`.",
    "provider": "The run's provider.",
    "run_id": "The provider's run id.",
}
BODY = ("invalid_json", "payload_too_large", "validation_error")


def op(op_id: str, summary: str, ok: dict[str, Doc], *, errs: tuple[str, ...] = (),
       body: str | None = None, body_required: bool = True, params: list[Doc] | None = None,
       auth: bool = True, storage: bool = True) -> Doc:
    """One operation; `auth` adds bearer security and 401, `body` 400/413/422, `storage` 503."""
    codes = (*(("unauthorized", *(BODY if body else ())) if auth else ()), *errs,
             *(("unavailable",) if storage and auth else ()))
    doc: Doc = {"operationId": op_id, "summary": summary,
                "security": [{"bearerAuth": []}] if auth else [],
                "responses": {**ok, **errors(*codes)}}
    if params:
        doc["parameters"] = params
    if body:
        doc["requestBody"] = {"required": body_required, "content": {JSON: {"schema": ref(body)}}}
    return doc


def ok(status: int, description: str, schema: str | Doc, media: str = JSON) -> dict[str, Doc]:
    """A success response; a str `schema` names a component."""
    body = ref(schema) if isinstance(schema, str) else schema
    return {str(status): {"description": description, "content": {media: {"schema": body}}}}


NO_CONTENT = {"204": {"description": "Done; no body."}}


def callback(provider: str, *, token: bool) -> Doc:
    if provider == "runflow":
        sig = header("Runflow-Signature", "Lowercase hex HMAC-SHA256 of the raw body, keyed by "
                     "any of `RUNFLOW_CALLBACK_SECRETS`." + (" Required when secrets are "
                     "configured." if token else " Without a configured secret, 401."),
                     required=not token)
    else:
        sig = header("Flora-Signature", "`t=<unix s>,v1=<hex>[,v1=...]`: hex HMAC-SHA256 of "
                     "`{t}.{raw body}`, any of `FLORA_WEBHOOK_SECRETS`, `t` within 300 s.",
                     required=True)
    codes = ("invalid_json", "invalid_signature", "payload_too_large", "invalid_envelope",
             "unavailable", *(("invalid_token",) if token else ()))
    name = provider.capitalize()
    return op(f"{provider}_callback{'_with_token' if token else ''}",
              f"Accept a signed {name} callback" + (" through a minted URL" if token else ""),
              ok(200, "Stored (`duplicate: true`: already accepted, no new fan-out).",
                 "CallbackAccepted"),
              errs=codes, body="RunflowEnvelope" if provider == "runflow" else "FloraCallback",
              params=[sig], auth=False)


def listing(op_id: str, summary: str, schema: str, *filters: Doc) -> Doc:
    """A paged list: `?limit=`, `?cursor=` and the filters; a bad limit or filter is 422."""
    return op(op_id, f"{summary}, newest first", ok(200, "One page.", schema),
              errs=("validation_error",), params=[*filters, *PAGING])


def public(op_id: str, summary: str, response: dict[str, Doc], *errs: str) -> Doc:
    return op(op_id, summary, response, errs=errs, auth=False)


def html(op_id: str, summary: str, *errs: str) -> Doc:
    """A dashboard page: HTML for a logged-in session, else the login form (a 303 for details)."""
    return public(op_id, summary, {**ok(200, "HTML.", STR, "text/html"),
                                   "303": {"description": "Not logged in: to /ui."}}, *errs)


def form(op_id: str, summary: str, *errs: str) -> Doc:
    """A dashboard form post (urlencoded, with the session's `csrf` field); answers a 303."""
    doc = public(op_id, summary, {"303": {"description": "Done: back to a dashboard page."}},
                 "payload_too_large", *errs)
    doc["requestBody"] = {"required": True, "content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "properties": {"csrf": STR, "api_key": STR}}}}}
    return doc


NOT_FOUND = ("not_found",)
PATHS: dict[str, dict[str, Doc]] = {
    "/callbacks/runflow": {"post": callback("runflow", token=False)},
    "/callbacks/runflow/{token}": {"post": callback("runflow", token=True)},
    "/callbacks/flora": {"post": callback("flora", token=False)},
    "/callbacks/flora/{token}": {"post": callback("flora", token=True)},
    "/v1/runs": {
        "post": op("track_run", "Track a run on the poll scheduler (idempotent)",
                   {**ok(201, "Now tracked.", "TrackedRun"),
                    **ok(200, "Already tracked: the run as it is.", "TrackedRun")},
                   errs=("provider_not_configured",), body="TrackRunRequest"),
        "get": listing("list_runs", "List tracked runs", "TrackedRunPage",
                       query("provider", typ("string", enum=PROVIDERS), "Only this provider."),
                       query("state", typ("string", enum=list(STATE_FILTERS)),
                             "Only active (still polled) or finished runs.")),
    },
    "/v1/runs/{provider}/{run_id}": {
        "get": op("show_run", "Show a tracked run with its polls and events",
                  ok(200, "The run.", "TrackedRun"), errs=NOT_FOUND),
        "delete": op("untrack_run", "Stop tracking a run (its events stay)", NO_CONTENT,
                     errs=NOT_FOUND),
    },
    "/v1/subscriptions": {
        "post": op("create_subscription", "Create a subscription",
                   ok(201, "Created; `secret` is shown here.", "SubscriptionCreated"),
                   errs=("invalid_url",), body="SubscriptionInput"),
        "get": listing("list_subscriptions", "List subscriptions", "SubscriptionPage"),
    },
    "/v1/subscriptions/{id}": {
        "get": op("show_subscription", "Show a subscription",
                  ok(200, "The subscription.", "Subscription"), errs=NOT_FOUND),
        "patch": op("update_subscription", "Change a subscription",
                    ok(200, "The updated subscription.", "Subscription"),
                    errs=(*NOT_FOUND, "invalid_url"), body="SubscriptionPatch"),
        "delete": op("delete_subscription",
                     "Delete a subscription; its pending deliveries are cancelled",
                     NO_CONTENT, errs=NOT_FOUND),
    },
    "/v1/subscriptions/{id}/secret": {
        "get": op("subscription_secret", "Show the signing secret",
                  ok(200, "The current secret.", "SecretView"), errs=NOT_FOUND)},
    "/v1/subscriptions/{id}/rotate-secret": {
        "post": op("rotate_secret",
                   "Rotate the secret; the old one signs too for RELAY_ROTATION_GRACE",
                   ok(200, "The new secret.", "RotatedSecret"), errs=NOT_FOUND)},
    "/v1/subscriptions/{id}/test": {
        "post": op("test_subscription", "Send a `relay.test` event to this subscription only",
                   ok(202, "Queued.", "TestSent"), errs=NOT_FOUND)},
    "/v1/subscriptions/{id}/recover": {
        "post": op("recover_subscription",
                   "Re-queue its `dead` deliveries created since a time",
                   ok(200, "How many were re-queued.", "Recovered"), errs=NOT_FOUND,
                   body="RecoverRequest")},
    "/v1/callback-urls": {
        "post": op("mint_callback_url", "Mint a signed callback URL to give a provider",
                   ok(200, "The URL.", "CallbackUrl"), body="CallbackUrlRequest", storage=False)},
    "/v1/events": {
        "get": listing("list_events", "List events", "EventPage",
                       query("provider", STR, "Only this provider."),
                       query("run_id", STR, "Only this run."),
                       query("type", STR, "Only this event type."))},
    "/v1/events/{id}": {
        "get": op("show_event", "Show an event and its deliveries",
                  ok(200, "The envelope plus `deliveries`.", "EventWithDeliveries"),
                  errs=NOT_FOUND)},
    "/v1/events/{id}/redeliver": {
        "post": op("redeliver_event", "Deliver a stored event again",
                   ok(202, "New deliveries queued.", "Redelivered"),
                   errs=("not_found", "unknown_subscription"), body="RedeliverRequest",
                   body_required=False)},
    "/v1/deliveries": {
        "get": listing("list_deliveries", "List deliveries", "DeliveryPage",
                       query("subscription_id", STR, "Only this subscription."),
                       query("event_id", STR, "Only this event."),
                       query("status", typ("string", enum=DELIVERY_STATUSES), "Only these."))},
    "/v1/deliveries/{id}": {
        "get": op("show_delivery", "Show a delivery and its attempt log",
                  ok(200, "The delivery.", "DeliveryWithAttempts"), errs=NOT_FOUND)},
    "/v1/deliveries/{id}/retry": {
        "post": op("retry_delivery", "Queue a delivery for another attempt now",
                   ok(202, "Queued.", "DeliveryWithAttempts"), errs=NOT_FOUND)},
    "/ui": {"get": html("dashboard", "The operator dashboard, or its API-key login form")},
    "/ui/login": {"post": form("dashboard_login", "Log in with an API key (sets a signed "
                               "session cookie)")},
    "/ui/logout": {"post": form("dashboard_logout", "Log out", "forbidden")},
    "/ui/events/{id}": {"get": html("dashboard_event", "An event and its deliveries",
                                    "not_found")},
    "/ui/deliveries/{id}": {"get": html("dashboard_delivery", "A delivery and its attempts",
                                        "not_found")},
    "/ui/deliveries/{id}/retry": {"post": form("dashboard_retry", "Retry a delivery now",
                                               "forbidden", "not_found")},
    "/healthz": {"get": public("healthz", "Liveness", ok(200, "The process runs.", "Ok"))},
    "/readyz": {"get": public("readyz", "Readiness: Redis answers",
                              ok(200, "Ready.", "Ok"), "unavailable")},
    "/metrics": {"get": public("metrics", "Prometheus metrics",
                               ok(200, "Prometheus text format.", STR, "text/plain"))},
    "/openapi.json": {"get": public("openapi", "This document",
                                    ok(200, "OpenAPI 3.1.", typ("object")))},
}


def finish(paths: dict[str, dict[str, Doc]]) -> dict[str, Doc]:
    """Tag each operation by its path, and declare each `{name}` once at the path level."""
    out: dict[str, Doc] = {}
    for path, item in paths.items():
        _, top, sub, *_ = [*path.split("/"), ""]
        tag = sub if top == "v1" else "callbacks" if top == "callbacks" else "operations"
        params = [{"name": n, "in": "path", "required": True, "schema": STR,
                   "description": PATH_PARAMS[n]} for n in re.findall(r"{(\w+)}", path)]
        out[path] = {**({"parameters": params} if params else {}),
                     **{method: {**o, "tags": [tag]} for method, o in item.items()}}
    return out


# CONTRACT 5: what relay POSTs to a subscriber, so a subscriber can generate a client for it.
WEBHOOKS: dict[str, Doc] = {"event": {"post": {
    "operationId": "event", "summary": "One event, delivered to a subscription's URL",
    "parameters": [
        header("webhook-id", "The event id (`evt_...`): the same for every attempt and replay.",
               required=True),
        header("webhook-timestamp", "Integer Unix seconds of this attempt.", required=True),
        header("webhook-signature", "`v1,<base64 HMAC-SHA256 of \"{webhook-id}."
               "{webhook-timestamp}.{body}\">`, keyed by the secret's base64 part; two, "
               "space-separated, during a rotation grace.", required=True),
    ],
    "requestBody": {"required": True, "content": {JSON: {"schema": ref("Event")}}},
    "responses": {"2XX": {"description": "Delivered; any other answer is retried."}},
}}}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "relay", "version": __version__,
             "description": "Webhook receiver and callback relay for AI-generation run APIs."},
    "tags": [{"name": n} for n in ("callbacks", "subscriptions", "runs", "callback-urls",
                                   "events", "deliveries", "operations")],
    "paths": finish(PATHS),
    "webhooks": WEBHOOKS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "One of `RELAY_API_KEYS`.",
        }},
    },
}


async def endpoint(request: Request) -> Response:
    return JSONResponse(SPEC)
