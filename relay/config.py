"""Settings: every environment variable of CONTRACT section 3, validated once at start."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from relay.catalog import SPECS


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


def _local_url(port: int) -> str:
    return f"http://localhost:{port}"


@dataclass(frozen=True)
class ProviderSettings:
    """One provider's variables, named by its spec in `relay.catalog`."""

    api_key: Secret | None
    base_url: str
    rate_limit: float | None  # requests/second, deployment-wide; None: no documented limit
    callback_secrets: tuple[Secret, ...] = ()


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
    public_url: str = _local_url(port)
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
    log_format: str = "json"  # from_env: console on a TTY unless RELAY_LOG_FORMAT says
    log_level: str = "info"
    # Every provider of the catalog, by name.
    providers: dict[str, ProviderSettings] = field(
        default_factory=lambda: _Env({}).providers())
    data_dir: Path = Path("relay-data")

    def provider(self, name: str) -> ProviderSettings:
        return self.providers[name]

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
            if f.name == "providers":
                for name, api in value.items():
                    out[f"{name}_base_url"] = api.base_url
                    out[f"{name}_rate_limit"] = api.rate_limit
                    out[f"{name}_polled"] = api.api_key is not None
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else \
                    str(value) if isinstance(value, Path) else value
        return out

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise ConfigError naming the first bad variable.
        A variable that is not set takes its field's default above."""
        env = _Env(os.environ if environ is None else environ)
        port = env.integer("PORT", cls.port, low=1, high=65535)
        redis_url = env.text("REDIS_URL")
        if redis_url is not None:
            scheme = urlsplit(redis_url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigError("REDIS_URL", "must start with redis://, rediss:// or unix://")
        redis_cluster = env.boolean("REDIS_CLUSTER", cls.redis_cluster)
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
        prefix = env.text("RELAY_KEY_PREFIX") or cls.key_prefix
        if any(c in prefix for c in "{}: \t"):
            raise ConfigError("RELAY_KEY_PREFIX", "must not contain braces, colons or spaces")
        schedule = env.schedule("RELAY_RETRY_SCHEDULE", cls.retry_schedule)
        jitter = env.number("RELAY_RETRY_JITTER", cls.retry_jitter, low=0.0, high=1.0)
        poll_min = env.duration("RELAY_POLL_MIN_INTERVAL", cls.poll_min_interval)
        poll_max = env.duration("RELAY_POLL_MAX_INTERVAL", cls.poll_max_interval)
        if poll_max < poll_min:
            raise ConfigError(
                "RELAY_POLL_MAX_INTERVAL", "must not be smaller than RELAY_POLL_MIN_INTERVAL"
            )
        log_format = (env.text("RELAY_LOG_FORMAT") or "").lower() or (
            "console" if sys.stderr.isatty() else cls.log_format
        )
        if log_format not in ("json", "console"):
            raise ConfigError("RELAY_LOG_FORMAT", "must be json or console")
        log_level = (env.text("RELAY_LOG_LEVEL") or cls.log_level).lower()
        if log_level not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError("RELAY_LOG_LEVEL", "must be debug, info, warning, error or critical")
        public_url = (env.text("RELAY_PUBLIC_URL") or _local_url(port)).rstrip("/")
        if urlsplit(public_url).scheme not in ("http", "https"):
            raise ConfigError("RELAY_PUBLIC_URL", "must be an http:// or https:// URL")
        return cls(
            port=port,
            redis_url=Secret(redis_url) if redis_url is not None else None,
            redis_max_connections=env.integer("REDIS_MAX_CONNECTIONS", cls.redis_max_connections,
                                              low=2, high=100_000),
            redis_cluster=redis_cluster,
            key_prefix=prefix,
            secret_key=Secret(secret_key) if secret_key else None,
            api_keys=api_keys,
            public_url=public_url,
            max_body_bytes=env.integer("RELAY_MAX_BODY_BYTES", cls.max_body_bytes, low=1,
                                       high=1 << 30),
            retry_schedule=schedule,
            retry_jitter=jitter,
            delivery_timeout=env.duration("RELAY_DELIVERY_TIMEOUT", cls.delivery_timeout),
            claim_timeout=env.duration("RELAY_CLAIM_TIMEOUT", cls.claim_timeout),
            disable_after=env.duration("RELAY_DISABLE_AFTER", cls.disable_after),
            rotation_grace=env.duration("RELAY_ROTATION_GRACE", cls.rotation_grace,
                                        allow_zero=True),
            allow_private_targets=env.boolean("RELAY_ALLOW_PRIVATE_TARGETS",
                                              cls.allow_private_targets),
            poll_min_interval=poll_min,
            poll_max_interval=poll_max,
            poll_max_age=env.duration("RELAY_POLL_MAX_AGE", cls.poll_max_age),
            event_retention=env.duration("RELAY_EVENT_RETENTION", cls.event_retention),
            log_format=log_format,
            log_level=log_level,
            providers=env.providers(),
            data_dir=Path(env.text("RELAY_DATA_DIR") or cls.data_dir),
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

    def providers(self) -> dict[str, ProviderSettings]:
        """Every provider's variables, as its spec in the catalog names them."""
        out: dict[str, ProviderSettings] = {}
        for spec in SPECS.values():
            key = self.text(f"{spec.env}_API_KEY")
            base = (self.text(f"{spec.env}_BASE_URL") or spec.base_url).rstrip("/")
            if urlsplit(base).scheme not in ("http", "https"):
                raise ConfigError(f"{spec.env}_BASE_URL", "must be an http:// or https:// URL")
            rate = None if spec.rate_limit is None else self.number(
                f"{spec.env}_RATE_LIMIT", spec.rate_limit, low=0.001, high=1_000_000.0)
            secrets = self.secrets(spec.callback_secrets) if spec.callback_secrets else ()
            out[spec.name] = ProviderSettings(Secret(key) if key else None, base, rate, secrets)
        return out
