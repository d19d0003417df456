"""WeChat Official Account subset: token, OpenID-list mass send, template message, article
media, mass-send status, and the MASSSENDJOBFINISH / TEMPLATESENDJOBFINISH event pushes.

Rules, as the real server applies them:

- a mass send needs 2..10,000 OpenIDs (40130 otherwise);
- an unknown OpenID rejects the whole call (40003, the offending ids in ``errmsg``);
- each follower receives at most 4 mass sends per natural month (Asia/Shanghai, business
  clock); followers out of quota are filtered out of the job (the event's ``FilterCount`` is
  the number left *after* filtering, as WeChat documents), unfollowed ones count as
  ``ErrorCount``; 43004 when nobody in the list follows, 45028 when nobody has quota left;
- the same ``clientmsgid`` again answers 45065 with the existing ``msg_id`` and sends nothing.
  Without a ``clientmsgid`` WeChat uses a digest of recipients and content, so an identical
  send is a duplicate too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.sandbox.calls import (
    Call,
    Endpoint,
    Outcome,
    ProviderError,
    Reply,
    errcode_error_reply,
    errcode_fault_reply,
    present,
    require,
    typed,
)
from orchestrator.sandbox.outbox import Delivery, Pending
from orchestrator.sandbox.signing import PushValue, push_xml, wechat_push

if TYPE_CHECKING:
    from orchestrator.sandbox.state import SandboxState

MIN_MASS, MAX_MASS = 2, 10_000
MONTHLY_MASS_QUOTA = 4
MAX_HINTED = 100  # unknown OpenIDs named in one 40003 errmsg
MEDIA_TYPES = ("image", "voice", "video", "thumb")
MEDIA_MSGTYPES = ("mpnews", "image", "voice", "mpvideo")
FOLLOWER_STATES = ("followed", "unfollowed", "unknown")
NOT_AN_OPENID_LIST = "data format error: touser must be a list of OpenIDs"


@dataclass(slots=True)
class MassJob:
    msg_id: int
    msg_data_id: int | None
    total: int
    after_filter: int  # FilterCount: recipients left after the quota filter
    sent: int
    errors: int
    created_at: int  # unix seconds, business time


@dataclass(slots=True)
class TemplateSend:
    msgid: int
    touser: str
    created_at: int


class WeChatOA:
    """State and operations of one sandboxed Official Account."""

    provider = "wechat"

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self.reset()

    def reset(self) -> None:
        self.followers: dict[str, str] = {}  # openid -> followed|unfollowed|unknown
        self.quota: dict[str, tuple[int, int]] = {}  # openid -> (month key, mass sends)
        self.jobs: dict[int, MassJob] = {}
        self.template_sends: dict[int, TemplateSend] = {}
        self.client_msg_ids: dict[str, int] = {}
        self.media: dict[str, str] = {}  # media_id -> news|image|voice|video|thumb

    # -- replies -------------------------------------------------------------------------

    def error_reply(self, err: ProviderError) -> Reply:
        return errcode_error_reply(err)

    def fault_reply(self, kind: str) -> Reply:
        return errcode_fault_reply(kind)

    # -- token ---------------------------------------------------------------------------

    def token(self, call: Call) -> Outcome:
        config = self._state.config
        require(call.query.get("grant_type") == "client_credential", 40002, "invalid grant_type")
        require(call.query.get("appid") == config.wechat_appid, 40013, "invalid appid")
        require(call.query.get("secret") == config.wechat_secret, 40125, "invalid appsecret")
        token, expires_in = self._state.tokens.issue(
            "wechat", config.wechat_appid, config.token_ttl_s, reuse=False
        )
        return Outcome({"access_token": token, "expires_in": expires_in})

    def _authorize(self, call: Call) -> None:
        self._state.tokens.check("wechat", call.query.get("access_token"), invalid_code=40001)

    # -- mass send -----------------------------------------------------------------------

    def mass_send(self, call: Call) -> Outcome:
        self._authorize(call)
        body = call.body
        touser: list[str] = typed(body.get("touser"), list, 47001, NOT_AN_OPENID_LIST)
        require(all(isinstance(o, str) for o in touser), 47001, NOT_AN_OPENID_LIST)
        require(
            MIN_MASS <= len(touser) <= MAX_MASS,
            40130,
            f"invalid openid list size, at least two openid and at most {MAX_MASS}"
            f" (got {len(touser)})",
        )
        content = self._mass_content(body)
        recipients = list(dict.fromkeys(touser))
        client_msg_id = self._client_msg_id(body, content, recipients)
        existing = self.client_msg_ids.get(client_msg_id)
        if existing is not None:
            raise self._duplicate(existing)
        self._reject_unknown(recipients)
        excluded = self._apply_quota(recipients)
        job = self._new_job(body, len(recipients), excluded)
        self.client_msg_ids[client_msg_id] = job.msg_id
        self._state.outbox.put(Pending("wechat", "masssendjobfinish", str(job.msg_id)))
        payload: dict[str, Any] = {
            "errcode": 0,
            "errmsg": "send job submission success",
            "msg_id": job.msg_id,
        }
        if job.msg_data_id is not None:
            payload["msg_data_id"] = job.msg_data_id
        return Outcome(payload, excluded=excluded or None, ref=str(job.msg_id))

    def _mass_content(self, body: dict[str, Any]) -> Any:
        msgtype = body.get("msgtype")
        require(msgtype in (*MEDIA_MSGTYPES, "text", "wxcard"), 40008, "invalid message type")
        content = typed(body.get(str(msgtype)), dict, 47001, f"data format error: no {msgtype}")
        if msgtype in MEDIA_MSGTYPES:
            require(content.get("media_id") in self.media, 40007, "invalid media_id")
        elif msgtype == "text":
            require(bool(content.get("content")), 44004, "empty content")
        else:
            require(bool(content.get("card_id")), 40056, "invalid card_id")
        return [msgtype, content]

    def _client_msg_id(self, body: dict[str, Any], content: Any, recipients: list[str]) -> str:
        given = body.get("clientmsgid")
        if given is not None:
            given = str(given)
            require(
                0 < len(given.encode("utf-8")) <= 64,
                47001,
                "data format error: clientmsgid must be 1..64 bytes",
            )
            return given
        # WeChat's default: a digest of the send range and the content.
        digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode("utf-8"))
        digest.update("\n".join(sorted(recipients)).encode("utf-8"))
        return "digest:" + digest.hexdigest()

    def _duplicate(self, msg_id: int) -> ProviderError:
        extra: dict[str, Any] = {"msg_id": msg_id}
        data_id = self.jobs[msg_id].msg_data_id
        if data_id is not None:
            extra["msg_data_id"] = data_id
        return ProviderError(45065, "clientmsgid exist", extra=extra, outcome="duplicate")

    def _reject_unknown(self, openids: Iterable[str]) -> None:
        if not self.followers:  # the common case: everyone follows
            return
        unknown = [o for o in openids if self.followers.get(o) == "unknown"]
        if unknown:
            shown = ", ".join(unknown[:MAX_HINTED]) + (" ..." if len(unknown) > MAX_HINTED else "")
            raise ProviderError(40003, f"invalid openid hint: [{shown}]")

    def _apply_quota(self, recipients: list[str]) -> dict[str, str]:
        """Spend one monthly send of each eligible follower; the others, and why."""
        local = self._state.local_now()
        month = local.year * 12 + local.month
        followers, quota = self.followers, self.quota
        excluded: dict[str, str] = {}
        eligible: list[str] = []
        for openid in recipients:
            if followers and followers.get(openid) == "unfollowed":
                excluded[openid] = "unfollowed"
                continue
            spent_month, spent = quota.get(openid, (month, 0))
            if spent_month == month and spent >= MONTHLY_MASS_QUOTA:
                excluded[openid] = "quota"
            else:
                eligible.append(openid)
        if not eligible:
            if all(reason == "unfollowed" for reason in excluded.values()):
                raise ProviderError(43004, "require subscribe")
            raise ProviderError(45028, "has no masssend quota")
        for openid in eligible:
            spent_month, spent = quota.get(openid, (month, 0))
            quota[openid] = (month, spent + 1 if spent_month == month else 1)
        return excluded

    def _new_job(self, body: dict[str, Any], total: int, excluded: dict[str, str]) -> MassJob:
        over_quota = sum(1 for reason in excluded.values() if reason == "quota")
        unfollowed = len(excluded) - over_quota
        msg_id = self._state.next_id("wechat_msg", 1_000_000_000)
        data_id = None
        if body.get("msgtype") == "mpnews":
            data_id = self._state.next_id("wechat_data", 2_247_000_000)
        job = MassJob(
            msg_id=msg_id,
            msg_data_id=data_id,
            total=total,
            after_filter=total - over_quota,
            sent=total - over_quota - unfollowed,
            errors=unfollowed,
            created_at=self._state.unix_now(),
        )
        self.jobs[msg_id] = job
        return job

    def mass_get(self, call: Call) -> Outcome:
        self._authorize(call)
        msg_id = call.body.get("msg_id")
        job = self.jobs.get(msg_id) if isinstance(msg_id, int) else None
        if job is None and isinstance(msg_id, str) and msg_id.isdigit():
            job = self.jobs.get(int(msg_id))
        job = present(job, 40097, f"invalid args: unknown msg_id {msg_id!r}")
        return Outcome({"msg_id": job.msg_id, "msg_status": "SEND_SUCCESS"}, ref=str(job.msg_id))

    # -- template message ------------------------------------------------------------------

    def template_send(self, call: Call) -> Outcome:
        self._authorize(call)
        body = call.body
        touser = typed(body.get("touser"), str, 40003, "invalid openid")
        template_id = body.get("template_id")
        require(bool(touser), 40003, "invalid openid")
        require(isinstance(template_id, str) and bool(template_id), 40037, "invalid template_id")
        require(isinstance(body.get("data", {}), dict), 47001, "data format error: data")
        state = self.followers.get(touser, "followed")
        require(state != "unknown", 40003, f"invalid openid hint: [{touser}]")
        require(state != "unfollowed", 43004, "require subscribe")
        msgid = self._state.next_id("wechat_msg", 1_000_000_000)
        self.template_sends[msgid] = TemplateSend(msgid, touser, self._state.unix_now())
        self._state.outbox.put(Pending("wechat", "templatesendjobfinish", str(msgid)))
        return Outcome({"errcode": 0, "errmsg": "ok", "msgid": msgid}, ref=str(msgid))

    # -- media -----------------------------------------------------------------------------

    def upload_news(self, call: Call) -> Outcome:
        self._authorize(call)
        media_id = self._store_articles(call.body)
        created = self._state.unix_now()
        return Outcome({"type": "news", "media_id": media_id, "created_at": created}, ref=media_id)

    def add_news(self, call: Call) -> Outcome:
        """``draft/add`` and ``material/add_news``: a permanent article, usable for mpnews."""
        self._authorize(call)
        media_id = self._store_articles(call.body)
        return Outcome({"media_id": media_id}, ref=media_id)

    def _store_articles(self, body: dict[str, Any]) -> str:
        articles = typed(body.get("articles"), list, 44003, "empty news data")
        require(bool(articles), 44003, "empty news data")
        for index, article in enumerate(articles):
            require(
                isinstance(article, dict)
                and bool(article.get("title"))
                and bool(article.get("content")),
                44003,
                f"empty news data: article {index} needs a title and content",
            )
        media_id = f"sbx-news-{self._state.prefix}-{self._state.next_id('media', 1)}"
        self.media[media_id] = "news"
        return media_id

    def media_upload(self, call: Call) -> Outcome:
        self._authorize(call)
        media_type = call.query.get("type", "")
        require(media_type in MEDIA_TYPES, 40004, "invalid media type")
        require(bool(call.body.get("size")), 44001, "empty media data")
        media_id = f"sbx-{media_type}-{self._state.prefix}-{self._state.next_id('media', 1)}"
        self.media[media_id] = media_type
        payload: dict[str, Any] = {
            "type": media_type,
            "media_id": media_id,
            "created_at": self._state.unix_now(),
        }
        if media_type == "thumb":
            payload["thumb_media_id"] = media_id
        return Outcome(payload, ref=media_id)

    def upload_image(self, call: Call) -> Outcome:
        self._authorize(call)
        require(bool(call.body.get("size")), 44001, "empty media data")
        n = self._state.next_id("media", 1)
        return Outcome({"url": f"http://mmbiz.qpic.cn/sandbox/{self._state.prefix}/{n}/0"})

    # -- pushes ----------------------------------------------------------------------------

    def settle(self, item: Pending) -> Delivery | None:
        """Build the signed event push for ``item`` (None without a callback URL)."""
        config = self._state.config
        if not config.wechat_callback_url:
            return None
        if item.kind == "masssendjobfinish":
            fields, sender = self._job_finish_fields(self.jobs[int(item.key)]), "mphelper"
        else:
            send = self.template_sends[int(item.key)]
            fields, sender = self._template_finish_fields(send), send.touser
        url, content = wechat_push(
            config.wechat_callback_url,
            push_xml(fields),
            token=config.wechat_token,
            aes_key=config.wechat_aes_key,
            appid=config.wechat_appid,
            openid=sender,
        )
        return Delivery("wechat", item.kind, url, content, {"Content-Type": "text/xml"})

    def _job_finish_fields(self, job: MassJob) -> dict[str, PushValue]:
        return {
            "ToUserName": self._state.config.wechat_original_id,
            "FromUserName": "mphelper",
            "CreateTime": self._state.unix_now(),
            "MsgType": "event",
            "Event": "MASSSENDJOBFINISH",
            "MsgID": job.msg_id,
            "Status": "send success",
            "TotalCount": job.total,
            "FilterCount": job.after_filter,
            "SentCount": job.sent,
            "ErrorCount": job.errors,
        }

    def _template_finish_fields(self, send: TemplateSend) -> dict[str, PushValue]:
        return {
            "ToUserName": self._state.config.wechat_original_id,
            "FromUserName": send.touser,
            "CreateTime": self._state.unix_now(),
            "MsgType": "event",
            "Event": "TEMPLATESENDJOBFINISH",
            "MsgID": send.msgid,
            "Status": "success",
        }

    # -- control ---------------------------------------------------------------------------

    def set_followers(self, states: dict[str, str]) -> None:
        for openid, follow_state in states.items():
            if follow_state not in FOLLOWER_STATES:
                raise ValueError(
                    f"wechat follower {openid!r}: {follow_state!r} is not one of {FOLLOWER_STATES}"
                )
        self.followers.update(states)


CGI = "/cgi-bin"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("wechat", "GET", f"{CGI}/token", WeChatOA.token, body_kind="query"),
    Endpoint("wechat", "POST", f"{CGI}/message/mass/send", WeChatOA.mass_send, recipients="touser"),
    Endpoint("wechat", "POST", f"{CGI}/message/mass/get", WeChatOA.mass_get),
    Endpoint(
        "wechat",
        "POST",
        f"{CGI}/message/template/send",
        WeChatOA.template_send,
        recipients="touser",
    ),
    Endpoint("wechat", "POST", f"{CGI}/media/uploadnews", WeChatOA.upload_news),
    Endpoint("wechat", "POST", f"{CGI}/draft/add", WeChatOA.add_news),
    Endpoint("wechat", "POST", f"{CGI}/material/add_news", WeChatOA.add_news),
    Endpoint("wechat", "POST", f"{CGI}/media/upload", WeChatOA.media_upload, body_kind="multipart"),
    Endpoint(
        "wechat", "POST", f"{CGI}/media/uploadimg", WeChatOA.upload_image, body_kind="multipart"
    ),
)
