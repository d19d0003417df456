"""``send: wechat_article``: WeChat Official Account mass send by OpenID list.

One batch = one ``message/mass/send`` call with ``clientmsgid = batch_id``: WeChat answers a
repeated clientmsgid with 45065 and the existing ``msg_id`` and sends nothing, so a retry
and ``reconcile`` simply repeat the identical call. The article is uploaded once per
``content_version`` (``media/uploadnews``; the media id is cached in Redis and uploaded
again when WeChat says it expired, 40007).

A mass send reports counts only (``MASSSENDJOBFINISH``), so every recipient of an accepted
send is ``sent`` with ``provider_message_id = msg_id``. Recipients known to be unreachable
fail with a reason: no OpenID (``no_openid``), OpenIDs WeChat named as invalid when it
refused the call (``invalid_openid``: they are dropped and the same clientmsgid is sent again,
since a refused call creates nothing), or everybody unfollowed / out of the monthly quota
(``not_following`` / ``out_of_quota``).

A lone recipient (mass send needs two) or ``options["mode"] == "template"`` (per-user links)
goes by template message (``message/template/send``, ``options["template_id"]``), one call
per touch, recorded in the ``SendLedger`` because template messages have no idempotency key.

Options: ``title`` (else each message's title), ``thumb_media_id``, ``author``, ``digest``,
``link`` (the article's "read more" URL: a fixed landing page), ``send_ignore_reprint``,
``mode``, ``template_id``, ``template_data`` (JSON ``{field: text}``; ``{title}``,
``{text}``, ``{link}``, ``{user_id}`` are replaced).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from wechatpy.exceptions import WeChatClientException

from orchestrator.channels.base import Message, SendRequest, TouchResult
from orchestrator.channels.common import DEFAULT_TIMEOUT, PerThread, check_batch, failed, unknown
from orchestrator.channels.errors import wechat_reason
from orchestrator.channels.fanout import Outcome, from_entry, send_each
from orchestrator.channels.ledger import SendLedger
from orchestrator.channels.tokens import TokenCache, fingerprint
from orchestrator.channels.weixin import RecallWeChatClient, errcode_of, response_json
from orchestrator.errors import (
    ChannelConfig,
    ChannelError,
    ChannelRecipient,
    ChannelRetryable,
    ChannelUnknown,
)

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.config import Settings

PROVIDER = "wechat"
DUPLICATE_CLIENTMSGID = 45065
STALE_MEDIA = 40007
INVALID_OPENID = 40003
MEDIA_TTL_S = 3 * 86_400  # media/uploadnews media is temporary: WeChat keeps it three days
MAX_NARROWING_ROUNDS = 20  # each 40003 names a few invalid OpenIDs; give up after this many
TEMPLATE_WORKERS = 8
DEFAULT_TEMPLATE_DATA = {"first": "{title}", "keyword1": "{text}"}
MASS_FIELD, EXCLUDED_FIELD = "mass", "excluded"  # ledger fields of the mass send


class WeChatArticleChannel:
    """The ``wechat_article`` channel. Build once per process and reuse it."""

    name: ClassVar[str] = "wechat_article"
    max_batch: ClassVar[int] = 10_000

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        key_prefix: str = "recall",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        template_workers: int = TEMPLATE_WORKERS,
    ) -> None:
        self._appid = settings.wechat_appid
        self._redis = redis
        self._key_prefix = key_prefix
        self._ledger = SendLedger(redis, prefix=key_prefix, channel=self.name)
        self._pool = ThreadPoolExecutor(template_workers, thread_name_prefix="recall-wx")
        self._clients = PerThread(
            lambda: RecallWeChatClient(
                settings.wechat_appid,
                settings.wechat_secret.get_secret_value(),
                redis=redis,
                api_base=settings.wechat_api_base,
                key_prefix=key_prefix,
                timeout=timeout,
            )
        )
        self.client()  # validates the base URL now, not at the first send

    def __repr__(self) -> str:
        return f"WeChatArticleChannel(appid={self._appid!r}, secret=***)"

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def client(self) -> RecallWeChatClient:
        """This thread's client."""
        return self._clients.get()

    # -- the port ---------------------------------------------------------------------------

    def send(self, request: SendRequest) -> list[TouchResult]:
        """One mass send for the batch (or template messages, see the module docstring)."""
        check_batch(request, channel=self.name, max_batch=self.max_batch)
        if _template_mode(request):
            return self._send_templates(request)
        return self._send_mass(request)

    def reconcile(self, request: SendRequest) -> list[TouchResult]:
        """Mass send: repeat the identical call; WeChat's clientmsgid makes it safe (45065 ->
        sent). Template messages have no lookup API: what the ledger lacks stays unknown."""
        if _template_mode(request):
            recorded = self._ledger.load(request.batch_id)
            return [
                from_entry(m, recorded) if str(m.touch_id) in recorded else unknown(m)
                for m in request.messages
            ]
        return self._send_mass(request)

    # -- mass send --------------------------------------------------------------------------

    def _send_mass(self, request: SendRequest) -> list[TouchResult]:
        recorded = self._ledger.load(request.batch_id)
        excluded: dict[str, str] = dict(
            recorded[EXCLUDED_FIELD].data if EXCLUDED_FIELD in recorded else {}
        )
        mass = recorded.get(MASS_FIELD)
        if mass is not None and not mass.pending:
            return _mass_results(request, excluded, mass.data.get("msg_id"))
        for _ in range(MAX_NARROWING_ROUNDS):
            targets = _targets(request, excluded)
            if len(targets) < 2:
                return self._lone(request, excluded)
            try:
                msg_id = self._mass_call(request, targets)
            except ChannelRecipient as exc:
                if exc.code == INVALID_OPENID:
                    self._narrow(request, exc, targets, excluded)
                    continue
                # 43004 nobody follows / 45028 nobody has quota left: all of them fail.
                excluded.update(dict.fromkeys(targets, wechat_reason(exc)))
                return _mass_results(request, excluded, None)
            self._ledger.record(request.batch_id, {MASS_FIELD: {"msg_id": msg_id}})
            return _mass_results(request, excluded, msg_id)
        raise ChannelConfig(
            f"wechat mass send {request.batch_id!r}: still refused for invalid OpenIDs after "
            f"dropping {len(excluded)}; the batch's OpenIDs do not belong to appid "
            f"{self._appid!r}: check the users' openid column",
            code=INVALID_OPENID,
            provider=PROVIDER,
        )

    def _mass_call(self, request: SendRequest, openids: list[str]) -> str | None:
        """The mass send with one media re-upload if WeChat says the article expired."""
        client = self.client()
        media = self._media(client, request)
        media_id = media.get()
        try:
            return self._post_mass(client, request, openids, media_id)
        except ChannelConfig as exc:
            if exc.code != STALE_MEDIA:
                raise
        media_id = media.refresh(stale=media_id)
        return self._post_mass(client, request, openids, media_id)

    def _post_mass(
        self, client: RecallWeChatClient, request: SendRequest, openids: list[str], media_id: str
    ) -> str | None:
        def call() -> dict[str, Any]:
            try:
                answer: dict[str, Any] = client.message.send_mass_article(
                    openids,
                    media_id,
                    send_ignore_reprint=int(request.options.get("send_ignore_reprint", 0)),
                    client_msg_id=request.batch_id,
                )
            except WeChatClientException as exc:
                if errcode_of(exc) != DUPLICATE_CLIENTMSGID:
                    raise
                return response_json(exc)  # already sent: carries the existing msg_id
            return answer

        answer = client.call("POST message/mass/send", call)
        return str(answer["msg_id"]) if answer.get("msg_id") is not None else None

    def _narrow(
        self,
        request: SendRequest,
        exc: ChannelRecipient,
        targets: list[str],
        excluded: dict[str, str],
    ) -> None:
        """40003 names (some of) the invalid OpenIDs: drop them so the next call can pass."""
        named = [o for o in _hinted_openids(exc) if o in targets]
        if not named:
            raise ChannelConfig(
                f"wechat mass send {request.batch_id!r} was refused for invalid OpenIDs "
                f"without naming them ({exc}); check the users' openid column belongs to "
                f"appid {self._appid!r}",
                code=INVALID_OPENID,
                provider=PROVIDER,
            ) from exc
        excluded.update(dict.fromkeys(named, "invalid_openid"))
        self._ledger.record(request.batch_id, {EXCLUDED_FIELD: excluded})

    def _lone(self, request: SendRequest, excluded: Mapping[str, str]) -> list[TouchResult]:
        """Fewer than two OpenIDs left: those go by template message, the rest have failed."""
        kept = tuple(m for m in request.messages if _openid(m) and _openid(m) not in excluded)
        by_touch = {r.touch_id: r for r in _mass_results(request, excluded, None)}
        if kept:
            sent = self._send_templates(replace(request, messages=kept))
            by_touch.update((r.touch_id, r) for r in sent)
        return [by_touch[m.touch_id] for m in request.messages]

    def _media(self, client: RecallWeChatClient, request: SendRequest) -> TokenCache:
        """The article's media id, uploaded once per content version by one worker."""
        key = (
            f"{self._key_prefix}:media:wechat:{self._appid}:{fingerprint(client.base_url)}:"
            f"{request.content_version}"
        )
        return TokenCache(
            redis=self._redis,
            key=key,
            fetch=lambda: (self._upload(client, request), MEDIA_TTL_S),
            provider=PROVIDER,
        )

    def _upload(self, client: RecallWeChatClient, request: SendRequest) -> str:
        article = _article(request)
        try:
            answer = client.call(
                "POST media/uploadnews", lambda: client.media.upload_articles([article])
            )
        except ChannelUnknown as exc:
            # An upload that may have happened only leaves an orphan media file: retry.
            raise ChannelRetryable(str(exc), provider=PROVIDER) from exc
        return str(answer["media_id"])

    # -- template messages ------------------------------------------------------------------

    def _send_templates(self, request: SendRequest) -> list[TouchResult]:
        template_id = request.options.get("template_id")
        if not template_id:
            why = (
                "mode=template (per-user links) sends by template message"
                if request.options.get("mode") == "template"
                else "a lone recipient goes by template message (a mass send needs two OpenIDs)"
            )
            raise ChannelConfig(
                f"wechat_article step {request.step_id!r} of {request.journey_id!r}: {why} "
                "but the step has no template_id; set options.template_id",
                provider=PROVIDER,
            )
        return send_each(
            request,
            ledger=self._ledger,
            pool=self._pool,
            provider=PROVIDER,
            precheck=_no_openid,
            call=partial(self._send_template, request, template_id),
        )

    def _send_template(self, request: SendRequest, template_id: str, message: Message) -> Outcome:
        client = self.client()
        data = _template_data(request.options, message)
        try:
            answer = client.call(
                "POST message/template/send",
                lambda: client.message.send_template(
                    message.recipient.openid, template_id, data, url=message.link
                ),
            )
        except ChannelRecipient as exc:
            return Outcome(message, result=failed(message, wechat_reason(exc)))
        except ChannelUnknown:
            return Outcome(message, result=unknown(message))
        except ChannelError as exc:
            return Outcome(message, error=exc)
        msgid = answer.get("msgid")
        return Outcome(
            message,
            result=TouchResult(
                touch_id=message.touch_id,
                status="sent",
                provider_message_id=str(msgid) if msgid is not None else None,
            ),
        )


