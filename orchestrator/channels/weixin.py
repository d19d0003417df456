"""wechatpy clients for WeChat OA and WeCom, made safe for many concurrent workers.

wechatpy out of the box (1) retries a 40001 without bound, (2) fetches tokens from
hard-coded hosts without a timeout, (3) keeps tokens in process memory, so N workers fetch
N tokens and each new one kills the previous. These subclasses:

- are built with ``auto_retry=False`` and own one bounded retry (``call``): on a token
  error the token the call used is refreshed once (``TokenCache.refresh(stale=...)``) and the
  call repeated once; anything else is translated by ``errors.wechat_error`` /
  ``errors.transport_error``;
- point ``API_BASE_URL`` *and* the token endpoint at the configured base
  (``RECALL_WECHAT_API_BASE`` / ``RECALL_WECOM_API_BASE``: scheme+host+port; unset = the
  real hosts);
- keep the token in Redis (``tokens.TokenCache``) and put a timeout on every request.

A client holds a ``requests.Session``: use one client per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import requests
from redis import Redis
from wechatpy import WeChatClient
from wechatpy.enterprise import WeChatClient as WeComClient
from wechatpy.exceptions import WeChatClientException

from orchestrator.channels.common import DEFAULT_TIMEOUT, provider_base
from orchestrator.channels.errors import classify_wechat, transport_error, wechat_error
from orchestrator.channels.tokens import TokenCache, fingerprint, token_key
from orchestrator.errors import ChannelConfig, ChannelError, ChannelRetryable

T = TypeVar("T")

TOKEN_ERRCODES = frozenset({40001, 40014, 42001})


def errcode_of(exc: WeChatClientException) -> int | None:
    return int(exc.errcode) if exc.errcode is not None else None


def response_json(exc: WeChatClientException) -> dict[str, Any]:
    """The provider's JSON body carried by a wechatpy exception ({} when there is none)."""
    return _json_object(exc.response) if exc.response is not None else {}


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class _TokenRejected(Exception):  # noqa: N818 - internal signal, never escapes ``call``
    def __init__(self, stale: str | None) -> None:
        self.stale = stale


class _BoundedClient:
    """What both subclasses add to wechatpy: Redis tokens, timeouts, one bounded retry."""

    PROVIDER: ClassVar[str]
    TOKEN_PATH: ClassVar[str]
    DEFAULT_BASE: ClassVar[str]
    base_url: str
    timeout: Any
    _http: requests.Session

    def __init__(
        self,
        app_id: str,
        secret: str,
        *,
        redis: Redis,
        api_base: str | None = None,
        key_prefix: str = "recall",
        timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
    ) -> None:
        # wechatpy's own __init__ (next in the MRO): no auto_retry, our timeout everywhere.
        super().__init__(app_id, secret, timeout=timeout, auto_retry=False)  # type: ignore[call-arg]
        base = provider_base(
            api_base, self.DEFAULT_BASE, f"RECALL_{self.PROVIDER.upper()}_API_BASE"
        )
        self.base_url = base
        self.API_BASE_URL = f"{base}/cgi-bin/"
        self._used = threading.local()
        self.tokens = TokenCache(
            redis=redis,
            key=token_key(key_prefix, self.PROVIDER, app_id, fingerprint=fingerprint(base, secret)),
            fetch=self._fetch_token,
            provider=self.PROVIDER,
        )

    def _token_params(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def access_token(self) -> str:
        """The shared token from Redis; remembers which one this thread's next call uses."""
        token = self.tokens.get()
        self._used.token = token
        return token

    def fetch_access_token(self) -> dict[str, Any]:
        """wechatpy's hook, kept working: force a refresh through the shared cache."""
        return {"access_token": self.tokens.refresh(stale=getattr(self._used, "token", None))}

    def _fetch_token(self) -> tuple[str, int]:
        action = f"GET {self.TOKEN_PATH}"
        url = f"{self.base_url}{self.TOKEN_PATH}"
        try:
            response = self._http.get(url, params=self._token_params(), timeout=self.timeout)
        except requests.RequestException as exc:
            # Fetching a token sends nothing to anyone: always safe to retry.
            raise transport_error(exc, provider=self.PROVIDER, action=action, sent=False) from exc
        body = _json_object(response)
        code = int(body.get("errcode") or 0)
        if response.status_code >= 400 or code or "access_token" not in body:
            raise self._token_error(code, body, response.status_code, action)
        return str(body["access_token"]), int(body.get("expires_in", 7200))

    def _token_error(
        self, code: int, body: dict[str, Any], status: int, action: str
    ) -> ChannelError:
        detail = body.get("errmsg", "")
        verdict = classify_wechat(code or None, status=status, wecom=self.PROVIDER == "wecom")
        if verdict.kind == "retryable":
            return ChannelRetryable(
                f"{self.PROVIDER} {action} failed ({code or status} {detail}); retry later",
                code=code,
                provider=self.PROVIDER,
            )
        # From the token endpoint even 40001 means the secret is wrong, not the token.
        return ChannelConfig(
            f"{self.PROVIDER} {action} refused the credentials ({code or status} {detail}); check "
            f"RECALL_{self.PROVIDER.upper()}_* app id/secret and the IP whitelist",
            code=code,
            provider=self.PROVIDER,
        )

    def call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one API call with at most one token refresh and one repeat.

        Raises the translated ``ChannelError`` (``.code`` = the errcode) on failure.
        """
        try:
            return self._attempt(action, fn, may_refresh=True)
        except _TokenRejected as rejected:
            self.tokens.refresh(stale=rejected.stale)
        return self._attempt(action, fn, may_refresh=False)

    def _attempt(self, action: str, fn: Callable[[], T], *, may_refresh: bool) -> T:
        try:
            return fn()
        except WeChatClientException as exc:
            code = errcode_of(exc)
            if may_refresh and code in TOKEN_ERRCODES:
                raise _TokenRejected(getattr(self._used, "token", None)) from exc
            status = exc.response.status_code if exc.response is not None else None
            detail = str(exc.errmsg or status or "")
            raise wechat_error(
                code, detail, status=status, provider=self.PROVIDER, action=action
            ) from exc
        except requests.RequestException as exc:
            raise transport_error(exc, provider=self.PROVIDER, action=action) from exc


class RecallWeChatClient(_BoundedClient, WeChatClient):  # type: ignore[misc]
    """WeChat Official Account client: ``client.message``, ``client.media``, ``client.post``."""

    PROVIDER = "wechat"
    TOKEN_PATH = "/cgi-bin/token"
    DEFAULT_BASE = "https://api.weixin.qq.com"

    def _token_params(self) -> dict[str, str]:
        return {"grant_type": "client_credential", "appid": self.appid, "secret": self.secret}

    def __repr__(self) -> str:
        return f"RecallWeChatClient(appid={self.appid!r}, base={self.base_url!r}, secret=***)"


class RecallWeComClient(_BoundedClient, WeComClient):  # type: ignore[misc]
    """WeCom client; external-contact calls go through ``client.post("externalcontact/...")``."""

    PROVIDER = "wecom"
    TOKEN_PATH = "/cgi-bin/gettoken"
    DEFAULT_BASE = "https://qyapi.weixin.qq.com"

    def _token_params(self) -> dict[str, str]:
        return {"corpid": self.corp_id, "corpsecret": self.secret}

    def __repr__(self) -> str:
        return f"RecallWeComClient(corp_id={self.corp_id!r}, base={self.base_url!r}, secret=***)"
