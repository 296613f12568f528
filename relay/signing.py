"""Signatures: Standard Webhooks out, provider HMACs in, signed callback-URL tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from relay.errors import InvalidToken

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@lru_cache(maxsize=4096)
def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret: the base64-decoded part after the prefix."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign_webhook(msg_id: str, timestamp: int, body: bytes, keys: Iterable[bytes]) -> str:
    """`webhook-signature` value: one `v1,<base64>` per key, space-separated for rotation."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()
        for key in keys
    )


def hmac_hex(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def verify_hex_hmac(signature: str | None, message: bytes, secrets: Iterable[str]) -> bool:
    """True when `signature` is the lowercase hex HMAC-SHA256 of `message` under any secret.

    Every secret is tried even after a match so the time taken does not say which one matched.
    """
    if signature is None or not _HEX64.match(signature):
        return False
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(hmac_hex(secret, message), signature)
    return ok


# FLORA's SDK refuses signatures more than this far from now, either way.
FLORA_TOLERANCE = 300


def verify_flora_signature(header: str | None, body: bytes, secrets: Iterable[str],
                           now: float, tolerance: float = FLORA_TOLERANCE) -> str | None:
    """None when `Flora-Signature: t=<unix s>,v1=<hex>[,v1=...]` signs `{t}.{body}` under any
    secret with `t` within `tolerance` seconds of now; else why not (never which secret)."""
    if not header:
        return "Flora-Signature is missing"
    stamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            stamp = value.strip()
        elif name == "v1" and _HEX64.match(value.strip()):
            candidates.append(value.strip())
    # ASCII digits only: str.isdigit() also passes "²", which int() then refuses.
    if stamp is None or not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        return "Flora-Signature has no valid t="
    if not candidates:
        return "Flora-Signature has no valid v1="
    if abs(now - int(stamp)) > tolerance:
        return f"Flora-Signature t= is more than {tolerance:g} s from now"
    message = stamp.encode() + b"." + body
    ok = False
    for secret in secrets:
        expected = hmac_hex(secret, message)
        for candidate in candidates:
            ok |= hmac.compare_digest(expected, candidate)
    return None if ok else "Flora-Signature does not match the body"


@dataclass(frozen=True)
class CallbackClaims:
    """What a callback-URL token carries: signed, never encrypted, and attached to the events of
    runs called back through it. In the token under one-letter keys, to keep URLs short."""

    provider: str
    channels: tuple[str, ...] = ()
    metadata: Any = None
    technique_id: str | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"p": self.provider}
        if self.channels:
            doc["c"] = list(self.channels)
        if self.metadata is not None:
            doc["m"] = self.metadata
        if self.technique_id:
            doc["t"] = self.technique_id
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> CallbackClaims:
        """The claims of a token's payload; InvalidToken when it is not the shape minted."""
        if not isinstance(doc, dict) or not isinstance(doc.get("p"), str):
            raise InvalidToken("the callback token is not valid")
        channels = doc.get("c") or []
        technique = doc.get("t")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels) \
                or not (technique is None or isinstance(technique, str)):
            raise InvalidToken("the callback token is not valid")
        return cls(doc["p"], tuple(channels), doc.get("m"), technique or None)


class TokenSigner:
    """Signs and reads callback-URL tokens with RELAY_SECRET_KEY."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="relay.callback-url")

    def dumps(self, claims: CallbackClaims) -> str:
        return str(self._serializer.dumps(claims.to_doc()))

    def url(self, public_url: str, claims: CallbackClaims) -> str:
        """The callback URL to give the provider: its route carries the signed token."""
        return f"{public_url}/callbacks/{claims.provider}/{self.dumps(claims)}"

    def loads(self, token: str, *, provider: str) -> CallbackClaims:
        """The token's claims; InvalidToken when forged, malformed or for another provider."""
        try:
            doc = self._serializer.loads(token)
        except (BadSignature, UnicodeDecodeError, ValueError):
            raise InvalidToken("the callback token is not valid") from None
        claims = CallbackClaims.from_doc(doc)
        if claims.provider != provider:
            raise InvalidToken(f"the callback token was not minted for {provider}")
        return claims
