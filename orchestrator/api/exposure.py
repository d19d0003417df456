"""Fail-closed secrets: when the sandbox placeholders may be used, and when the API refuses
to start.

The placeholder secrets (``sandbox-…``) are published in this repository, so anyone can sign
a webhook, a callback or a landing token with them. They are accepted only while nobody
else can reach the API: it listens on a loopback address *and* ``RECALL_PUBLIC_BASE_URL``
(where providers and people are sent) is a loopback URL — the embedded stack of ``recall
run``, ``recall demo`` and ``recall simulate``. An API that serves any other address is
*exposed*: it refuses to start while a secret holds a placeholder or ``RECALL_API_KEYS``
is empty, and its signature checks never accept a placeholder.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from orchestrator.config import Settings
from orchestrator.errors import ConfigError


def is_loopback_host(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; ``0.0.0.0`` (every interface) is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def sandbox_secrets_allowed(settings: Settings, host: str) -> bool:
    """May an API listening on ``host`` accept the sandbox placeholder secrets?"""
    return (
        settings.environment != "production"
        and is_loopback_host(host)
        and is_loopback_url(settings.public_base_url)
    )


def check_can_serve(settings: Settings, host: str) -> None:
    """Refuse (``ConfigError``) to serve an exposed API on placeholders or without API keys."""
    if sandbox_secrets_allowed(settings, host):
        return
    missing = settings.placeholder_secrets()
    if not settings.api_key_list:
        missing.append("RECALL_API_KEYS (empty)")
    if missing:
        raise ConfigError(
            f"the API would serve {host} (public URL {settings.public_base_url}), reachable "
            "from other machines, but these settings still hold the published sandbox "
            f"placeholders: {', '.join(missing)}. Set real values (the placeholders only work "
            "for the embedded stack on 127.0.0.1)"
        )
