"""Settings: every environment variable of CONTRACT section 3, validated once at start."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A variable is missing or malformed; the message names it and says why."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class Secret:
    """A string that never shows itself in `repr`, `str`, logs or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _redis_location(url: str) -> str:
    """Where a Redis URL points, without its user, password or database: `host:port`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{parts.port or 6379}"


@dataclass(frozen=True)
class ProviderAPI:
    """Credentials and limits for one polled provider API."""

    api_key: Secret | None
    base_url: str
    rate_limit: float = 5.0


@dataclass(frozen=True)
class Settings:
    """The one configuration object; build it with `Settings.from_env`."""

    port: int = 8000
    redis_url: Secret | None = None
    redis_max_connections: int = 20
    redis_cluster: bool = False
    key_prefix: str = "relay"
    secret_key: Secret | None = None
    api_keys: tuple[Secret, ...] = ()
    public_url: str = "http://localhost:8000"
    max_body_bytes: int = 1_048_576
    retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    retry_jitter: float = 0.2
    delivery_timeout: float = 15.0
    claim_timeout: float = 60.0
    disable_after: float = 432_000.0
    rotation_grace: float = 86_400.0
    allow_private_targets: bool = False
    poll_min_interval: float = 2.0
    poll_max_interval: float = 30.0
    poll_max_age: float = 86_400.0
    event_retention: float = 604_800.0
    log_format: str = "json"
    log_level: str = "info"
    runflow_callback_secrets: tuple[Secret, ...] = ()
    runflow: ProviderAPI = field(
        default_factory=lambda: ProviderAPI(None, "https://api.runflow.io")
    )
    betterprompt: ProviderAPI = field(
        default_factory=lambda: ProviderAPI(None, "https://api.betterprompt.me")
    )
    flora: ProviderAPI = field(
        default_factory=lambda: ProviderAPI(None, "https://app.flora.ai/api/v1")
    )
    flora_webhook_secrets: tuple[Secret, ...] = ()
    data_dir: Path = Path("relay-data")

    @property
    def embedded(self) -> bool:
        """True when no REDIS_URL is set and relay runs its own Redis child process."""
        return self.redis_url is None

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule) + 1

    def describe(self) -> dict[str, object]:
        """The start-up line's settings: where Redis is and every setting that is not a secret.

        Secrets (the secret key, API keys, provider keys, webhook secrets) are left out, not
        masked: a log line is no place to learn even their length.
        """
        redis = (_redis_location(self.redis_url.reveal()) if self.redis_url is not None
                 else f"embedded unix:{(self.data_dir / 'redis.sock').resolve()}")
        out: dict[str, object] = {"redis": redis}
        for f in fields(self):
            # By declared type, so a secret added later stays out without a list to update.
            if "Secret" in str(f.type):
                continue
            value = getattr(self, f.name)
            if isinstance(value, ProviderAPI):
                out[f"{f.name}_base_url"] = value.base_url
                out[f"{f.name}_rate_limit"] = value.rate_limit
                out[f"{f.name}_polled"] = value.api_key is not None
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else \
                    str(value) if isinstance(value, Path) else value
        return out

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise ConfigError naming the first bad variable."""
        env = _Env(os.environ if environ is None else environ)
        port = env.integer("PORT", 8000, low=1, high=65535)
        redis_url = env.text("REDIS_URL")
        if redis_url is not None:
            scheme = urlsplit(redis_url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigError("REDIS_URL", "must start with redis://, rediss:// or unix://")
        redis_cluster = env.boolean("REDIS_CLUSTER", False)
        if redis_cluster and (redis_url is None or urlsplit(redis_url).scheme == "unix"):
            raise ConfigError("REDIS_CLUSTER", "needs a redis:// or rediss:// REDIS_URL")
        secret_key = env.text("RELAY_SECRET_KEY")
        api_keys = env.secrets("RELAY_API_KEYS")
        if redis_url is not None:
            if not secret_key:
                raise ConfigError("RELAY_SECRET_KEY", "is required when REDIS_URL is set")
            if not api_keys:
                raise ConfigError("RELAY_API_KEYS", "is required when REDIS_URL is set")
        if secret_key is not None and len(secret_key) < 16:
            raise ConfigError("RELAY_SECRET_KEY", "must be at least 16 characters")
        prefix = env.text("RELAY_KEY_PREFIX") or "relay"
        if any(c in prefix for c in "{}: \t"):
            raise ConfigError("RELAY_KEY_PREFIX", "must not contain braces, colons or spaces")
        schedule = env.schedule("RELAY_RETRY_SCHEDULE", cls.retry_schedule)
        jitter = env.number("RELAY_RETRY_JITTER", 0.2, low=0.0, high=1.0)
        poll_min = env.duration("RELAY_POLL_MIN_INTERVAL", 2.0)
        poll_max = env.duration("RELAY_POLL_MAX_INTERVAL", 30.0)
        if poll_max < poll_min:
            raise ConfigError(
                "RELAY_POLL_MAX_INTERVAL", "must not be smaller than RELAY_POLL_MIN_INTERVAL"
            )
        log_format = (env.text("RELAY_LOG_FORMAT") or "").lower() or (
            "console" if sys.stderr.isatty() else "json"
        )
        if log_format not in ("json", "console"):
            raise ConfigError("RELAY_LOG_FORMAT", "must be json or console")
        log_level = (env.text("RELAY_LOG_LEVEL") or "info").lower()
        if log_level not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError("RELAY_LOG_LEVEL", "must be debug, info, warning, error or critical")
        public_url = (env.text("RELAY_PUBLIC_URL") or f"http://localhost:{port}").rstrip("/")
        if urlsplit(public_url).scheme not in ("http", "https"):
            raise ConfigError("RELAY_PUBLIC_URL", "must be an http:// or https:// URL")
        return cls(
            port=port,
            redis_url=Secret(redis_url) if redis_url is not None else None,
            redis_max_connections=env.integer("REDIS_MAX_CONNECTIONS", 20, low=2, high=100_000),
            redis_cluster=redis_cluster,
            key_prefix=prefix,
            secret_key=Secret(secret_key) if secret_key else None,
            api_keys=api_keys,
            public_url=public_url,
            max_body_bytes=env.integer("RELAY_MAX_BODY_BYTES", 1_048_576, low=1, high=1 << 30),
            retry_schedule=schedule,
            retry_jitter=jitter,
            delivery_timeout=env.duration("RELAY_DELIVERY_TIMEOUT", 15.0),
            claim_timeout=env.duration("RELAY_CLAIM_TIMEOUT", 60.0),
            disable_after=env.duration("RELAY_DISABLE_AFTER", 432_000.0),
            rotation_grace=env.duration("RELAY_ROTATION_GRACE", 86_400.0, allow_zero=True),
            allow_private_targets=env.boolean("RELAY_ALLOW_PRIVATE_TARGETS", False),
            poll_min_interval=poll_min,
            poll_max_interval=poll_max,
            poll_max_age=env.duration("RELAY_POLL_MAX_AGE", 86_400.0),
            event_retention=env.duration("RELAY_EVENT_RETENTION", 604_800.0),
            log_format=log_format,
            log_level=log_level,
            runflow_callback_secrets=env.secrets("RUNFLOW_CALLBACK_SECRETS"),
            runflow=env.provider("RUNFLOW", "https://api.runflow.io", with_rate=False),
            betterprompt=env.provider("BETTERPROMPT", "https://api.betterprompt.me"),
            flora=env.provider("FLORA", "https://app.flora.ai/api/v1"),
            flora_webhook_secrets=env.secrets("FLORA_WEBHOOK_SECRETS"),
            data_dir=Path(env.text("RELAY_DATA_DIR") or "relay-data"),
        )


class _Env:
    """Typed readers over an environment mapping; each failure names its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ

    def text(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(name, f"must be between {low:g} and {high:g}, got {raw!r}")
        return value

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.number(name, default, low=0.0, high=10 * 365 * 86_400.0)
        if value == 0 and not allow_zero:
            raise ConfigError(name, "must be a positive number of seconds")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be true or false, got {raw!r}")

    def secrets(self, name: str) -> tuple[Secret, ...]:
        raw = self.text(name)
        if raw is None:
            return ()
        return tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())

    def schedule(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        raw = self.text(name)
        if raw is None:
            return default
        out: list[float] = []
        for part in raw.split(","):
            try:
                value = float(part.strip())
            except ValueError:
                raise ConfigError(
                    name, f"must be comma-separated seconds, got {part.strip()!r}"
                ) from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(name, f"delays must be non-negative, got {part.strip()!r}")
            out.append(value)
        return tuple(out)

    def provider(self, prefix: str, default_base: str, *, with_rate: bool = True) -> ProviderAPI:
        key = self.text(f"{prefix}_API_KEY")
        base = (self.text(f"{prefix}_BASE_URL") or default_base).rstrip("/")
        if urlsplit(base).scheme not in ("http", "https"):
            raise ConfigError(f"{prefix}_BASE_URL", "must be an http:// or https:// URL")
        rate = (
            self.number(f"{prefix}_RATE_LIMIT", 5.0, low=0.001, high=1_000_000.0)
            if with_rate
            else 5.0
        )
        return ProviderAPI(Secret(key) if key else None, base, rate)
