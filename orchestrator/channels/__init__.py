"""Channel adapters. Importing this package registers the three channels by name.

``build_channel(name, settings, redis)`` (``orchestrator.channels.base``) builds one; each
adapter owns clients, a thread pool and caches, so build it once per process and reuse it.
"""

from __future__ import annotations

from orchestrator.channels.base import REGISTRY, build_channel, register
from orchestrator.channels.sms import SmsChannel
from orchestrator.channels.wechat_article import WeChatArticleChannel
from orchestrator.channels.wecom_invite import WeComInviteChannel

register(WeChatArticleChannel.name, WeChatArticleChannel)
register(WeComInviteChannel.name, WeComInviteChannel)
register(
    SmsChannel.name,
    lambda settings, redis: SmsChannel(
        settings, redis, workers=settings.sms_workers, rate_per_s=settings.sms_rate_per_s
    ),
)

__all__ = [
    "REGISTRY",
    "SmsChannel",
    "WeChatArticleChannel",
    "WeComInviteChannel",
    "build_channel",
    "register",
]
