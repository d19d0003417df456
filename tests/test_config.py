from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.config import Settings

REAL = {
    name: "real-value" for name in (
        "wechat_secret", "wechat_token", "wecom_secret", "wecom_token", "twilio_auth_token",
        "generic_webhook_secret", "stripe_webhook_secret", "wechatpay_api_key",
        "landing_token_secret",
    )
}


def test_production_refuses_sandbox_placeholder_secrets() -> None:
    with pytest.raises(ValidationError, match="RECALL_WECHAT_SECRET.*set real values"):
        Settings(_env_file=None, environment="production", api_keys="k1")


def test_production_needs_an_api_key() -> None:
    with pytest.raises(ValidationError, match="RECALL_API_KEYS"):
        Settings(_env_file=None, environment="production", **REAL)


def test_production_with_real_secrets_and_development_defaults_are_accepted() -> None:
    assert Settings(_env_file=None, environment="production", api_keys="k1", **REAL)
    assert Settings(_env_file=None).wechat_secret.get_secret_value().startswith("sandbox-")
