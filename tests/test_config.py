"""Settings.from_env: defaults, fractions, validation that names the variable, masked secrets."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, Settings

BASE = {"REDIS_URL": "redis://:hunter2-password@localhost:6379/0",
        "RELAY_SECRET_KEY": "s" * 32, "RELAY_API_KEYS": "key-one,key-two"}


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env(BASE)
    assert s.port == 8000 and s.redis_max_connections == 20 and s.key_prefix == "relay"
    assert s.public_url == "http://localhost:8000"
    assert s.max_body_bytes == 1_048_576
    assert s.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000) and s.max_attempts == 8
    assert (s.retry_jitter, s.delivery_timeout, s.claim_timeout) == (0.2, 15, 60)
    assert (s.disable_after, s.rotation_grace, s.allow_private_targets) == (432000, 86400, False)
    assert (s.poll_min_interval, s.poll_max_interval, s.poll_max_age) == (2, 30, 86400)
    assert s.event_retention == 604800 and s.log_level == "info"
    bp, flora, runflow = (s.provider(name) for name in ("betterprompt", "flora", "runflow"))
    assert bp.rate_limit == 5 and flora.rate_limit == 5
    assert runflow.rate_limit is None  # Runflow documents no limit: no RUNFLOW_RATE_LIMIT
    assert runflow.base_url == "https://api.runflow.io"
    assert bp.base_url == "https://api.betterprompt.me"
    assert flora.base_url == "https://app.flora.ai/api/v1"
    assert (bp.api_key, flora.api_key, runflow.api_key) == (None, None, None)
    assert (flora.callback_secrets, runflow.callback_secrets, bp.callback_secrets) == ((), (), ())


def test_public_url_follows_port() -> None:
    assert Settings.from_env({**BASE, "PORT": "9999"}).public_url == "http://localhost:9999"


def test_durations_accept_fractions() -> None:
    s = Settings.from_env({**BASE, "RELAY_CLAIM_TIMEOUT": "0.2", "RELAY_DELIVERY_TIMEOUT": "1.5",
                           "RELAY_RETRY_SCHEDULE": "0.2, 0.5,1", "RELAY_POLL_MIN_INTERVAL": "0.1"})
    assert s.claim_timeout == 0.2 and s.delivery_timeout == 1.5
    assert s.retry_schedule == (0.2, 0.5, 1.0) and s.poll_min_interval == 0.1


@pytest.mark.parametrize(("name", "value"), [
    ("PORT", "http"), ("PORT", "70000"), ("REDIS_URL", "http://x"),
    ("REDIS_MAX_CONNECTIONS", "-1"), ("RELAY_KEY_PREFIX", "a{b}"), ("RELAY_SECRET_KEY", "short"),
    ("RELAY_MAX_BODY_BYTES", "0"), ("RELAY_RETRY_SCHEDULE", "5,soon"),
    ("RELAY_RETRY_SCHEDULE", "5,-1"), ("RELAY_RETRY_JITTER", "2"), ("RELAY_DELIVERY_TIMEOUT", "0"),
    ("RELAY_CLAIM_TIMEOUT", "nan"), ("RELAY_ALLOW_PRIVATE_TARGETS", "maybe"),
    ("RELAY_POLL_MAX_INTERVAL", "1"), ("RELAY_LOG_FORMAT", "xml"), ("RELAY_LOG_LEVEL", "loud"),
    ("RELAY_PUBLIC_URL", "ftp://x"), ("BETTERPROMPT_RATE_LIMIT", "0"),
    ("FLORA_BASE_URL", "app.flora.ai"), ("RELAY_EVENT_RETENTION", "inf"),
])
def test_a_bad_variable_is_named_in_the_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**BASE, name: value})
    assert err.value.variable == name
    assert str(err.value).startswith(name)


def test_redis_url_requires_secret_key_and_api_keys() -> None:
    for missing in ("RELAY_SECRET_KEY", "RELAY_API_KEYS"):
        env = {k: v for k, v in BASE.items() if k != missing}
        with pytest.raises(ConfigError) as err:
            Settings.from_env(env)
        assert err.value.variable == missing


def test_embedded_mode_needs_no_keys() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None and s.api_keys == () and s.secret_key is None


def test_secrets_never_show_in_repr_or_description() -> None:
    env = {**BASE, "RUNFLOW_CALLBACK_SECRETS": "rf-secret-1,rf-secret-2",
           "FLORA_WEBHOOK_SECRETS": "flora-secret", "BETTERPROMPT_API_KEY": "bp-key-123",
           "FLORA_API_KEY": "flora-key-456", "RUNFLOW_API_KEY": "rf-key-789"}
    s = Settings.from_env(env)
    text = repr(s) + str(s.describe())
    for secret in ("hunter2-password", "s" * 32, "key-one", "key-two", "rf-secret-1",
                   "flora-secret", "bp-key-123", "flora-key-456", "rf-key-789"):
        assert secret not in text
    assert [k.reveal() for k in s.api_keys] == ["key-one", "key-two"]
