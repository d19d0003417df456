"""Importing ``orchestrator.channels`` registers the three adapters by their journey names."""

from __future__ import annotations

import pytest
import redis

import orchestrator.channels  # noqa: F401  (registers)
from orchestrator.channels.base import REGISTRY, build_channel
from orchestrator.channels.common import provider_base
from orchestrator.config import Settings
from orchestrator.errors import ConfigError


def test_the_three_channels_are_registered() -> None:
    assert {"wechat_article", "wecom_group_invite", "sms"} <= set(REGISTRY)


@pytest.mark.parametrize(
    ("name", "max_batch"),
    [("wechat_article", 10_000), ("wecom_group_invite", 10_000), ("sms", 100)],
)
def test_build_channel_builds_each_adapter(
    settings: Settings, redis_client: redis.Redis, name: str, max_batch: int
) -> None:
    channel = build_channel(name, settings, redis_client)
    try:
        assert channel.name == name and channel.max_batch == max_batch
        assert "secret" not in repr(channel) or "***" in repr(channel)
        assert "sandbox-secret" not in repr(channel)
        assert "sandbox-auth-token" not in repr(channel)
    finally:
        getattr(channel, "close", lambda: None)()


def test_an_unknown_channel_names_the_known_ones(
    settings: Settings, redis_client: redis.Redis
) -> None:
    with pytest.raises(ConfigError, match=r"unknown channel 'fax'; known channels: .*sms"):
        build_channel("fax", settings, redis_client)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "https://api.weixin.qq.com"),
        ("", "https://api.weixin.qq.com"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
        ("https://wx.example.com", "https://wx.example.com"),
    ],
)
def test_provider_base_is_scheme_host_port(value: str | None, expected: str) -> None:
    assert provider_base(value, "https://api.weixin.qq.com", "RECALL_WECHAT_API_BASE") == expected


@pytest.mark.parametrize("value", ["127.0.0.1:8081", "ftp://h", "http://h/cgi-bin/"])
def test_provider_base_refuses_anything_else(value: str) -> None:
    with pytest.raises(ConfigError, match=r"RECALL_WECHAT_API_BASE=.* must be scheme://host"):
        provider_base(value, "https://api.weixin.qq.com", "RECALL_WECHAT_API_BASE")


def test_sms_needs_a_sender(redis_client: redis.Redis) -> None:
    settings = Settings(_env_file=None, twilio_from=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"RECALL_TWILIO_FROM nor RECALL_TWILIO_MESSAGING"):
        build_channel("sms", settings, redis_client)
