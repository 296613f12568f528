"""BetterPrompt: poll-only (no callbacks); `GET {base}/v1/runs/{runId}` read into observations."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from relay import clock
from relay.providers.base import Observation, first

# BetterPrompt's image and video URLs stop working 24 h after they are produced.
MEDIA_LIFETIME = 86_400.0

_STATUS = {"queued": "queued", "running": "running", "succeeded": "succeeded",
           "failed": "failed"}
_MEDIA = ("image", "video", "audio", "document")


class BetterPrompt:
    """Adapter for BetterPrompt's run API (research/providers.md section 2)."""

    name = "betterprompt"
    honours_retry_after = True  # its 429 says how long to wait
    wraps_outputs = True

    def __init__(self, api_key: str, base_url: str) -> None:
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        self._base = base_url.rstrip("/")

    def run_url(self, run_id: str, technique_id: str | None) -> str:
        return f"{self._base}/v1/runs/{quote(run_id, safe='')}"

    def headers(self) -> dict[str, str]:
        return self._headers

    def observe(self, doc: Any, *, outputs_seen: float) -> Observation:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict):
            raise ValueError('a BetterPrompt answer is {"status": ..., "data": {...}}')
        raw = data.get("runStatus")
        if not isinstance(raw, str) or not raw:
            raise ValueError("the run has no runStatus")
        status = _STATUS.get(raw, raw)  # an unknown status is taken as still in progress
        items = data.get("outputs")
        outputs: list[dict[str, Any]] = []
        messages: list[str] = []
        expires = ""  # formatted once, for the first media output (most polls have none)
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("data"), str):
                continue
            kind, value = item.get("type"), item["data"]
            if kind == "text":
                outputs.append({"type": "text", "text": value})
            elif kind in _MEDIA:
                expires = expires or clock.iso(outputs_seen + MEDIA_LIFETIME)
                outputs.append({"type": kind, "url": value, "expires_at": expires})
            elif kind == "error":
                messages.append(value)
        error = None
        if messages or status == "failed":
            error = {"code": None, "message": "; ".join(messages) or None, "stage": "provider"}
        # Retrieve says `tokens`, list rows say `credits`: the same cost under two names.
        spent = first(data, "tokens", "credits")
        cost = None
        if isinstance(spent, int | float) and not isinstance(spent, bool):
            cost = {"amount": spent, "unit": "credits"}
        return Observation(status=status, outputs=outputs or None, error=error, cost=cost)
