"""GET /ui: the operator dashboard; API-key login, a signed session cookie, server-rendered HTML."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from html import escape
from typing import Any
from urllib.parse import parse_qs

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from relay.errors import Forbidden
from relay.web.common import read_body, state_of

COOKIE = "relay_session"
SESSION_SECONDS = 12 * 3600

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.25rem .6rem;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}th{background:#f4f4f4}
.pending{color:#a60}.succeeded,.enabled{color:#070}.dead,.disabled{color:#b00}
.cancelled{color:#777}code{font-size:12px}form.inline{display:inline}
"""


def _serializer(request: Request) -> URLSafeTimedSerializer:
    key = state_of(request).settings.secret_key
    return URLSafeTimedSerializer(key.reveal() if key else "", salt="relay.ui-session")


def _key_id(key: str) -> str:
    """What the session remembers of the API key: a digest, so the cookie never holds the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _session(request: Request) -> str | None:
    """The session's CSRF token when the cookie is valid and its API key is still configured."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        claims = _serializer(request).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    if not isinstance(claims, dict):
        return None
    keys = {_key_id(k.reveal()) for k in state_of(request).settings.api_keys}
    kid, csrf = claims.get("k"), claims.get("c")
    if kid not in keys or not isinstance(csrf, str):
        return None
    return csrf


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset=utf-8><title>relay: {escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>relay</h1>{body}</body></html>",
        headers={"cache-control": "no-store", "x-frame-options": "DENY",
                 "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                            "form-action 'self'"},
    )


def _cell(value: Any) -> str:
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    return escape("-" if value is None or value == "" else str(value))


def _table(rows: list[dict[str, Any]], columns: list[str],
           links: dict[str, str] | None = None) -> str:
    if not rows:
        return "<p>None yet.</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = _cell(row.get(c))
            if links and c in links and row.get(c):
                text = f'<a href="{links[c]}{escape(str(row[c]))}">{text}</a>'
            css = f' class="{escape(str(row[c]))}"' if c == "status" and row.get(c) else ""
            cells.append(f"<td{css}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _login(message: str = "") -> HTMLResponse:
    note = f"<p class=dead>{escape(message)}</p>" if message else ""
    return _page("log in", f"{note}<form method=post action=/ui/login>"
                 "<label>API key <input type=password name=api_key autofocus></label> "
                 "<button>Log in</button></form>")


async def _form(request: Request) -> dict[str, str]:
    raw = await read_body(request, 16 * 1024)
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _check_csrf(form: dict[str, str], csrf: str | None) -> None:
    if csrf is None or not hmac.compare_digest(form.get("csrf", "").encode(), csrf.encode()):
        raise Forbidden("log in again: the form has expired")


async def dashboard(request: Request) -> Response:
    """Subscriptions, recent events and recent deliveries."""
    csrf = _session(request)
    if csrf is None:
        return _login("That API key is not valid." if request.query_params.get("failed") else "")
    state = state_of(request)
    subs_page = await state.store.list_subscriptions(100, None)
    subs = await state.store.get_subscriptions(subs_page.ids)
    events_page = await state.store.list_events(provider=None, run_id=None, event_type=None,
                                                limit=25, cursor=None)
    events = await state.relay.event_summaries(events_page)
    deliveries_page = await state.store.list_deliveries(subscription_id=None, event_id=None,
                                                        status=None, limit=25, cursor=None)
    deliveries = [d for d in await state.relay.delivery_views(deliveries_page.ids) if d]
    depths = await state.store.depths()
    body = (
        f"<form class=inline method=post action=/ui/logout><input type=hidden name=csrf "
        f'value="{escape(csrf)}"><button>Log out</button></form>'
        f"<p>pending {depths['pending']} · scheduled retries {depths['scheduled_retries']} · "
        f"dead {depths['dead']}</p>"
        "<h2>Subscriptions</h2>"
        + _table([s.public() for s in subs.values() if s],
                 ["id", "status", "url", "events", "providers", "channels", "disabled_reason"])
        + "<h2>Recent events</h2>"
        + _table(events, ["id", "event", "provider", "run_id", "status", "observed_at"],
                 {"id": "/ui/events/"})
        + "<h2>Recent deliveries</h2>"
        + _table(deliveries, ["id", "status", "attempts_made", "event_id", "subscription_id",
                              "updated_at"], {"id": "/ui/deliveries/", "event_id": "/ui/events/"})
    )
    return _page("dashboard", body)


async def show_event(request: Request) -> Response:
    """One event: its envelope and its deliveries."""
    if _session(request) is None:
        return RedirectResponse("/ui", status_code=303)
    doc = await state_of(request).relay.event_view(request.path_params["id"])
    deliveries = doc.pop("deliveries")
    body = (f"<p><a href=/ui>← dashboard</a></p><h2>Event {escape(doc['id'])}</h2>"
            f"<pre><code>{escape(json.dumps(doc, indent=2))}</code></pre><h2>Deliveries</h2>"
            + _table(deliveries, ["id", "status", "attempts_made", "subscription_id",
                                  "next_attempt_at"], {"id": "/ui/deliveries/"}))
    return _page(f"event {doc['id']}", body)


async def show_delivery(request: Request) -> Response:
    """One delivery: its attempt log, and a button to retry it now."""
    csrf = _session(request)
    if csrf is None:
        return RedirectResponse("/ui", status_code=303)
    doc = await state_of(request).relay.delivery_view(request.path_params["id"])
    retry = (f'<form method=post action="/ui/deliveries/{escape(doc["id"])}/retry">'
             f'<input type=hidden name=csrf value="{escape(csrf)}">'
             "<button>Retry now</button></form>")
    body = (f"<p><a href=/ui>← dashboard</a></p><h2>Delivery {escape(doc['id'])}</h2>"
            + _table([doc], ["status", "attempts_made", "event_id", "subscription_id",
                             "next_attempt_at"], {"event_id": "/ui/events/"})
            + retry + "<h2>Attempts</h2>"
            + _table(doc["attempts"], ["attempt", "at", "status_code", "duration_ms", "error",
                                       "response_body"]))
    return _page(f"delivery {doc['id']}", body)


async def retry_delivery(request: Request) -> Response:
    _check_csrf(await _form(request), _session(request))
    delivery_id = request.path_params["id"]
    await state_of(request).relay.retry_delivery(delivery_id)
    return RedirectResponse(f"/ui/deliveries/{delivery_id}", status_code=303)


async def login(request: Request) -> Response:
    form = await _form(request)
    given = form.get("api_key", "").strip()
    matched = None
    for key in state_of(request).settings.api_keys:
        if hmac.compare_digest(key.reveal().encode(), given.encode()):
            matched = key.reveal()
    if matched is None or not given:
        return RedirectResponse("/ui?failed=1", status_code=303)
    token = _serializer(request).dumps({"k": _key_id(matched), "c": secrets.token_urlsafe(16)})
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                        secure=state_of(request).settings.public_url.startswith("https://"),
                        path="/ui")
    return response


async def logout(request: Request) -> Response:
    csrf = _session(request)
    if csrf is not None:  # logging out an expired session needs no token
        _check_csrf(await _form(request), csrf)
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


routes = [
    Route("/ui", dashboard, methods=["GET"]),
    Route("/ui/login", login, methods=["POST"]),
    Route("/ui/logout", logout, methods=["POST"]),
    Route("/ui/events/{id}", show_event, methods=["GET"]),
    Route("/ui/deliveries/{id}", show_delivery, methods=["GET"]),
    Route("/ui/deliveries/{id}/retry", retry_delivery, methods=["POST"]),
]
