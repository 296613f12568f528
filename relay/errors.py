"""The one exception tree; each error carries its HTTP status and code for the one web handler.

    RelayError
    ├── PermanentError            the request or input is wrong; retrying will not help
    │   ├── InvalidJSON           400 invalid_json
    │   ├── Unauthorized          401 unauthorized (admin API)
    │   ├── InvalidSignature      401 invalid_signature
    │   ├── InvalidToken          401 invalid_token
    │   ├── Forbidden             403 forbidden (a dashboard form without its CSRF token)
    │   ├── NotFound              404 not_found
    │   ├── PayloadTooLarge       413 payload_too_large
    │   └── ValidationFailed      422 <code> with details
    └── RetryableError            try again later
        └── StorageUnavailable    503 unavailable (Redis down, hung or out of memory)
"""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    """Root of every error relay raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class PermanentError(RelayError):
    """The input is wrong; the same request will fail again."""


class InvalidJSON(PermanentError):
    status, code = 400, "invalid_json"


class Unauthorized(PermanentError):
    status, code = 401, "unauthorized"


class InvalidSignature(PermanentError):
    status, code = 401, "invalid_signature"


class InvalidToken(PermanentError):
    status, code = 401, "invalid_token"


class Forbidden(PermanentError):
    status, code = 403, "forbidden"


class NotFound(PermanentError):
    status, code = 404, "not_found"


class PayloadTooLarge(PermanentError):
    status, code = 413, "payload_too_large"


class ValidationFailed(PermanentError):
    """422; `code` names the rule (invalid_envelope, invalid_url, validation_error, ...)."""

    status = 422

    def __init__(self, code: str, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message, details=details if details is not None else [])
        self.code = code


class RetryableError(RelayError):
    """A dependency failed; the same request may succeed later."""


class StorageUnavailable(RetryableError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, *, reason: str = "unreachable") -> None:
        super().__init__(message)
        # For the metric only (oom, readonly, loading, timeout, unreachable, ...): the answer
        # is the same 503 whatever the cause, so the provider retries.
        self.reason = reason

