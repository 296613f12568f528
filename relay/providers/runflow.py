"""Runflow: verify `Runflow-Signature`, turn callback envelopes into events, poll runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from relay import clock, ids
from relay.errors import InvalidSignature, ValidationFailed
from relay.models import STATUS_TO_EVENT, TERMINAL_EVENTS, TERMINAL_STATUSES, Event
from relay.providers.base import CallbackContext, Observation, first, merge_metadata, parse_json
from relay.signing import verify_hex_hmac

# Runflow's status uses US spelling, its event names UK spelling; accept both on input.
_STATUS_ALIASES = {"cancelled": "canceled"}
_EVENT_ALIASES = {"run.canceled": "run.cancelled", "batch.canceled": "batch.cancelled"}


def _fail(message: str, details: list[dict[str, str]]) -> ValidationFailed:
    return ValidationFailed("invalid_envelope", message, details=details)


def _error_from(doc: dict[str, Any]) -> dict[str, Any] | None:
    code = doc.get("failure_code")
    message = doc.get("failure_message")
    stage = doc.get("failure_stage_code", doc.get("failure_stage"))
    if code is None and message is None and stage is None:
        output = doc.get("output")
        nested = output.get("error") if isinstance(output, dict) else None
        if isinstance(nested, dict):
            code, message = nested.get("code"), nested.get("message")
            stage = nested.get("stage")
        elif isinstance(nested, str):
            message = nested
    if code is None and message is None and stage is None:
        return None
    return {
        "code": None if code is None else str(code),
        "message": None if message is None else str(message),
        "stage": None if stage is None else str(stage),
    }


class Runflow:
    """Adapter for Runflow's per-run `callback_url` envelopes."""

    name = "runflow"
    reads_run = False  # the envelope carries the run's output
    request_id_header = "runflow-request-id"

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = tuple(secrets)

    @property
    def token_suffices(self) -> bool:
        # CONTRACT 4.1: with secrets configured, a token URL must carry a valid signature too.
        return not self._secrets

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self._secrets:
            raise InvalidSignature("no Runflow callback secret is configured")
        if not verify_hex_hmac(headers.get("runflow-signature"), body, self._secrets):
            raise InvalidSignature("Runflow-Signature does not match the body")

    def normalize(self, body: bytes, context: CallbackContext) -> Event:
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise _fail("a Runflow envelope is a JSON object", [
                {"field": "$", "problem": "expected an object"}
            ])
        problems: list[dict[str, str]] = []
        run_id, batch_id = doc.get("run_id"), doc.get("batch_id")
        if not isinstance(run_id, str) or not run_id:
            run_id = None
        if not isinstance(batch_id, str) or not batch_id:
            batch_id = None
        if run_id is None and batch_id is None:
            problems.append({"field": "run_id",
                             "problem": "a non-empty string run_id or batch_id is required"})
        event, status = self._event_and_status(doc, batch=run_id is None, problems=problems)
        duration = doc.get("duration_ms")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float)
            or not 0 <= duration < 2**63
        ):
            problems.append({"field": "duration_ms",
                             "problem": "must be a non-negative number of milliseconds or null"})
        for name in ("created_at", "completed_at"):
            if doc.get(name) is not None and not isinstance(doc[name], str):
                problems.append({"field": name, "problem": "must be an ISO 8601 string or null"})
        if problems or event is None:
            raise _fail("the body is not a Runflow callback envelope", problems)
        return Event(
            id=ids.event_id(),
            event=event,
            provider=self.name,
            run_id=run_id,
            batch_id=batch_id if run_id is None else None,
            status=status,
            output=doc.get("output"),
            error=_error_from(doc) if status in ("failed", "partial_succeeded") or
            event.endswith(".failed") else None,
            duration_ms=None if duration is None else int(duration),
            created_at=doc.get("created_at"),
            completed_at=doc.get("completed_at"),
            metadata=merge_metadata(doc.get("metadata"), context.metadata),
            channels=list(context.channels),
            source="callback",
            observed_at=clock.iso(context.observed_at),
            provider_payload_raw=body,
        )

    def delivery_id(self, body: bytes) -> str | None:
        return None  # redeliveries are deduped by (run or batch, event) alone

    @staticmethod
    def _event_and_status(
        doc: dict[str, Any], *, batch: bool, problems: list[dict[str, str]]
    ) -> tuple[str | None, str | None]:
        event, status = doc.get("event"), doc.get("status")
        if event is not None and not isinstance(event, str):
            problems.append({"field": "event", "problem": "must be a string"})
            event = None
        if status is not None and not isinstance(status, str):
            problems.append({"field": "status", "problem": "must be a string"})
            status = None
        if isinstance(status, str):
            status = _STATUS_ALIASES.get(status, status)
        if isinstance(event, str):
            event = _EVENT_ALIASES.get(event, event)
        if event is None and status is None:
            if not problems:
                problems.append({"field": "event",
                                 "problem": "one of event and status is required"})
            return None, None
        if batch:
            if event is None:
                event = "batch." + ("cancelled" if status == "canceled" else str(status))
            elif not event.startswith("batch.") or len(event) == len("batch."):
                problems.append({"field": "event",
                                 "problem": "a batch envelope has a batch.* event"})
            if status is None:
                tail = event.removeprefix("batch.")
                status = "canceled" if tail == "cancelled" else tail
            return event, status
        if event is None:
            event = STATUS_TO_EVENT.get(str(status))
            if event is None:
                problems.append({
                    "field": "status",
                    "problem": f"unknown status; expected one of {sorted(STATUS_TO_EVENT)}",
                })
            return event, status
        if event not in TERMINAL_EVENTS:
            problems.append({
                "field": "event",
                "problem": f"unknown event; expected one of {sorted(TERMINAL_EVENTS)} or batch.*",
            })
            return None, None
        return event, status if status is not None else TERMINAL_EVENTS[event]


