"""``send: wechat_article``: WeChat Official Account mass send by OpenID list.

One batch = one ``message/mass/send`` call with ``clientmsgid = batch_id``: for 24 hours
WeChat answers a repeated clientmsgid with 45065 and the existing ``msg_id`` and sends
nothing (a repeat within a minute gets 45066, "retry too fast": retryable, after a
minute), so a retry and ``reconcile`` simply repeat the identical call. Past 24 hours a
repeat would send again: ``dedupe_window`` tells the engine, which keeps every repeat
inside it and decides the outcome without one afterwards. What the call sends is built in
two steps:

- the **cover** (``options["cover_jpeg_b64"]``, from the step's ``cover:``) is uploaded as a
  permanent thumb material (``material/add_material?type=thumb``) once per distinct picture:
  its media id is cached in Redis under the picture's digest and uploaded again only when
  WeChat says it is gone (40007 from ``draft/add``);
- the **article** goes into a draft (``draft/add``, where WeChat directs the articles it
  mass-sends; ``media/uploadnews`` is documented as replaced by the draft box). A draft that
  is mass-sent leaves the draft box, so every batch makes its own draft; its media id is
  written to the batch's ledger before the mass send, so a retry sends the very same draft.

A mass send reports counts only (``MASSSENDJOBFINISH``), so every recipient of an accepted
send is ``sent`` with ``provider_message_id = msg_id``. Recipients known to be unreachable
fail with a reason: no OpenID (``no_openid``), or everybody unfollowed / out of the monthly
quota (``not_following`` / ``out_of_quota``). WeChat refuses a whole call for one invalid
OpenID (40003) without saying which (its ``hint`` is a request id), so then the batch's
followers are checked with ``user/info/batchget`` (100 a call, halving any chunk WeChat
refuses, down to the OpenIDs it does not know): those fail as ``invalid_openid``, those not
following as ``not_following``, and the rest is sent under the same clientmsgid (a refused
call created nothing).

A mass send is one article for all its recipients: a batch that is not ``per_recipient``
must hold one text (``check_one_text``, before any call), which the engine guarantees by
freezing recipients together only when their rendered article is identical. A lone
recipient (mass send needs two) or a ``per_recipient`` batch (content of their own: user
data, a per-touch link) goes by template message (``message/template/send``,
``options["template_id"]``, the touch's link or the step's landing page as its URL), one
call per touch, recorded in the ``SendLedger`` because template messages have no idempotency
key and no lookup: ``reconcile`` answers from the ledger, and calls a message it has no
record of ``absent`` only while the ledger is intact (else ``unknown``: it may have been
sent).

Options: ``title`` (else each message's title), ``cover_jpeg_b64``, ``cover_name``,
``author``, ``digest``, ``link`` (the article's "read more" URL: a fixed landing page),
``send_ignore_reprint``, ``mode`` (``per_recipient``), ``template_id``, ``template_data`` (JSON
``{field: text}``; ``{title}``, ``{text}``, ``{link}``, ``{user_id}`` are replaced),
``preview`` (``"1"``: a test send; an article its recipients share, even a lone one's, goes
to each of them by WeChat's ``message/mass/preview``, one call each, ledger-guarded,
spending none of their four mass sends a month; a ``per_recipient`` batch still goes by
template message).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from wechatpy.exceptions import WeChatClientException

from orchestrator.channels.base import Message, SendRequest, TouchResult, per_recipient
from orchestrator.channels.common import (
    DEFAULT_TIMEOUT,
    PerThread,
    check_batch,
    check_one_text,
    failed,
    unknown,
)
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
from orchestrator.journeys.covers import digest, thumb_problem

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.config import Settings

PROVIDER = "wechat"
DUPLICATE_CLIENTMSGID = 45065
RETRY_TOO_FAST = 45066  # the same clientmsgid again within a minute
RETRY_TOO_FAST_WAIT_S = 60.0
DEDUPE_WINDOW = timedelta(hours=24)  # how long WeChat remembers a clientmsgid
STALE_MEDIA = 40007
INVALID_OPENID = 40003
COVER_TTL_S = 30 * 86_400  # permanent material does not expire; look again monthly anyway
FOLLOWER_PAGE = 100  # user/info/batchget takes at most 100 OpenIDs a call
MAX_NARROWING_ROUNDS = 3  # a second 40003 after the followers check means followers changed
TEMPLATE_WORKERS = 8
DEFAULT_TEMPLATE_DATA = {"first": "{title}", "keyword1": "{text}"}
# Ledger fields of the mass send: the result, the recipients left out, the batch's draft.
MASS_FIELD, EXCLUDED_FIELD, DRAFT_FIELD = "mass", "excluded", "draft"
# draft/add's documented limits (characters), checked before the call so the message is ours.
TITLE_MAX_CHARS, AUTHOR_MAX_CHARS, DIGEST_MAX_CHARS = 32, 16, 128
CONTENT_MAX_CHARS, CONTENT_MAX_BYTES, SOURCE_URL_MAX_BYTES = 20_000, 1_000_000, 1_000


class WeChatArticleChannel:
    """The ``wechat_article`` channel. Build once per process and reuse it."""

    name: ClassVar[str] = "wechat_article"
    max_batch: ClassVar[int] = 10_000
    one_text: ClassVar[bool] = True  # a mass send is one article for all its recipients

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
        if _preview_mode(request):
            return self._send_previews(request)
        if _template_mode(request):
            return self._send_templates(request)
        return self._send_mass(request)

    def reconcile(self, request: SendRequest) -> list[TouchResult]:
        """Mass send: repeat the identical call; WeChat's clientmsgid makes it safe (45065 ->
        sent) inside ``dedupe_window``. Template messages have no lookup API: the ledger's
        record, else ``absent`` while the ledger is intact, else ``unknown``. Previews
        likewise."""
        if _template_mode(request) or _preview_mode(request):
            recorded = self._ledger.load(request.batch_id)
            missing = absent if self._ledger.intact(request.batch_id) else unknown
            return [
                from_entry(m, recorded) if str(m.touch_id) in recorded else missing(m)
                for m in request.messages
            ]
        try:
            return self._send_mass(request)
        except ChannelConfig:
            # A batch that cannot be sent as it stands (e.g. frozen without a cover) cannot
            # have been sent either: nothing to find. Absent, so the engine's send meets the
            # same refusal and fails the step as a config error, instead of waiting on it.
            return [absent(m) for m in request.messages]

    def dedupe_window(self, request: SendRequest) -> timedelta | None:
        """How long after its first call a repeat of this batch is still deduplicated by
        WeChat (mass send); None when repeats are guarded by the ledger instead."""
        return None if _template_mode(request) or _preview_mode(request) else DEDUPE_WINDOW

    # -- mass send --------------------------------------------------------------------------

    def _send_mass(self, request: SendRequest) -> list[TouchResult]:
        recorded = self._ledger.load(request.batch_id)
        excluded: dict[str, str] = dict(
            recorded[EXCLUDED_FIELD].data if EXCLUDED_FIELD in recorded else {}
        )
        mass = recorded.get(MASS_FIELD)
        if mass is not None and not mass.pending:
            return _mass_results(request, excluded, mass.data.get("msg_id"))
        article = _article(request)  # a bad step is refused before any call
        tried = mass is not None  # an earlier attempt's mass send may have gone out
        for _ in range(MAX_NARROWING_ROUNDS):
            targets = _targets(request, excluded)
            if len(targets) < 2:
                return self._lone(request, excluded)
            try:
                msg_id = self._mass_call(request, article, targets, tried=tried)
            except ChannelRecipient as exc:
                self._ledger.forget(request.batch_id, [MASS_FIELD])  # refused: nothing sent
                if exc.code == INVALID_OPENID:
                    self._exclude_unknown(request, targets, excluded)
                    continue
                # 43004 nobody follows / 45028 nobody has quota left: all of them fail.
                excluded.update(dict.fromkeys(targets, wechat_reason(exc)))
                return _mass_results(request, excluded, None)
            except _DraftGone:
                # Our own earlier send may have used this draft up: whether it went out is
                # for the reconciliation to find, never for a second draft to risk.
                return [unknown(m) if _openid(m) else failed(m, "no_openid")
                        for m in request.messages]
            self._ledger.record(request.batch_id, {MASS_FIELD: {"msg_id": msg_id}})
            return _mass_results(request, excluded, msg_id)
        raise ChannelConfig(
            f"wechat mass send {request.batch_id!r}: still refused for an invalid OpenID after "
            f"the followers check left out {len(excluded)}; check that the users' openid column "
            f"belongs to appid {self._appid!r}",
            code=INVALID_OPENID,
            provider=PROVIDER,
        )

    def _mass_call(
        self, request: SendRequest, article: dict[str, Any], openids: list[str], *, tried: bool
    ) -> str | None:
        """The mass send of the batch's draft; a draft WeChat no longer has is made again
        only when no earlier attempt of this batch can have sent it."""
        client = self.client()
        draft, fresh = self._draft(client, request, article)
        self._ledger.mark_pending(request.batch_id, [MASS_FIELD])
        try:
            return self._post_mass(client, request, openids, draft)
        except ChannelConfig as exc:
            if exc.code != STALE_MEDIA or fresh:
                raise
            if tried:
                raise _DraftGone from exc
        self._ledger.forget(request.batch_id, [DRAFT_FIELD])
        draft, _ = self._draft(client, request, article)
        return self._post_mass(client, request, openids, draft)

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

        try:
            answer = client.call("POST message/mass/send", call)
        except ChannelRetryable as exc:
            if exc.code != RETRY_TOO_FAST:
                raise
            # WeChat has this clientmsgid and asks for a minute's pause: ask again then.
            raise ChannelRetryable(str(exc), code=exc.code, provider=PROVIDER,
                                   retry_after_s=RETRY_TOO_FAST_WAIT_S) from exc
        return str(answer["msg_id"]) if answer.get("msg_id") is not None else None

    # -- the followers check after a 40003 ----------------------------------------------------

    def _exclude_unknown(
        self, request: SendRequest, targets: list[str], excluded: dict[str, str]
    ) -> None:
        """WeChat refused the call for an OpenID it does not know, without naming it: ask
        ``user/info/batchget`` about every target and leave out what cannot be reached."""
        client = self.client()
        found: dict[str, str] = {}
        for start in range(0, len(targets), FOLLOWER_PAGE):
            self._probe(client, targets[start : start + FOLLOWER_PAGE], found)
        if not found:
            raise ChannelConfig(
                f"wechat mass send {request.batch_id!r} was refused for an invalid OpenID (40003) "
                "but user/info/batchget knows every OpenID of the batch; retry later or check "
                f"that the openids belong to appid {self._appid!r}",
                code=INVALID_OPENID,
                provider=PROVIDER,
            )
        excluded.update(found)
        self._ledger.record(request.batch_id, {EXCLUDED_FIELD: excluded})

    def _probe(self, client: RecallWeChatClient, openids: list[str], found: dict[str, str]) -> None:
        """Who of ``openids`` WeChat does not know (a 40003 on the whole call: halve it) or
        who does not follow (``subscribe`` 0)."""
        try:
            users = client.call(
                "POST user/info/batchget", lambda: client.user.get_batch(list(openids))
            )
        except ChannelRecipient as exc:
            if exc.code != INVALID_OPENID:
                raise
            if len(openids) == 1:
                found[openids[0]] = "invalid_openid"
                return
            middle = len(openids) // 2
            self._probe(client, openids[:middle], found)
            self._probe(client, openids[middle:], found)
            return
        except ChannelUnknown as exc:  # a read with no answer: safe to ask again later
            raise ChannelRetryable(str(exc), provider=PROVIDER) from exc
        for user in users:
            if not int(user.get("subscribe") or 0):
                found[str(user["openid"])] = "not_following"

    def _lone(self, request: SendRequest, excluded: Mapping[str, str]) -> list[TouchResult]:
        """Fewer than two OpenIDs left: those go by template message, the rest have failed."""
        kept = tuple(m for m in request.messages if _openid(m) and _openid(m) not in excluded)
        by_touch = {r.touch_id: r for r in _mass_results(request, excluded, None)}
        if kept:
            sent = self._send_templates(replace(request, messages=kept))
            by_touch.update((r.touch_id, r) for r in sent)
        return [by_touch[m.touch_id] for m in request.messages]

    # -- cover and draft ------------------------------------------------------------------

    def _draft(
        self, client: RecallWeChatClient, request: SendRequest, article: dict[str, Any]
    ) -> tuple[str, bool]:
        """The batch's draft media id, and whether it was made just now."""
        recorded = self._ledger.load(request.batch_id).get(DRAFT_FIELD)
        if recorded is not None and not recorded.pending:
            return str(recorded.data["media_id"]), False
        cover = self._cover(client, request)
        thumb = cover.get()
        try:
            media_id = self._add_draft(client, {**article, "thumb_media_id": thumb})
        except ChannelConfig as exc:
            if exc.code != STALE_MEDIA:
                raise
            thumb = cover.refresh(stale=thumb)  # the cover was deleted from the material
            media_id = self._add_draft(client, {**article, "thumb_media_id": thumb})
        self._ledger.record(request.batch_id, {DRAFT_FIELD: {"media_id": media_id}})
        return media_id, True

    def _add_draft(self, client: RecallWeChatClient, article: dict[str, Any]) -> str:
        try:
            answer = client.call(
                "POST draft/add",
                lambda: client.post("draft/add", data={"articles": [article]}),
            )
        except ChannelUnknown as exc:
            # A draft that may have been made is only an unused draft: making another is safe.
            raise ChannelRetryable(str(exc), provider=PROVIDER) from exc
        return str(answer["media_id"])

    def _cover(self, client: RecallWeChatClient, request: SendRequest) -> TokenCache:
        """The cover's permanent thumb media id, uploaded once per picture by one worker."""
        data = _cover_bytes(request)
        key = (
            f"{self._key_prefix}:media:wechat:{self._appid}:{fingerprint(client.base_url)}:"
            f"thumb:{digest(data)}"
        )
        return TokenCache(
            redis=self._redis,
            key=key,
            fetch=lambda: (self._upload_cover(client, request, data), COVER_TTL_S),
            provider=PROVIDER,
        )

    def _upload_cover(self, client: RecallWeChatClient, request: SendRequest, data: bytes) -> str:
        name = request.options.get("cover_name", "cover.jpg").rsplit("/", 1)[-1]
        try:
            answer = client.call(
                "POST material/add_material",
                lambda: client.material.add("thumb", (name, data, "image/jpeg")),
            )
        except ChannelUnknown as exc:
            # An upload that may have happened only leaves an unused picture: retry.
            raise ChannelRetryable(str(exc), provider=PROVIDER) from exc
        return str(answer["media_id"])

    # -- template messages ------------------------------------------------------------------

    def _send_templates(self, request: SendRequest) -> list[TouchResult]:
        template_id = request.options.get("template_id")
        if not template_id:
            why = (
                "content of each recipient's own goes by template message"
                if per_recipient(request)
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

    # -- previews (test sends) ------------------------------------------------------------

    def _send_previews(self, request: SendRequest) -> list[TouchResult]:
        """The batch's article to each recipient by WeChat's preview (one call each, guarded
        by the ledger as template messages are): the person sees the very article, and no
        mass send of their four a month is spent."""
        article = _article(request)  # a bad step is refused before any call
        draft, _ = self._draft(self.client(), request, article)
        return send_each(
            request,
            ledger=self._ledger,
            pool=self._pool,
            provider=PROVIDER,
            precheck=_no_openid,
            call=partial(self._send_preview, draft),
        )

    def _send_preview(self, media_id: str, message: Message) -> Outcome:
        client = self.client()
        # By OpenID always (wechatpy's helper sends anything not shaped like one as towxname).
        data = {"touser": message.recipient.openid, "msgtype": "mpnews",
                "mpnews": {"media_id": media_id}}
        return self._one_call(message, "POST message/mass/preview", "msg_id",
                              lambda: client.post("message/mass/preview", data=data))

    def _send_template(self, request: SendRequest, template_id: str, message: Message) -> Outcome:
        client = self.client()
        data = _template_data(request.options, message)
        return self._one_call(
            message, "POST message/template/send", "msgid",
            lambda: client.message.send_template(
                message.recipient.openid, template_id, data,
                url=message.link or request.options.get("link") or None,
            ),
        )

    def _one_call(self, message: Message, label: str, id_key: str,
                  send: Callable[[], dict[str, Any]]) -> Outcome:
        """One recipient's call (a template message or a preview): its answer's id is the
        provider message id; a recipient error fails the touch, a lost answer leaves it
        unknown, any other error goes back to the fan-out."""
        client = self.client()
        try:
            answer = client.call(label, send)
        except ChannelRecipient as exc:
            return Outcome(message, result=failed(message, wechat_reason(exc)))
        except ChannelUnknown:
            return Outcome(message, result=unknown(message))
        except ChannelError as exc:
            return Outcome(message, error=exc)
        found = answer.get(id_key)
        return Outcome(message, result=TouchResult(
            touch_id=message.touch_id, status="sent",
            provider_message_id=str(found) if found is not None else None))


class _DraftGone(Exception):  # noqa: N818 - internal signal, never escapes ``_send_mass``
    """The batch's draft is gone after an earlier attempt of the batch may have sent it."""


def absent(message: Message) -> TouchResult:
    return TouchResult(touch_id=message.touch_id, status="absent", reason="not_found")


def _openid(message: Message) -> str | None:
    return message.recipient.openid or None


def _no_openid(message: Message) -> TouchResult | None:
    return None if _openid(message) else failed(message, "no_openid")


def _preview_mode(request: SendRequest) -> bool:
    """A test send (``options["preview"]``) of an article shared by its recipients."""
    return request.options.get("preview") == "1" and not per_recipient(request)


def _template_mode(request: SendRequest) -> bool:
    openids = {m.recipient.openid for m in request.messages if m.recipient.openid}
    return per_recipient(request) or len(openids) == 1


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


def _step_error(request: SendRequest, problem: str) -> ChannelConfig:
    return ChannelConfig(
        f"wechat_article step {request.step_id!r} of {request.journey_id!r}: {problem}",
        provider=PROVIDER,
    )


def _cover_bytes(request: SendRequest) -> bytes:
    encoded = request.options.get("cover_jpeg_b64")
    if not encoded:
        raise _step_error(
            request,
            "the article has no cover and WeChat refuses an article without one (40007); "
            "give the step a cover: (a JPG of at most 64 KB) and run recall validate",
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _step_error(request, f"the cover is not valid base64 ({exc})") from exc
    problem = thumb_problem(data)
    if problem is not None:
        raise _step_error(request, f"cover {request.options.get('cover_name', '')!r}: {problem}")
    return data


def _article(request: SendRequest) -> dict[str, Any]:
    """The draft's article (without its cover), checked against draft/add's limits."""
    check_one_text(request, channel=WeChatArticleChannel.name)
    first = request.messages[0]
    title = request.options.get("title") or first.title or ""
    content = first.text.strip()
    if not title or not content:
        raise _step_error(
            request, "the article needs a title (template title or options.title) and a body"
        )
    article = {
        "title": title,
        "author": request.options.get("author", ""),
        "digest": request.options.get("digest", ""),
        "content": first.text,
        "content_source_url": request.options.get("link", ""),
        "need_open_comment": 0,
        "only_fans_can_comment": 0,
    }
    problem = _article_problem(article)
    if problem is not None:
        raise _step_error(request, problem)
    _cover_bytes(request)  # a missing or bad cover is the step's fault: say so before any call
    return article


def _article_problem(article: Mapping[str, Any]) -> str | None:
    checks = (
        ("title", len(article["title"]), TITLE_MAX_CHARS, "characters"),
        ("author", len(article["author"]), AUTHOR_MAX_CHARS, "characters"),
        ("digest", len(article["digest"]), DIGEST_MAX_CHARS, "characters"),
        ("content", len(article["content"]), CONTENT_MAX_CHARS - 1, "characters"),
        ("content", len(article["content"].encode()), CONTENT_MAX_BYTES - 1, "bytes"),
        ("link", len(article["content_source_url"].encode()), SOURCE_URL_MAX_BYTES, "bytes"),
    )
    for field, size, limit, unit in checks:
        if size > limit:
            return f"the article's {field} is {size:,} {unit}; WeChat takes at most {limit:,}"
    return None


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
