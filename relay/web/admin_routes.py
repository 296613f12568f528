"""The admin API (CONTRACT 4.2): subscriptions, tracked runs, callback URLs, events, deliveries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay import schemas
from relay.errors import ValidationFailed
from relay.models import DeliveryStatus
from relay.runs import STATE_FILTERS
from relay.signing import CallbackClaims
from relay.web.common import admin, json_body, paging, state_of


@admin
async def create_subscription(request: Request) -> Response:
    spec = await json_body(request, schemas.SubscriptionInput)
    sub, secret = await state_of(request).relay.create_subscription(dict(spec))
    return JSONResponse({**sub.public(), "secret": secret}, status_code=201)


@admin
async def list_subscriptions(request: Request) -> Response:
    limit, cursor = paging(request)
    state = state_of(request)
    page = await state.store.list_subscriptions(limit, cursor)
    subs = await state.store.get_subscriptions(page.ids)
    return JSONResponse({"data": [s.public() for s in subs.values() if s is not None],
                         "next_cursor": page.next_cursor})


@admin
async def show_subscription(request: Request) -> Response:
    sub = await state_of(request).relay.subscription(request.path_params["id"])
    return JSONResponse(sub.public())


@admin
async def update_subscription(request: Request) -> Response:
    spec = await json_body(request, schemas.SubscriptionPatch)
    sub = await state_of(request).relay.update_subscription(request.path_params["id"],
                                                            dict(spec))
    return JSONResponse(sub.public())


@admin
async def delete_subscription(request: Request) -> Response:
    await state_of(request).relay.delete_subscription(request.path_params["id"])
    return Response(status_code=204)


@admin
async def subscription_secret(request: Request) -> Response:
    sub = await state_of(request).relay.subscription(request.path_params["id"])
    return JSONResponse({"secret": sub.secret})


@admin
async def rotate_secret(request: Request) -> Response:
    return JSONResponse(await state_of(request).relay.rotate_secret(request.path_params["id"]))


@admin
async def test_subscription(request: Request) -> Response:
    event_id, delivery_id = await state_of(request).relay.send_test(request.path_params["id"])
    return JSONResponse({"event_id": event_id, "delivery_id": delivery_id}, status_code=202)


@admin
async def recover_subscription(request: Request) -> Response:
    body = await json_body(request, schemas.RecoverRequest)
    count = await state_of(request).relay.recover(request.path_params["id"], body["since"])
    return JSONResponse({"requeued": count})


@admin
async def mint_callback_url(request: Request) -> Response:
    body = await json_body(request, schemas.CallbackUrlRequest)
    claims = CallbackClaims(body["provider"], tuple(body.get("channels", ())),
                            body.get("metadata"), body.get("technique_id"))
    state = state_of(request)
    return JSONResponse({"url": state.signer.url(state.settings.public_url, claims)})


@admin
async def track_run(request: Request) -> Response:
    body = await json_body(request, schemas.TrackRunRequest)
    view, created = await state_of(request).tracking.track(
        body["provider"], body["run_id"], technique_id=body.get("technique_id"),
        channels=body.get("channels"), metadata=body.get("metadata"))
    return JSONResponse(view, status_code=201 if created else 200)


@admin
async def list_runs(request: Request) -> Response:
    limit, cursor = paging(request)
    q = request.query_params
    state_filter = q.get("state") or None
    if state_filter is not None and state_filter not in STATE_FILTERS:
        raise ValidationFailed("validation_error", "unknown run state", details=[
            {"field": "state", "problem": f"must be one of {', '.join(STATE_FILTERS)}"}])
    data, next_cursor = await state_of(request).tracking.list(
        provider=q.get("provider") or None, state=state_filter, limit=limit, cursor=cursor)
    return JSONResponse({"data": data, "next_cursor": next_cursor})


@admin
async def show_run(request: Request) -> Response:
    p = request.path_params
    return JSONResponse(await state_of(request).tracking.show(p["provider"], p["run_id"]))


@admin
async def untrack_run(request: Request) -> Response:
    p = request.path_params
    await state_of(request).tracking.untrack(p["provider"], p["run_id"])
    return Response(status_code=204)


@admin
async def list_events(request: Request) -> Response:
    limit, cursor = paging(request)
    state = state_of(request)
    q = request.query_params
    page = await state.store.list_events(
        provider=q.get("provider") or None, run_id=q.get("run_id") or None,
        event_type=q.get("type") or None, limit=limit, cursor=cursor)
    return JSONResponse({"data": await state.relay.event_summaries(page),
                         "next_cursor": page.next_cursor})


@admin
async def show_event(request: Request) -> Response:
    return JSONResponse(await state_of(request).relay.event_view(request.path_params["id"]))


@admin
async def redeliver_event(request: Request) -> Response:
    body = await json_body(request, schemas.RedeliverRequest, optional=True)
    created = await state_of(request).relay.redeliver(request.path_params["id"],
                                                      body.get("subscription_ids"))
    return JSONResponse({"deliveries": created}, status_code=202)


@admin
async def list_deliveries(request: Request) -> Response:
    limit, cursor = paging(request)
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise ValidationFailed("validation_error", "unknown delivery status", details=[
            {"field": "status", "problem": "must be pending, succeeded, dead or cancelled"}])
    state = state_of(request)
    page = await state.store.list_deliveries(
        subscription_id=q.get("subscription_id") or None, event_id=q.get("event_id") or None,
        status=status, limit=limit, cursor=cursor)
    views = await state.relay.delivery_views(page.ids)
    return JSONResponse({"data": [d for d in views if d is not None],
                         "next_cursor": page.next_cursor})


@admin
async def show_delivery(request: Request) -> Response:
    return JSONResponse(await state_of(request).relay.delivery_view(request.path_params["id"]))


@admin
async def retry_delivery(request: Request) -> Response:
    view = await state_of(request).relay.retry_delivery(request.path_params["id"])
    return JSONResponse(view, status_code=202)


routes = [
    Route("/v1/subscriptions", create_subscription, methods=["POST"]),
    Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/v1/subscriptions/{id}", show_subscription, methods=["GET"]),
    Route("/v1/subscriptions/{id}", update_subscription, methods=["PATCH"]),
    Route("/v1/subscriptions/{id}", delete_subscription, methods=["DELETE"]),
    Route("/v1/subscriptions/{id}/secret", subscription_secret, methods=["GET"]),
    Route("/v1/subscriptions/{id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/subscriptions/{id}/test", test_subscription, methods=["POST"]),
    Route("/v1/subscriptions/{id}/recover", recover_subscription, methods=["POST"]),
    Route("/v1/callback-urls", mint_callback_url, methods=["POST"]),
    Route("/v1/runs", track_run, methods=["POST"]),
    Route("/v1/runs", list_runs, methods=["GET"]),
    Route("/v1/runs/{provider}/{run_id:path}", show_run, methods=["GET"]),
    Route("/v1/runs/{provider}/{run_id:path}", untrack_run, methods=["DELETE"]),
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/{id}", show_event, methods=["GET"]),
    Route("/v1/events/{id}/redeliver", redeliver_event, methods=["POST"]),
    Route("/v1/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/deliveries/{id}", show_delivery, methods=["GET"]),
    Route("/v1/deliveries/{id}/retry", retry_delivery, methods=["POST"]),
]
