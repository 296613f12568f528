"""FLORA: verify `Flora-Signature` callbacks (no outputs in them) and poll technique runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from relay import clock, ids
from relay.errors import InvalidSignature, ValidationFailed
from relay.models import STATUS_TO_EVENT, Event
from relay.providers.base import (
    CallbackContext,
    Observation,
    first,
    merge_metadata,
    number_time,
    parse_json,
)
from relay.signing import verify_flora_signature

_STATUS = {"pending": "queued", "running": "running", "completed": "succeeded",
           "failed": "failed"}
_OUTPUT_TYPES = {"imageUrl": "image", "videoUrl": "video", "audioUrl": "audio",
                 "documentUrl": "document", "text": "text"}
_CALLBACK_TYPES = {"run.completed": "succeeded", "run.failed": "failed"}


def _error(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    code = first(doc, "error_code", "errorCode")
    message = first(doc, "error_message", "errorMessage")
    if code is None and message is None:
        return None
    return {"code": None if code is None else str(code),
            "message": None if message is None else str(message), "stage": "provider"}


@dataclass(frozen=True)
class FloraCallback:
    """A verified FLORA webhook delivery."""

    delivery_id: str  # `whd_...`, unique per delivery: the dedupe key
    run_id: str
    status: str  # succeeded or failed
    error: dict[str, Any] | None
    created_at: str | None


class Flora:
    """FLORA's signed run-completion callbacks (research/providers.md section 3.3)."""

    name = "flora"
    reads_run = True  # a callback says that a run ended, not what it made
    request_id_header = "flora-webhook-id"

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = tuple(secrets)

    @property
    def token_suffices(self) -> bool:
        return False  # CONTRACT 4.1: the token route needs the signature as well

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self._secrets:
            raise InvalidSignature("no FLORA webhook secret is configured")
        reason = verify_flora_signature(headers.get("flora-signature"), body, self._secrets,
                                        clock.now())
        if reason is not None:
            raise InvalidSignature(reason)

    def parse(self, body: bytes) -> FloraCallback:
        doc = parse_json(body)
        problems: list[dict[str, str]] = []
        if not isinstance(doc, dict):
            raise ValidationFailed("invalid_envelope", "a FLORA callback is a JSON object",
                                   details=[{"field": "$", "problem": "expected an object"}])
        data = doc.get("data")
        if not isinstance(doc.get("id"), str) or not doc["id"]:
            problems.append({"field": "id", "problem": "a non-empty string is required"})
        kind = doc.get("type")
        if not isinstance(kind, str) or kind not in _CALLBACK_TYPES:  # a list is unhashable
            problems.append({"field": "type", "problem": "must be run.completed or run.failed"})
        if not isinstance(data, dict):
            problems.append({"field": "data", "problem": "an object is required"})
            data = {}
        elif not isinstance(data.get("run_id"), str) or not data["run_id"]:
            problems.append({"field": "data.run_id", "problem": "a non-empty string is required"})
        if problems:
            raise ValidationFailed("invalid_envelope", "the body is not a FLORA callback",
                                   details=problems)
        return FloraCallback(
            delivery_id=doc["id"], run_id=data["run_id"], status=_CALLBACK_TYPES[str(kind)],
            error=_error(data) if kind == "run.failed" else None,
            created_at=number_time(doc.get("created_at")),
        )

    def normalize(self, body: bytes, context: CallbackContext) -> Event:
        """The event on the callback's word alone: FLORA sends no outputs, so `output` is
        null until ingest has read the run."""
        cb = self.parse(body)
        return Event(
            id=ids.event_id(), event=STATUS_TO_EVENT[cb.status], provider=self.name,
            run_id=cb.run_id, status=cb.status, output=None, error=cb.error, duration_ms=None,
            created_at=None, completed_at=cb.created_at,
            metadata=merge_metadata(None, context.metadata), channels=list(context.channels),
            source="callback", observed_at=clock.iso(context.observed_at),
            provider_payload_raw=body,
        )

    def delivery_id(self, body: bytes) -> str | None:
        return self.parse(body).delivery_id


class FloraAPI:
    """Polls `GET {base}/techniques/{techniqueId}/runs/{runId}` (the technique id is needed)."""

    name = "flora"
    honours_retry_after = False  # FLORA documents no Retry-After: relay backs off itself
    wraps_outputs = True

    def __init__(self, api_key: str, base_url: str) -> None:
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        self._base = base_url.rstrip("/")

    def run_url(self, run_id: str, technique_id: str | None) -> str:
        if not technique_id:
            raise ValueError("a FLORA run is read through its technique id")
        return (f"{self._base}/techniques/{quote(technique_id, safe='')}"
                f"/runs/{quote(run_id, safe='')}")

    def headers(self) -> dict[str, str]:
        return self._headers

    def observe(self, doc: Any, *, outputs_seen: float) -> Observation:
        if isinstance(doc, dict) and isinstance(doc.get("data"), dict) and "status" not in doc:
            doc = doc["data"]
        if not isinstance(doc, dict):
            raise ValueError("a FLORA run is a JSON object")
        raw = doc.get("status")
        if not isinstance(raw, str) or not raw:
            raise ValueError("the run has no status")
        # Terminal only from `status`: a failed run reports progress 100, and completed_at is
        # set on failures too.
        status = _STATUS.get(raw, raw)
        terminal = status in ("succeeded", "failed")
        progress = doc.get("progress")
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            progress = None
        outputs: list[dict[str, Any]] = []
        items = doc.get("outputs")
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            kind = _OUTPUT_TYPES.get(str(item.get("type")))
            if kind == "text":
                outputs.append({"type": "text", "text": item["url"]})  # `url` holds the text
            elif kind is not None:
                outputs.append({"type": kind, "url": item["url"]})  # permanent, no expiry
        created = first(doc, "created_at", "createdAt")
        started = first(doc, "started_at", "startedAt")
        completed = first(doc, "completed_at", "completedAt")
        duration = None
        if terminal and _is_number(completed) and _is_number(started or created):
            begin = started or created
            scale = 1.0 if completed > 1e12 else 1000.0
            duration = max(0, int((completed - begin) * scale))
        cost = doc.get("charged_cost", doc.get("chargedCost"))
        return Observation(
            status=status,
            progress=progress,
            outputs=outputs or None,
            error=_error(doc) if status == "failed" else None,
            created_at=number_time(created),
            completed_at=number_time(completed) if terminal else None,
            duration_ms=duration,
            cost={"amount": cost, "unit": "usd"} if _is_number(cost) else None,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
