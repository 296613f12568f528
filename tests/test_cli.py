"""The admin command line, run as a real `python -m relay` process against the test Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from relay.delivery import DeliveryWorker
from relay.outbound import Outbound
from relay.service import Relay
from relay.signing import CallbackClaims, TokenSigner
from tests.helpers import (
    ROOT,
    SECRET_KEY,
    RedisServer,
    Subscriber,
    relay_env,
    runflow_body,
    runflow_signature,
)

PUBLIC_URL = "https://relay.example.test"


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    return relay_env(redis_server, prefix, RELAY_PUBLIC_URL=PUBLIC_URL)


@pytest.fixture
async def worker(relay: Relay) -> AsyncIterator[DeliveryWorker]:
    outbound = Outbound(allow_private=True)
    yield DeliveryWorker(relay, outbound, name="cli-test-worker")
    await outbound.aclose()


def cli(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "relay", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


async def acli_json(env: dict[str, str], *args: str) -> Any:
    """`cli_json` off the event loop, so in-process workers and subscribers keep running."""
    return await asyncio.to_thread(cli_json, env, *args)


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("relay: ")
    assert all(w in lines[0] for w in words), lines[0]
    assert proc.stdout == ""


async def pass_until(worker: DeliveryWorker, done: Callable[[], Awaitable[bool]]) -> None:
    """Run worker passes, for up to 5 s, until `await done()` holds."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        await worker.run_once()
        if await done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


def test_help_lists_every_command_group(env: dict[str, str]) -> None:
    """`relay --help` names the server commands and every admin command group."""
    out = cli(env, "--help").stdout
    for command in ("serve", "web", "worker", "preflight", "subscriptions", "callback-url",
                    "events", "deliveries"):
        assert f"\n  {command} " in out, command


def test_subscription_lifecycle_create_list_show_rotate_delete(env: dict[str, str]) -> None:
    """Each step's --json answer has the HTTP API's shape and the next step sees its effect."""
    created = cli_json(env, "subscriptions", "create", "--url", "http://127.0.0.1:9/hook",
                       "--event", "run.*", "--channel", "tenant-a", "--description", "mine")
    sub_id = created["id"]
    assert sub_id.startswith("sub_") and created["secret"].startswith("whsec_")
    assert created["events"] == ["run.*"] and created["channels"] == ["tenant-a"]
    assert created["providers"] is None and created["status"] == "enabled"

    listed = cli_json(env, "subscriptions", "list", "--limit", "5")
    assert [s["id"] for s in listed["data"]] == [sub_id]
    assert "secret" not in listed["data"][0] and "next_cursor" in listed

    shown = cli_json(env, "subscriptions", "show", sub_id)
    assert shown == {k: v for k, v in created.items() if k != "secret"}

    rotated = cli_json(env, "subscriptions", "rotate-secret", sub_id)
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"].endswith("+00:00")

    assert cli_json(env, "subscriptions", "delete", sub_id) == {"id": sub_id, "deleted": True}
    assert_one_line_failure(cli(env, "subscriptions", "show", sub_id, code=1), "not_found")


def test_create_takes_events_as_well_as_event(env: dict[str, str]) -> None:
    """`--events` (the API's field name) works as `--event` does, and the two combine."""
    created = cli_json(env, "subscriptions", "create", "--url", "http://127.0.0.1:9/hook",
                       "--events", "run.*", "--event", "batch.*")
    assert created["events"] == ["run.*", "batch.*"]


def test_provider_choices_come_from_the_registry(env: dict[str, str]) -> None:
    """`callback-url` offers the providers that call back, `runs track` those that are polled."""
    from relay.providers import callback_names, poll_names

    proc = cli(env, "callback-url", "replicate", code=2)
    assert_one_line_failure(proc, *callback_names())
    proc = cli(env, "runs", "track", "replicate", "x", code=2)
    assert_one_line_failure(proc, *poll_names())


def test_list_without_json_prints_an_aligned_table(env: dict[str, str]) -> None:
    """People get a header row and one aligned row per subscription."""
    a = cli_json(env, "subscriptions", "create", "--url", "http://127.0.0.1:9/a")["id"]
    b = cli_json(env, "subscriptions", "create", "--url", "http://127.0.0.1:9/b",
                 "--disabled")["id"]
    header, *rows = cli(env, "subscriptions", "list").stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "EVENTS", "PROVIDERS", "CHANNELS", "URL"]
    assert [r.split()[:2] for r in rows] == [[b, "disabled"], [a, "enabled"]]
    assert len({line.index("http") for line in rows}) == 1
    assert header.index("URL") == rows[0].index("http")


