"""WeChat Official Account subset: token, OpenID-list mass send, template message, followers
(``user/info/batchget``), mass-send status, and the MASSSENDJOBFINISH / TEMPLATESENDJOBFINISH
event pushes. Material (pictures, articles, drafts) lives in ``wechat_media.py``.

Rules, as the real server applies them (docs/sandbox.md cites the pages):

- a mass send needs 2..10,000 OpenIDs (40130 otherwise) and ``mpnews.media_id`` an article
  it may send: live news from ``uploadnews`` or a draft not sent yet (40007 otherwise); an
  accepted send uses the draft up;
- an unknown OpenID rejects the whole call (40003) without saying which: the ``hint`` in
  ``errmsg`` is a request id, as WeChat's is;
- each follower receives at most 4 mass sends per natural month (Asia/Shanghai, business
  clock); followers out of quota are filtered out of the job (the event's ``FilterCount`` is
  the number left *after* filtering, as WeChat documents), unfollowed ones count as
  ``ErrorCount``; 43004 when nobody in the list follows, 45028 when nobody has quota left;
- the same ``clientmsgid`` again, within 24 hours (business time) of the send it made,
  answers 45065 with the existing ``msg_id`` and sends nothing; sooner than a minute (real
  time) after the previous call with it, 45066 ("retry too fast") and nothing else; past
  24 hours it is forgotten and the repeat is a new send. Without a ``clientmsgid`` WeChat
  uses a digest of recipients and content, so an identical send is a duplicate too.
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
from orchestrator.sandbox.wechat_media import Media, MediaLibrary

if TYPE_CHECKING:
    from orchestrator.sandbox.state import SandboxState

MIN_MASS, MAX_MASS = 2, 10_000
MONTHLY_MASS_QUOTA = 4
DAILY_PREVIEWS = 100
MAX_CLIENTMSGID_BYTES = 64
MAX_BATCHGET = 100
LANGS = ("zh_CN", "zh_TW", "en")
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
class ClientMsg:
    """What WeChat remembers of a ``clientmsgid``: the send it made and the last call."""

    msg_id: int
    sent_at: int  # unix seconds, business time
    last_call: float  # monotonic seconds, real time


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
        self.library = MediaLibrary(state)
        self.reset()

    def reset(self) -> None:
        self.followers: dict[str, str] = {}  # openid -> followed|unfollowed|unknown
        self.quota: dict[str, tuple[int, int]] = {}  # openid -> (month key, mass sends)
        self.jobs: dict[int, MassJob] = {}
        self.template_sends: dict[int, TemplateSend] = {}
        self.client_msg_ids: dict[str, ClientMsg] = {}
        self.previews: dict[int, int] = {}  # local day (ordinal) -> previews made that day
        self.library.reset()

    # -- replies -------------------------------------------------------------------------

    def error_reply(self, err: ProviderError) -> Reply:
        return errcode_error_reply(err)

    def fault_reply(self, kind: str) -> Reply:
        return errcode_fault_reply(kind)

    # -- token ---------------------------------------------------------------------------

    def token(self, call: Call) -> Outcome:
        config = self._state.config
        query = call.query
        require(bool(query.get("grant_type")), 40002, "invalid grant_type: grant_type missing")
        require(query.get("grant_type") == "client_credential", 40002, "invalid grant_type")
        require(bool(query.get("appid")), 41002, "appid missing")
        require(query.get("appid") == config.wechat_appid, 40013, "invalid appid")
        require(bool(query.get("secret")), 41004, "appsecret missing")
        require(query.get("secret") == config.wechat_secret, 40125, "invalid appsecret")
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
        self._check_repeat(client_msg_id)
        article = self._sendable(content)
        self._reject_unknown(recipients)
        excluded = self._apply_quota(recipients)
        job = self._new_job(body, len(recipients), excluded)
        self.client_msg_ids[client_msg_id] = ClientMsg(
            job.msg_id, job.created_at, self._state.monotonic()
        )
        if article is not None and article.kind == "draft":
            article.sent = True  # a mass-sent draft leaves the draft box
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
        require(msgtype is not None, 47001, "data format error: msgtype missing")
        require(msgtype in (*MEDIA_MSGTYPES, "text", "wxcard"), 40008, "invalid message type")
        content = typed(body.get(str(msgtype)), dict, 47001, f"data format error: no {msgtype}")
        if msgtype in MEDIA_MSGTYPES:
            require(bool(content.get("media_id")), 40007, "invalid media_id: media_id missing")
        elif msgtype == "text":
            require(bool(content.get("content")), 44004, "empty content")
        else:
            require(bool(content.get("card_id")), 40056, "invalid card_id")
        return [msgtype, content]

    def _sendable(self, content: list[Any]) -> Media | None:
        """The article an mpnews send uses (checked after the clientmsgid: a repeat of a send
        that used its draft up is still answered 45065)."""
        msgtype, body = content
        if msgtype == "mpnews":
            article = self.library.sendable(body.get("media_id"))
            return present(article, 40007, "invalid media_id")
        if msgtype in MEDIA_MSGTYPES:
            kinds = {"image": "image", "voice": "voice", "mpvideo": "video"}[msgtype]
            present(self.library.live(body.get("media_id"), kinds), 40007, "invalid media_id")
        return None

    def _client_msg_id(self, body: dict[str, Any], content: Any, recipients: list[str]) -> str:
        given = body.get("clientmsgid")
        if given is not None:
            given = str(given)
            require(bool(given), 47001, "data format error: clientmsgid is empty")
            require(
                len(given.encode("utf-8")) <= MAX_CLIENTMSGID_BYTES,
                45067,
                f"clientmsgid size out of limit (at most {MAX_CLIENTMSGID_BYTES} bytes)",
            )
            return given
        # WeChat's default: a digest of the send range and the content.
        digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode("utf-8"))
        digest.update("\n".join(sorted(recipients)).encode("utf-8"))
        return "digest:" + digest.hexdigest()

    def _check_repeat(self, client_msg_id: str) -> None:
        """A clientmsgid WeChat still remembers: 45066 if repeated too fast, else 45065."""
        known = self.client_msg_ids.get(client_msg_id)
        if known is None:
            return
        config = self._state.config
        if self._state.unix_now() - known.sent_at >= config.wechat_clientmsgid_window_s:
            del self.client_msg_ids[client_msg_id]  # forgotten: this is a new send
            return
        now, last = self._state.monotonic(), known.last_call
        known.last_call = now
        if now - last < config.wechat_clientmsgid_retry_interval_s:
            raise ProviderError(45066, "same clientmsgid retry too fast", outcome="too_fast")
        raise self._duplicate(known.msg_id)

    def _duplicate(self, msg_id: int) -> ProviderError:
        extra: dict[str, Any] = {"msg_id": msg_id}
        data_id = self.jobs[msg_id].msg_data_id
        if data_id is not None:
            extra["msg_data_id"] = data_id
        return ProviderError(45065, "clientmsgid exist", extra=extra, outcome="duplicate")

    def _reject_unknown(self, openids: Iterable[str]) -> None:
        if not self.followers:  # the common case: everyone follows
            return
        if any(self.followers.get(o) == "unknown" for o in openids):
            raise self._invalid_openid()

    def _invalid_openid(self) -> ProviderError:
        """40003 as WeChat words it: the hint is a request id, never the OpenID."""
        hint = f"{self._state.prefix}{self._state.next_id('wechat_hint', 1):06d}"
        return ProviderError(40003, f"invalid openid hint: [{hint}] rid: {hint}-sandbox")

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
        require(isinstance(body.get("data"), dict), 47001, "data format error: data missing")
        state = self.followers.get(touser, "followed")
        if state == "unknown":
            raise self._invalid_openid()
        require(state != "unfollowed", 43004, "require subscribe")
        msgid = self._state.next_id("wechat_msg", 1_000_000_000)
        self.template_sends[msgid] = TemplateSend(msgid, touser, self._state.unix_now())
        self._state.outbox.put(Pending("wechat", "templatesendjobfinish", str(msgid)))
        return Outcome({"errcode": 0, "errmsg": "ok", "msgid": msgid}, ref=str(msgid))

    # -- preview ---------------------------------------------------------------------------

    def mass_preview(self, call: Call) -> Outcome:
        """``message/mass/preview``: the mass message to one follower, to see it as sent. No
        monthly quota is spent and the draft stays; at most 100 previews a natural day."""
        self._authorize(call)
        body = call.body
        require("towxname" not in body, 47001, "data format error: the sandbox previews by "
                "touser (OpenID) only")
        touser = typed(body.get("touser"), str, 40003, "invalid openid")
        require(bool(touser), 40003, "invalid openid")
        content = self._mass_content(body)
        if content[0] == "mpnews":
            present(self.library.sendable(content[1].get("media_id")), 40007, "invalid media_id")
        state = self.followers.get(touser, "followed")
        if state == "unknown":
            raise self._invalid_openid()
        require(state != "unfollowed", 43004, "require subscribe")
        day = self._state.local_now().date().toordinal()
        require(self.previews.get(day, 0) < DAILY_PREVIEWS, 45009,
                "reach max api daily quota limit (mass preview)")
        self.previews[day] = self.previews.get(day, 0) + 1
        msg_id = self._state.next_id("wechat_msg", 1_000_000_000)
        return Outcome({"errcode": 0, "errmsg": "preview success", "msg_id": msg_id},
                       ref=str(msg_id))

    # -- followers ---------------------------------------------------------------------------

    def user_batchget(self, call: Call) -> Outcome:
        """``user/info/batchget``: up to 100 users; an OpenID this account does not know
        refuses the whole call (40003), an unfollowed one answers ``subscribe`` 0."""
        self._authorize(call)
        users = typed(call.body.get("user_list"), list, 47001, "data format error: user_list")
        require(
            0 < len(users) <= MAX_BATCHGET,
            47001,
            f"data format error: user_list holds 1..{MAX_BATCHGET} users (got {len(users)})",
        )
        rows = []
        for index, user in enumerate(users):
            openid = user.get("openid") if isinstance(user, dict) else None
            require(isinstance(openid, str) and bool(openid), 40003, "invalid openid")
            lang = user.get("lang", "zh_CN")
            require(lang in LANGS, 40005, f"invalid lang user_list[{index}].lang: {lang!r}")
            rows.append(self._user_info(str(openid)))
        return Outcome({"user_info_list": rows})

    def _user_info(self, openid: str) -> dict[str, Any]:
        state = self.followers.get(openid, "followed")
        if state == "unknown":
            raise self._invalid_openid()
        if state == "unfollowed":
            return {"subscribe": 0, "openid": openid}
        return {"subscribe": 1, "openid": openid, "language": "zh_CN", "subscribe_time": 0,
                "remark": "", "tagid_list": [], "subscribe_scene": "ADD_SCENE_OTHERS"}

    # -- material (wechat_media.py) --------------------------------------------------------

    def upload_temporary(self, call: Call) -> Outcome:
        self._authorize(call)
        return self.library.upload(call, permanent=False)

    def upload_permanent(self, call: Call) -> Outcome:
        self._authorize(call)
        return self.library.upload(call, permanent=True)

    def upload_news(self, call: Call) -> Outcome:
        self._authorize(call)
        return self.library.upload_news(call)

    def add_draft(self, call: Call) -> Outcome:
        self._authorize(call)
        return self.library.add_draft(call)

    def upload_image(self, call: Call) -> Outcome:
        self._authorize(call)
        return self.library.upload_image(call)

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
        "wechat", "POST", f"{CGI}/message/mass/preview", WeChatOA.mass_preview,
        recipients="touser",
    ),
    Endpoint(
        "wechat",
        "POST",
        f"{CGI}/message/template/send",
        WeChatOA.template_send,
        recipients="touser",
    ),
    Endpoint("wechat", "POST", f"{CGI}/media/uploadnews", WeChatOA.upload_news),
    Endpoint("wechat", "POST", f"{CGI}/draft/add", WeChatOA.add_draft),
    Endpoint(
        "wechat", "POST", f"{CGI}/media/upload", WeChatOA.upload_temporary, body_kind="multipart"
    ),
    Endpoint(
        "wechat",
        "POST",
        f"{CGI}/material/add_material",
        WeChatOA.upload_permanent,
        body_kind="multipart",
    ),
    Endpoint(
        "wechat",
        "POST",
        f"{CGI}/user/info/batchget",
        WeChatOA.user_batchget,
    ),
    Endpoint(
        "wechat", "POST", f"{CGI}/media/uploadimg", WeChatOA.upload_image, body_kind="multipart"
    ),
)
