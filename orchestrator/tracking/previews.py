"""Requests that are not a person clicking: link-preview crawlers and prefetches.

Chat apps fetch a link as soon as it is pasted or received, to draw its preview card
(WeChat, Slack, Twitter/X, Facebook/Messenger, Telegram, WhatsApp, Skype/Teams, Discord,
LinkedIn…), and browsers may prefetch it. Such a request gets the same redirect as a
person, but it is not a click: counting it would credit the touch with a click nobody made.

A request is a preview when its method is ``HEAD``, when it announces itself as a prefetch
(``Purpose``/``Sec-Purpose``/``X-Purpose``/``X-Moz``: ``prefetch``/``preview``), or when its
User-Agent contains one of ``PREVIEW_AGENTS`` (case-insensitive). A request without a
User-Agent is counted: some in-app browsers send none, and a bot can send anything anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Substrings of the User-Agents the preview fetchers send (each from the service's own
# documentation or widely published samples).
PREVIEW_AGENTS = (
    "mpcrawler",  # WeChat's crawler (mini-program and linked pages)
    "wechatshareextension",  # WeChat's share sheet drawing a link card (iOS)
    "slackbot", "slack-imgproxy",  # Slack: Slackbot-LinkExpanding
    "twitterbot",  # Twitter / X cards
    "facebookexternalhit", "facebot", "meta-externalagent", "meta-externalfetcher",
    "telegrambot",  # Telegram
    "whatsapp",  # WhatsApp fetches previews as "WhatsApp/2.x"; links open in a browser
    "skypeuripreview", "microsoftpreview", "bingpreview",  # Skype, Teams, Outlook
    "discordbot",  # Discord
    "linkedinbot",  # LinkedIn
    "pinterestbot", "redditbot", "applebot", "googlebot", "bingbot", "yandexbot",
    "petalbot", "embedly", "iframely", "vkshare", "kakaotalk-scrap", "snap url preview",
    "zoombot", "mastodon", "bluesky",
    "spider", "crawler",  # Baiduspider, Bytespider, Sogou web spider, 360Spider, …
)
_AGENTS = re.compile("|".join(re.escape(a) for a in PREVIEW_AGENTS), re.IGNORECASE)
_PURPOSE_HEADERS = ("purpose", "sec-purpose", "x-purpose", "x-moz")
_PREFETCH = re.compile(r"prefetch|preview|prerender", re.IGNORECASE)


def is_preview(method: str, headers: Mapping[str, str]) -> bool:
    """Is this request a preview fetch or a prefetch rather than a person's click?"""
    if method.upper() == "HEAD":
        return True
    if any(_PREFETCH.search(headers.get(name, "")) for name in _PURPOSE_HEADERS):
        return True
    return bool(_AGENTS.search(headers.get("user-agent", "")))