def _openid(message: Message) -> str | None:
    return message.recipient.openid or None


def _no_openid(message: Message) -> TouchResult | None:
    return None if _openid(message) else failed(message, "no_openid")


def _template_mode(request: SendRequest) -> bool:
    openids = {m.recipient.openid for m in request.messages if m.recipient.openid}
    return request.options.get("mode") == "template" or len(openids) == 1


def _targets(request: SendRequest, excluded: Mapping[str, str]) -> list[str]:
    """Distinct OpenIDs still to send to, in batch order."""
    openids = (m.recipient.openid for m in request.messages if m.recipient.openid)
    return list(dict.fromkeys(o for o in openids if o not in excluded))


def _mass_results(
    request: SendRequest, excluded: Mapping[str, str], msg_id: str | None
) -> list[TouchResult]:
    results = []
    for message in request.messages:
        openid = _openid(message)
        if openid is None:
            results.append(failed(message, "no_openid"))
        elif openid in excluded:
            results.append(failed(message, excluded[openid]))
        else:
            results.append(
                TouchResult(touch_id=message.touch_id, status="sent", provider_message_id=msg_id)
            )
    return results


_HINT = re.compile(r"hint:\s*\[([^\]]*)\]")


def _hinted_openids(exc: ChannelError) -> list[str]:
    """OpenIDs named in ``invalid openid hint: [a, b ...]`` (WeChat names a few at a time)."""
    cause = exc.__cause__
    text = str(cause.errmsg) if isinstance(cause, WeChatClientException) else str(exc)
    found = _HINT.search(text)
    if found is None:
        return []
    names = re.split(r"[,\s]+", found.group(1))
    return [n for n in names if n and n != "..."]


def _article(request: SendRequest) -> dict[str, Any]:
    first = request.messages[0]
    title = request.options.get("title") or first.title
    if not title or not first.text.strip():
        raise ChannelConfig(
            f"wechat_article step {request.step_id!r} of {request.journey_id!r}: the article "
            "needs a title (template title or options.title) and a body",
            provider=PROVIDER,
        )
    return {
        "thumb_media_id": request.options.get("thumb_media_id", ""),
        "title": title,
        "content": first.text,
        "author": request.options.get("author", ""),
        "digest": request.options.get("digest", ""),
        "content_source_url": request.options.get("link", ""),
        "show_cover_pic": 0,
    }


def _template_data(options: Mapping[str, str], message: Message) -> dict[str, dict[str, str]]:
    fields: Mapping[str, str] = (
        json.loads(options["template_data"])
        if "template_data" in options
        else DEFAULT_TEMPLATE_DATA
    )
    values = {
        "{title}": message.title or "",
        "{text}": message.text,
        "{link}": message.link or "",
        "{user_id}": message.recipient.user_id,
    }
    return {name: {"value": _fill(text, values)} for name, text in fields.items()}


def _fill(text: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text