def test_create_with_a_non_http_url_fails_with_one_line(env: dict[str, str]) -> None:
    """The HTTP API's invalid_url rule applies: exit 1, one line, nothing stored."""
    proc = cli(env, "subscriptions", "create", "--url", "ftp://example.com/x", code=1)
    assert_one_line_failure(proc, "invalid_url")
    assert cli_json(env, "subscriptions", "list")["data"] == []


def test_show_of_an_unknown_subscription_exits_1_with_one_line(env: dict[str, str]) -> None:
    """NotFound becomes `relay: not_found: ...` and exit status 1."""
    proc = cli(env, "subscriptions", "show", "sub_nope", code=1)
    assert_one_line_failure(proc, "not_found", "sub_nope")


def test_usage_errors_are_one_line_too(env: dict[str, str]) -> None:
    """A bad option value names the option in one line and exits 2, like click does."""
    proc = cli(env, "deliveries", "list", "--limit", "0", code=2)
    assert_one_line_failure(proc, "--limit")


async def test_callback_url_carries_channels_and_metadata_into_the_event(
        env: dict[str, str], client: httpx.AsyncClient) -> None:
    """The minted URL is under RELAY_PUBLIC_URL and its token is accepted by the callback route."""
    url = (await acli_json(env, "callback-url", "runflow", "--channel", "a",
                           "--metadata", '{"job": 7}'))["url"]
    prefix = f"{PUBLIC_URL}/callbacks/runflow/"
    assert url.startswith(prefix)
    token = url.removeprefix(prefix)
    claims = TokenSigner(SECRET_KEY).loads(token, provider="runflow")
    assert claims == CallbackClaims("runflow", ("a",), {"job": 7})

    body = runflow_body("run-cli-1")
    r = await client.post(f"/callbacks/runflow/{token}", content=body,
                          headers={"runflow-signature": runflow_signature(body)})
    assert r.status_code == 200, r.text
    event = await acli_json(env, "events", "show", r.json()["event_id"])
    assert event["channels"] == ["a"] and event["metadata"] == {"job": 7}


def test_callback_url_refuses_metadata_that_is_not_json(env: dict[str, str]) -> None:
    """Invalid input is refused before anything is signed."""
    proc = cli(env, "callback-url", "flora", "--metadata", "{nope", code=1)
    assert_one_line_failure(proc, "--metadata")


async def test_test_event_is_listed_delivered_and_retried(
        env: dict[str, str], worker: DeliveryWorker, subscriber: Subscriber) -> None:
    """`subscriptions test` stores a relay.test event; `deliveries retry` sends it again."""
    sub_id = (await acli_json(env, "subscriptions", "create", "--url", subscriber.url))["id"]
    sent = await acli_json(env, "subscriptions", "test", sub_id)

    events = (await acli_json(env, "events", "list", "--type", "relay.test"))["data"]
    assert [(e["id"], e["event"]) for e in events] == [(sent["event_id"], "relay.test")]
    assert events[0]["metadata"] == {"subscription_id": sub_id}

    async def received(count: int) -> bool:
        return len(subscriber.received) == count

    await pass_until(worker, lambda: received(1))
    assert subscriber.ids() == [sent["event_id"]]
    listed = (await acli_json(env, "deliveries", "list", "--subscription-id", sub_id))["data"]
    assert [(d["id"], d["status"], d["attempts_made"]) for d in listed] == [
        (sent["delivery_id"], "succeeded", 1)]

    retried = await acli_json(env, "deliveries", "retry", sent["delivery_id"])
    assert retried["status"] == "pending" and len(retried["attempts"]) == 1
    await pass_until(worker, lambda: received(2))
    assert subscriber.ids() == [sent["event_id"]] * 2


async def test_recover_requeues_dead_deliveries_created_since_a_time(
        env: dict[str, str], worker: DeliveryWorker, relay: Relay) -> None:
    """A dead delivery is re-queued by `deliveries recover SUB --since`; a bad time is refused."""
    failing = Subscriber(behaviour=lambda n: (500, {}, 0.0)).start()
    try:
        sub_id = (await acli_json(env, "subscriptions", "create", "--url", failing.url))["id"]
        delivery_id = (await acli_json(env, "subscriptions", "test", sub_id))["delivery_id"]

        async def dead() -> bool:
            return bool((await relay.delivery_view(delivery_id))["status"] == "dead")

        await pass_until(worker, dead)
        assert await acli_json(env, "deliveries", "recover", sub_id, "--since",
                               "2000-01-01T00:00:00Z") == {"requeued": 1}
        pending = (await acli_json(env, "deliveries", "list", "--status", "pending"))["data"]
        assert [d["id"] for d in pending] == [delivery_id]
    finally:
        failing.stop()
    proc = await asyncio.to_thread(cli, env, "deliveries", "recover", sub_id, "--since", "nan",
                                   code=1)
    assert_one_line_failure(proc, "--since")
