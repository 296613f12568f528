"""GET /openapi.json: served, valid OpenAPI 3.1, and documenting every route the app serves."""

from __future__ import annotations

import re
from typing import Any

import httpx
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from starlette.routing import Route

from relay.config import Settings
from relay.web.app import create_app
from relay.web.openapi import SPEC
from tests.helpers import RedisServer, admin_headers, runflow_body, runflow_signature


def assert_matches(body: Any, schema: str) -> None:
    """`body` is valid per the named component schema of the document."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]}
    OAS31Validator(root).validate(body)


async def test_openapi_json_is_served_as_an_openapi_3_document(
        client: httpx.AsyncClient) -> None:
    """GET /openapi.json answers 200 with an `openapi: 3.x` document that has paths."""
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert doc["paths"]


def test_every_route_of_the_app_is_documented_with_each_method(
        settings: Settings, redis_server: RedisServer) -> None:
    """Each (path, method) the app registers, HEAD aside, appears under the spec's paths."""
    app = create_app(settings, redis_server.url)
    served = {(re.sub(r":\w+}", "}", route.path), method.lower())
              for route in app.routes if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"}
    assert served, "the app registers no routes?"
    missing = sorted((path, method) for path, method in served
                     if method not in SPEC["paths"].get(path, {}))
    assert not missing, f"routes missing from the OpenAPI document: {missing}"
    documented = {(path, method) for path, item in SPEC["paths"].items()
                  for method in item if method != "parameters"}
    assert documented <= served, f"documented but not served: {sorted(documented - served)}"


def test_document_is_valid_openapi() -> None:
    """openapi-spec-validator accepts the document (it raises on the first problem)."""
    validate(SPEC)


def test_admin_operations_require_bearer_auth_and_callbacks_do_not() -> None:
    """/v1/* operations declare bearerAuth and 401; callbacks declare a signature header instead."""
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearerAuth": []}], (path, method)
                assert "401" in operation["responses"], (path, method)
            else:
                assert operation["security"] == [], (path, method)
            if path.startswith("/callbacks/"):
                headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
                assert headers & {"Runflow-Signature", "Flora-Signature"}, (path, method)


def test_every_error_response_uses_the_error_schema() -> None:
    """Each 4xx/5xx response of every operation has the `{error: {code, message}}` body."""
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status >= "400":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)


async def test_real_answers_match_their_documented_schemas(client: httpx.AsyncClient) -> None:
    """Callback, subscription, event, delivery and error answers fit their documented schemas."""
    h = admin_headers()
    body = runflow_body("run-openapi")
    r = await client.post("/callbacks/runflow", content=body,
                          headers={"runflow-signature": runflow_signature(body)})
    assert_matches(r.json(), "CallbackAccepted")
    r = await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"}, headers=h)
    assert r.status_code == 201
    assert_matches(r.json(), "SubscriptionCreated")
    sub_id = r.json()["id"]
    assert_matches((await client.get("/v1/subscriptions", headers=h)).json(), "SubscriptionPage")
    assert_matches((await client.post(f"/v1/subscriptions/{sub_id}/rotate-secret",
                                      headers=h)).json(), "RotatedSecret")
    sent = (await client.post(f"/v1/subscriptions/{sub_id}/test", headers=h)).json()
    assert_matches(sent, "TestSent")
    assert_matches((await client.get(f"/v1/events/{sent['event_id']}", headers=h)).json(),
                   "EventWithDeliveries")
    assert_matches((await client.get("/v1/events", headers=h)).json(), "EventPage")
    assert_matches((await client.get(f"/v1/deliveries/{sent['delivery_id']}", headers=h)).json(),
                   "DeliveryWithAttempts")
    assert_matches((await client.get("/v1/deliveries", headers=h)).json(), "DeliveryPage")
    r = await client.get("/v1/subscriptions/sub_nope", headers=h)
    assert r.status_code == 404
    assert_matches(r.json(), "Error")
    r = await client.get("/v1/deliveries?limit=0", headers=h)
    assert r.status_code == 422
    assert_matches(r.json(), "Error")


def test_request_bodies_are_the_schemas_the_api_validates_with() -> None:
    """Each admin request body is the JSON Schema of the shape the API parses it as (provider
    callbacks are read by their own hand-written fast path, and documented by hand)."""
    from relay import schemas

    generated = schemas.json_schemas("#/components/schemas/{model}")
    for shape in schemas.REQUESTS:
        assert SPEC["components"]["schemas"][shape.__name__] == generated[shape.__name__]
    bodies = {o["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/")[-1]
              for path, item in SPEC["paths"].items() if path.startswith("/v1/")
              for m, o in item.items() if m != "parameters" and "requestBody" in o}
    assert bodies == {s.__name__ for s in schemas.REQUESTS}


def test_the_emitted_event_is_documented_as_a_webhook() -> None:
    """CONTRACT 5 under OpenAPI 3.1 `webhooks`: the Event body and the three signature headers."""
    post = SPEC["webhooks"]["event"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Event"}
    assert {p["name"] for p in post["parameters"]} == {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
