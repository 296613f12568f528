"""The operator dashboard: API-key login, signed session cookie, pages, CSRF-checked actions."""

from __future__ import annotations

import re

import httpx

from tests.helpers import API_KEY, runflow_body, runflow_signature


async def login(client: httpx.AsyncClient, key: str = API_KEY) -> httpx.Response:
    return await client.post("/ui/login", data={"api_key": key})


async def test_dashboard_asks_for_an_api_key_first(client: httpx.AsyncClient) -> None:
    r = await client.get("/ui")
    assert r.status_code == 200
    assert "name=api_key" in r.text and "Subscriptions" not in r.text


async def test_a_wrong_key_gets_no_session(client: httpx.AsyncClient) -> None:
    r = await login(client, "wrong")
    assert r.status_code == 303 and "relay_session" not in r.headers.get("set-cookie", "")
    page = await client.get(r.headers["location"])
    assert "not valid" in page.text


async def test_login_shows_subscriptions_events_and_deliveries(client: httpx.AsyncClient) -> None:
    r = await login(client)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "relay_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert API_KEY not in cookie, "the session cookie must not carry the API key"
    body = runflow_body("ui-1")
    await client.post("/callbacks/runflow", content=body,
                      headers={"runflow-signature": runflow_signature(body)})
    await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/<b>x</b>"},
                      headers={"authorization": f"Bearer {API_KEY}"})
    page = (await client.get("/ui")).text
    assert "Subscriptions" in page and "ui-1" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page, "values are escaped"
    event_link = re.search(r'href="(/ui/events/evt_[^"]+)"', page)
    assert event_link is not None
    event_page = await client.get(event_link.group(1))
    assert event_page.status_code == 200 and "run.completed" in event_page.text


async def test_retry_needs_the_session_csrf_token(client: httpx.AsyncClient) -> None:
    await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"},
                      headers={"authorization": f"Bearer {API_KEY}"})
    body = runflow_body("ui-2")
    await client.post("/callbacks/runflow", content=body,
                      headers={"runflow-signature": runflow_signature(body)})
    await login(client)
    page = (await client.get("/ui")).text
    delivery_path = re.search(r'href="(/ui/deliveries/dlv_[^"]+)"', page)
    assert delivery_path is not None
    detail = (await client.get(delivery_path.group(1))).text
    csrf = re.search(r'name=csrf value="([^"]+)"', detail)
    assert csrf is not None
    forged = await client.post(delivery_path.group(1) + "/retry", data={"csrf": "nope"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "forbidden"
    ok = await client.post(delivery_path.group(1) + "/retry", data={"csrf": csrf.group(1)})
    assert ok.status_code == 303 and ok.headers["location"] == delivery_path.group(1)


async def test_a_forged_cookie_is_no_session(client: httpx.AsyncClient) -> None:
    client.cookies.set("relay_session", "eyJrIjoiYSJ9.forged.sig", path="/ui")
    r = await client.get("/ui/deliveries/dlv_x")
    assert r.status_code == 303 and r.headers["location"] == "/ui"


async def test_unknown_ids_are_404_with_the_error_body(client: httpx.AsyncClient) -> None:
    await login(client)
    r = await client.get("/ui/events/evt_nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_logout_ends_the_session(client: httpx.AsyncClient) -> None:
    await login(client)
    page = (await client.get("/ui")).text
    csrf = re.search(r'name=csrf value="([^"]+)"', page)
    assert csrf is not None
    r = await client.post("/ui/logout", data={"csrf": csrf.group(1)})
    assert r.status_code == 303
    assert "Subscriptions" not in (await client.get("/ui")).text
