"""What the sandbox is configured with: the credentials it accepts, where it pushes callbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from orchestrator.config import Settings


class SandboxConfig(BaseModel):
    """Credentials the sandbox accepts and the callback targets it pushes to.

    Defaults match ``orchestrator.config.Settings`` defaults, so an unconfigured Recall talks to
    an unconfigured sandbox. ``POST /_sandbox/config`` changes any subset of these fields.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # WeChat Official Account
    wechat_appid: str = "wx-sandbox-appid"
    wechat_secret: str = "sandbox-secret"
    wechat_token: str = "sandbox-token"
    wechat_aes_key: str | None = None  # set: pushes use WeChat's safe (encrypted) mode
    wechat_original_id: str = "gh_sandbox00000"  # ToUserName of event pushes
    wechat_callback_url: str | None = None
    # clientmsgid: remembered this long (business time); a repeat sooner than the interval
    # after the previous call with it (real time) is refused as too fast (45066)
    wechat_clientmsgid_window_s: float = Field(default=86_400, gt=0)
    wechat_clientmsgid_retry_interval_s: float = Field(default=60, ge=0)

    # WeCom
    wecom_corp_id: str = "ww-sandbox-corp"
    wecom_secret: str = "sandbox-secret"
    wecom_token: str = "sandbox-token"
    wecom_aes_key: str | None = None  # set: pushes are encrypted like WeCom's
    wecom_callback_url: str | None = None
    wecom_auto_confirm: bool = False
    # How many group messages a customer may receive, as the WeCom admin sets it (群发助手 -
    # 设置群发规则): "month" (WeCom's default: as many per natural month as the month has
    # days), "week" (7 per natural week) or "day" (1 per day).
    wecom_customer_limit: Literal["month", "week", "day"] = "month"

    # Twilio
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: str = "sandbox-auth-token"
    twilio_inbound_url: str | None = None  # where simulated inbound SMS are posted
    twilio_segment_price: float = Field(default=0.0079, ge=0)

    # Sandbox behaviour
    token_ttl_s: float = Field(default=7200, gt=0)
    auto_flush_s: float | None = Field(default=None, gt=0)
    callback_timeout_s: float = Field(default=10.0, gt=0)

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxConfig:
        """The sandbox that accepts exactly the credentials Recall is configured with."""
        return cls(
            wechat_appid=settings.wechat_appid,
            wechat_secret=settings.wechat_secret.get_secret_value(),
            wechat_token=settings.wechat_token.get_secret_value(),
            wechat_aes_key=_secret_or_none(settings.wechat_aes_key),
            wecom_corp_id=settings.wecom_corp_id,
            wecom_secret=settings.wecom_secret.get_secret_value(),
            wecom_token=settings.wecom_token.get_secret_value(),
            wecom_aes_key=_secret_or_none(settings.wecom_aes_key),
            twilio_account_sid=settings.twilio_account_sid,
            twilio_auth_token=settings.twilio_auth_token.get_secret_value(),
        )

    def updated(self, changes: dict[str, Any]) -> SandboxConfig:
        """A validated copy with ``changes`` applied (unknown keys are refused)."""
        return SandboxConfig.model_validate({**self.model_dump(), **changes})


def _secret_or_none(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
