"""schemathesis over the OpenAPI document against a real `relay web`: no 5xx, every answer has a
documented status, content type and schema."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.web.openapi import SPEC
from tests.fakes import FLORA_SECRET
from tests.helpers import (
    RedisServer,
    RelayProcess,
    admin_headers,
    free_port,
    relay_env,
    runflow_body,
    runflow_signature,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

# The document `GET /openapi.json` serves (test_openapi checks it is served). Loaded at
# collection: schemathesis' fixture-based loader does not work with pytest 9's nodes.
schema = schemathesis.openapi.from_dict(SPEC)

# Real ids, tokens and cursors from the running relay, so that generated requests reach the
# handlers past "not found" as well as with garbage values. Filled by the `relay_web` fixture.
KNOWN: dict[str, list[str]] = {}


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: Any
                            ) -> st.SearchStrategy[Any]:
    if not isinstance(path_parameters, dict) or not path_parameters:
        return st.just(path_parameters)
    return st.fixed_dictionaries({
        name: st.sampled_from([value, *KNOWN.get(name, [])])
        for name, value in path_parameters.items()})


@schema.hook
def flatmap_query(context: schemathesis.HookContext, query: Any) -> st.SearchStrategy[Any]:
    if not isinstance(query, dict) or "cursor" not in query:
        return st.just(query)
    return st.sampled_from([query, *({**query, "cursor": c} for c in KNOWN.get("cursor", []))])


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Generated `format: uri` values rarely resolve; a reachable URL lets creates succeed."""
    if not isinstance(body, dict) or "url" not in body:
        return st.just(body)
    return st.sampled_from([body, {**body, "url": "http://127.0.0.1:9/hook"}])


def seed(base_url: str) -> dict[str, list[str]]:
    """A subscription, an event with its delivery, a tracked run, callback tokens, cursors."""
    h = admin_headers()
    with httpx.Client(base_url=base_url, timeout=10) as c:
        subs = [c.post("/v1/subscriptions", headers=h,
                       json={"url": f"http://127.0.0.1:{free_port()}/hook"}).json()["id"]
                for _ in range(3)]
        events = []
        for n in range(3):
            body = runflow_body(f"fuzz-run-{n}")
            events.append(c.post("/callbacks/runflow", content=body, headers={
                "runflow-signature": runflow_signature(body)}).json()["event_id"])
        deliveries = [d["id"] for d in c.get("/v1/deliveries", headers=h).json()["data"]]
        c.post("/v1/runs", headers=h, json={"provider": "betterprompt", "run_id": "bp-fuzz-1"})
        c.post("/v1/runs", headers=h, json={"provider": "flora", "run_id": "fl-fuzz-1",
                                            "technique_id": "tech_1"})
        tokens = [c.post("/v1/callback-urls", headers=h, json={"provider": p}).json()["url"]
                  .rsplit("/", 1)[1] for p in ("runflow", "flora")]
        cursors = [c.get(path, headers=h, params={"limit": 1}).json()["next_cursor"]
                   for path in ("/v1/subscriptions", "/v1/events", "/v1/deliveries", "/v1/runs")]
    assert len(deliveries) == 9, "each event should have queued one delivery per subscription"
    return {"id": [*subs, *events, *deliveries], "provider": ["betterprompt", "flora"],
            "run_id": ["bp-fuzz-1", "fl-fuzz-1"], "token": tokens,
            "cursor": [c for c in cursors if c]}


@pytest.fixture(scope="module")
def relay_web(redis_server: RedisServer) -> Iterator[RelayProcess]:
    """A real `relay web` with every provider configured; provider APIs point at a closed port."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = relay_env(redis_server, "fz" + secrets.token_hex(4),
                    FLORA_WEBHOOK_SECRETS=FLORA_SECRET,
                    BETTERPROMPT_API_KEY="bp-key", BETTERPROMPT_BASE_URL=dead,
                    FLORA_API_KEY="flora-key", FLORA_BASE_URL=dead,
                    RUNFLOW_API_KEY="rf-key", RUNFLOW_BASE_URL=dead)
    proc = RelayProcess("web", env).start()
    try:
        KNOWN.update(seed(proc.base_url))
        yield proc
    finally:
        KNOWN.clear()
        proc.stop()


@schema.parametrize()
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_every_operation_answers_as_documented(case: schemathesis.Case[Any],
                                               relay_web: RelayProcess) -> None:
    """Each documented operation, fed generated and mutated input with the bearer key, answers
    below 500 with a documented status, content type and body."""
    case.call_and_validate(base_url=relay_web.base_url, headers=admin_headers(), checks=CHECKS)
