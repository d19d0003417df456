"""One Settings object for the whole process, read from ``RECALL_*`` env vars or ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_PREFIX = "sandbox-"


def is_placeholder(secret: str) -> bool:
    """Is ``secret`` one of the published sandbox placeholders (they all start ``sandbox-``)?"""
    return secret.startswith(PLACEHOLDER_PREFIX)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECALL_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Storage and brokers. Unset means the embedded default (SQLite file, embedded Redis).
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: Path = Path(".recall")
    journeys_dir: Path = Path("journeys")
    templates_dir: Path = Path("templates")
    api_keys: str = ""
    public_base_url: str = "http://127.0.0.1:8000"
    timezone: str = "Asia/Shanghai"
    environment: str = "development"

    # WeChat Official Account
    wechat_appid: str = "wx-sandbox-appid"
    wechat_secret: SecretStr = SecretStr("sandbox-secret")
    wechat_token: SecretStr = SecretStr("sandbox-token")
    wechat_aes_key: SecretStr | None = None
    wechat_api_base: str | None = None
    wechat_template_id: str = "recall-touch"  # template messages: lone or per-recipient

    # WeCom
    wecom_corp_id: str = "ww-sandbox-corp"
    wecom_secret: SecretStr = SecretStr("sandbox-secret")
    wecom_token: SecretStr = SecretStr("sandbox-token")
    wecom_aes_key: SecretStr | None = None
    wecom_default_sender: str = "staff-default"
    wecom_api_base: str | None = None
    wecom_groups: dict[str, str] = {}  # journey `group:` name -> WeCom chat_id (JSON in env)

    # Twilio
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("sandbox-auth-token")
    twilio_from: str | None = "+15005550006"
    twilio_messaging_service_sid: str | None = None
    twilio_api_base: str | None = None

    # Payment webhooks
    generic_webhook_secret: SecretStr = SecretStr("sandbox-generic-secret")
    stripe_webhook_secret: SecretStr = SecretStr("sandbox-stripe-secret")
    wechatpay_api_key: SecretStr = SecretStr("sandbox-wechatpay-key")
    landing_token_secret: SecretStr = SecretStr("sandbox-landing-secret")  # fixed-link mode
    landing_token_ttl_s: int = Field(default=3600, ge=60, le=30 * 86400)

    # Import: national phone numbers are read in this region (ISO 3166 code, e.g. CN);
    # unset: the region of the policy's time zone (RECALL_TIMEZONE without a policy).
    phone_region: str | None = None

    # Short links: requests per client address and minute before 429 (each API process).
    link_requests_per_min: int = Field(default=120, ge=1)
    # /metrics: store-wide totals are recomputed at most this often (real seconds).
    metrics_refresh_s: float = Field(default=60.0, ge=0)

    # SMS throughput (client side)
    sms_rate_per_s: float = 1000.0
    sms_workers: int = 32

    # Engine tuning (not in the public contract; documented in docs/operations.md)
    gather_window_s: int = 60
    claim_batch_size: int = 500
    claim_lease_s: int = 300
    delivery_lease_s: int = 60  # a batch's lease, renewed every third of it during a call
    max_attempts: int = 8  # unanswered attempts in a row before an outcome is unknown_outcome
    retry_base_s: float = 5.0  # back-off between attempts: base * 2**n, capped, jittered
    retry_cap_s: float = 600.0
    delivery_deadline_s: int = 86_400  # a batch refused this long (business time) expires
    confirm_timeout_s: int = 86_400
    celery_queue: str = "recall"  # one queue per deployment sharing a broker

    @field_validator("api_keys")
    @classmethod
    def _strip_keys(cls, value: str) -> str:
        return ",".join(k.strip() for k in value.split(",") if k.strip())

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> Settings:
        """Sandbox defaults are fine for the embedded stack on loopback, never in production,
        where they would let anyone who read this file sign a webhook."""
        if self.environment != "production":
            return self
        placeholders = self.placeholder_secrets()
        if not self.api_key_list:
            placeholders.append("RECALL_API_KEYS")
        if placeholders:
            raise ValueError(
                "RECALL_ENVIRONMENT=production but these settings still hold sandbox "
                f"placeholders: {', '.join(placeholders)}; set real values"
            )
        return self

    def placeholder_secrets(self) -> list[str]:
        """The ``RECALL_*`` names of secrets that still hold a built-in sandbox placeholder."""
        return [
            f"RECALL_{name.upper()}" for name in Settings.model_fields
            if isinstance(value := getattr(self, name), SecretStr)
            and is_placeholder(value.get_secret_value())
        ]

    @property
    def api_key_list(self) -> list[str]:
        return [k for k in self.api_keys.split(",") if k]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'recall.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
