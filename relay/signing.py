"""Signatures: Standard Webhooks out, provider HMACs in, signed callback-URL tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from relay.errors import InvalidToken

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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


class TokenSigner:
    """Callback-URL tokens: what a token carries is signed, never encrypted."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="relay.callback-url")

    def dumps(self, claims: dict[str, Any]) -> str:
        return str(self._serializer.dumps(claims))

    def loads(self, token: str, *, provider: str) -> dict[str, Any]:
        """The token's claims; InvalidToken when forged, malformed or for another provider."""
        try:
            claims = self._serializer.loads(token)
        except (BadSignature, UnicodeDecodeError, ValueError):
            raise InvalidToken("the callback token is not valid") from None
        if not isinstance(claims, dict) or claims.get("p") != provider:
            raise InvalidToken(f"the callback token was not minted for {provider}")
        return claims