# Runflow's non-terminal statuses, in relay's vocabulary (dispatching: not yet executing).
_RUNNING = {"queued": "queued", "dispatching": "queued", "running": "running"}


class RunflowAPI:
    """Polls `GET {base}/v1/runs/{id}`: the safety net that catches a lost Runflow callback."""

    name = "runflow"
    honours_retry_after = False  # Runflow's 429 carries no Retry-After (research/providers.md)
    wraps_outputs = False

    def __init__(self, api_key: str, base_url: str) -> None:
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        self._base = base_url.rstrip("/")

    def run_url(self, run_id: str, technique_id: str | None) -> str:
        return f"{self._base}/v1/runs/{quote(run_id, safe='')}"

    def headers(self) -> dict[str, str]:
        return self._headers

    def observe(self, doc: Any, *, outputs_seen: float) -> Observation:
        if isinstance(doc, dict) and isinstance(doc.get("data"), dict) and not (
                "status_code" in doc or "status" in doc):
            doc = doc["data"]
        if not isinstance(doc, dict):
            raise ValueError("a Runflow run is a JSON object")
        # The API reference says status_code, the errors page says status: accept both.
        raw = first(doc, "status_code", "status")
        if not isinstance(raw, str) or not raw:
            raise ValueError("the run has no status_code")
        status = _STATUS_ALIASES.get(raw, raw)
        if status not in TERMINAL_STATUSES:
            # An unknown status is taken as still in progress: polling carries on.
            status = _RUNNING.get(status, status)
        duration = doc.get("duration_ms")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
            duration = None
        done, total = doc.get("nodes_completed"), doc.get("nodes_total")
        progress = None
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            progress = round(100 * done / total, 1)
        terminal = status in TERMINAL_STATUSES
        return Observation(
            status=status,
            progress=progress,
            outputs=doc.get("output") if status in ("succeeded", "partial_succeeded") else None,
            error=_error_from(doc) if status in ("failed", "partial_succeeded") else None,
            created_at=doc["created_at"] if isinstance(doc.get("created_at"), str) else None,
            completed_at=doc["completed_at"] if terminal and isinstance(
                doc.get("completed_at"), str) else None,
            duration_ms=int(duration) if terminal and duration is not None else None,
        )
