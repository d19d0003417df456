"""WeCom (企业微信) customer-contact subset: token, mass message tasks that wait for the staff
member's confirmation, their results, customer-group join ways, group chats and the
``change_external_chat`` push when a customer joins.

Rules (docs/sandbox.md cites the pages): a task holds at most 10,000 ``external_userid``;
unknown ones come back in ``fail_list``; ``text.content`` is at most 4,000 bytes, a link
attachment needs ``title`` (≤ 128 bytes) and ``url`` (≤ 2,048), ``desc`` ≤ 512, ``picurl``
≤ 2,048; on confirmation each recipient becomes status 1 (sent), 2 (not a friend of the
sender) or 3 (already received as many group messages as the admin allows: by default as
many a natural month as it has days, or 7 a week, or 1 a day; Asia/Shanghai business days).
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import dataclass, field
from datetime import date
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
from orchestrator.sandbox.signing import PushValue, push_xml, wecom_push

if TYPE_CHECKING:
    from orchestrator.sandbox.state import SandboxState

MAX_RECIPIENTS = 10_000
MAX_ATTACHMENTS = 9
MAX_JOIN_WAY_CHATS = 5
MAX_STATE_CHARS = 30
MAX_CHAT_MEMBERS = 200
DEFAULT_SENDER = "sandbox-staff"
CUSTOMER_STATES = ("friend", "not_friend", "unknown")
NOT_AN_ID_LIST = "invalid external_userid: a non-empty list of ids is required"
NOT_SENT, SENT, NOT_FRIEND, OVER_LIMIT = 0, 1, 2, 3
MAX_TEXT_BYTES = 4000
JOIN_BY_QR = 3  # WeCom join_scene: joined by scanning the group QR code
ATTACHMENT_FIELDS = {
    "image": ("media_id", "pic_url"),
    "link": ("title", "url"),
    "miniprogram": ("title", "pic_media_id", "appid", "page"),
    "video": ("media_id",),
    "file": ("media_id",),
}
# (attachment type, field) -> at most this many UTF-8 bytes
FIELD_MAX_BYTES = {
    ("link", "title"): 128,
    ("link", "desc"): 512,
    ("link", "url"): 2048,
    ("link", "picurl"): 2048,
    ("miniprogram", "title"): 64,
}


@dataclass(slots=True)
class GroupMsgTask:
    msgid: str
    sender: str
    created_at: int
    recipients: tuple[str, ...]
    statuses: bytearray  # one status per recipient, compact
    text: dict[str, Any] | None
    attachments: list[Any]
    send_time: int = 0
    confirmed: bool = False
    cancelled: bool = False


@dataclass(slots=True)
class JoinWay:
    config_id: str
    scene: int
    chat_id_list: list[str]
    state: str
    remark: str = ""
    auto_create_room: int = 0
    room_base_name: str = ""
    room_base_id: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "scene": self.scene,
            "remark": self.remark,
            "auto_create_room": self.auto_create_room,
            "room_base_name": self.room_base_name,
            "room_base_id": self.room_base_id,
            "chat_id_list": list(self.chat_id_list),
            "qr_code": f"https://wework.qpic.cn/wwpic/sandbox/{self.config_id}/0",
            "state": self.state,
        }


@dataclass(slots=True)
class GroupChat:
    chat_id: str
    owner: str
    create_time: int
    members: list[dict[str, Any]] = field(default_factory=list)
    member_ids: set[str] = field(default_factory=set)
    version: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "name": f"sandbox group {self.chat_id}",
            "owner": self.owner,
            "create_time": self.create_time,
            "notice": "",
            "member_list": [dict(m) for m in self.members],
            "admin_list": [],
            "member_version": str(self.version),
        }


class WeCom:
    """State and operations of one sandboxed WeCom corp."""

    provider = "wecom"

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self.reset()

    def reset(self) -> None:
        self.customers: dict[str, str] = {}  # external_userid -> friend|not_friend|unknown
        self.received: dict[str, list[int]] = {}  # external_userid -> local date ordinals
        self.tasks: dict[str, GroupMsgTask] = {}
        self.join_ways: dict[str, JoinWay] = {}
        self.chats: dict[str, GroupChat] = {}

    def error_reply(self, err: ProviderError) -> Reply:
        return errcode_error_reply(err)

    def fault_reply(self, kind: str) -> Reply:
        return errcode_fault_reply(kind)

    # -- token ---------------------------------------------------------------------------

    def token(self, call: Call) -> Outcome:
        config, query = self._state.config, call.query
        require(bool(query.get("corpid")), 41002, "corpid missing")
        require(query.get("corpid") == config.wecom_corp_id, 40013, "invalid corpid")
        require(bool(query.get("corpsecret")), 41004, "corpsecret missing")
        require(query.get("corpsecret") == config.wecom_secret, 40001, "invalid credential")
        token, expires_in = self._state.tokens.issue(
            "wecom",
            f"{config.wecom_corp_id}/{config.wecom_secret}",
            config.token_ttl_s,
            reuse=True,
        )
        return Outcome(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}
        )

    def _authorize(self, call: Call) -> None:
        # WeCom answers 40014 for a token it does not know (WeChat OA says 40001).
        self._state.tokens.check("wecom", call.query.get("access_token"), invalid_code=40014)

    # -- mass message tasks --------------------------------------------------------------

    def add_msg_template(self, call: Call) -> Outcome:
        self._authorize(call)
        body = call.body
        require(
            body.get("chat_type", "single") == "single",
            40058,
            "invalid chat_type: the sandbox supports chat_type 'single' only",
        )
        ids: list[str] = typed(body.get("external_userid"), list, 40058, NOT_AN_ID_LIST)
        require(bool(ids) and all(isinstance(i, str) for i in ids), 40058, NOT_AN_ID_LIST)
        require(
            len(ids) <= MAX_RECIPIENTS,
            40058,
            f"invalid external_userid: at most {MAX_RECIPIENTS} per task (got {len(ids)})",
        )
        text, attachments = self._content(body)
        unique = list(dict.fromkeys(ids))
        customers = self.customers
        fail_list = [i for i in unique if customers.get(i) == "unknown"] if customers else []
        failed = set(fail_list)
        recipients = tuple(i for i in unique if i not in failed) if failed else tuple(unique)
        task = GroupMsgTask(
            msgid=f"msg{self._state.prefix}{self._state.next_id('wecom_msg', 1):012d}",
            sender=str(body.get("sender") or DEFAULT_SENDER),
            created_at=self._state.unix_now(),
            recipients=recipients,
            statuses=bytearray(len(recipients)),
            text=text,
            attachments=attachments,
        )
        self.tasks[task.msgid] = task
        if self._state.config.wecom_auto_confirm:
            self._confirm(task)
        payload = {"errcode": 0, "errmsg": "ok", "fail_list": fail_list, "msgid": task.msgid}
        excluded = {i: "unknown" for i in fail_list} or None
        return Outcome(payload, excluded=excluded, ref=task.msgid)

    def _content(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Any]]:
        text = body.get("text")
        attachments = body.get("attachments") or []
        require(
            isinstance(attachments, list) and len(attachments) <= MAX_ATTACHMENTS,
            40058,
            f"invalid attachments: a list of at most {MAX_ATTACHMENTS}",
        )
        has_text = isinstance(text, dict) and bool(text.get("content"))
        require(has_text or bool(attachments), 44004, "empty content: text or attachments needed")
        if has_text:
            assert isinstance(text, dict)
            size = len(str(text["content"]).encode("utf-8"))
            require(
                size <= MAX_TEXT_BYTES,
                40058,
                f"text.content exceed max length {MAX_TEXT_BYTES} ({size} bytes). invalid "
                "Request Parameter",
            )
        for index, attachment in enumerate(attachments):
            self._check_attachment(index, attachment)
        return (text if has_text else None), attachments

    @staticmethod
    def _check_attachment(index: int, attachment: Any) -> None:
        msgtype = attachment.get("msgtype") if isinstance(attachment, dict) else None
        require(
            msgtype in ATTACHMENT_FIELDS,
            40058,
            f"invalid attachments[{index}].msgtype: one of {sorted(ATTACHMENT_FIELDS)}",
        )
        inner = attachment.get(str(msgtype))
        require(isinstance(inner, dict), 40058, f"invalid attachments[{index}]: missing {msgtype}")
        missing = [f for f in ATTACHMENT_FIELDS[str(msgtype)] if not inner.get(f)]
        if msgtype == "image":  # an image needs one of the two
            missing = [] if len(missing) < 2 else missing
        require(
            not missing,
            40058,
            f"invalid attachments[{index}].{msgtype}: missing {', '.join(missing)}",
        )
        for (kind, name), limit in FIELD_MAX_BYTES.items():
            value = inner.get(name) if kind == msgtype else None
            require(
                value is None or len(str(value).encode("utf-8")) <= limit,
                40058,
                f"attachments.{kind}.{name} exceed max length {limit}. invalid Request Parameter",
            )

    def confirm(self, msgid: str, userid: str | None = None) -> dict[str, Any]:
        """The staff member confirms the task in the WeCom app (control API)."""
        task = self.tasks.get(msgid)
        if task is None or (userid is not None and userid != task.sender):
            owner = f" for sender {userid!r}" if userid is not None else ""
            raise LookupError(f"no WeCom mass message task {msgid!r}{owner}")
        if not task.confirmed and not task.cancelled:
            self._confirm(task)
        counts = {
            name: task.statuses.count(code)
            for name, code in (
                ("sent", SENT),
                ("not_friend", NOT_FRIEND),
                ("over_limit", OVER_LIMIT),
            )
        }
        return {"msgid": msgid, "userid": task.sender, "cancelled": task.cancelled, **counts}

    def _confirm(self, task: GroupMsgTask) -> None:
        today = self._state.local_now().date()
        first, limit = _limit_window(today, self._state.config.wecom_customer_limit)
        customers, received = self.customers, self.received
        for index, external_userid in enumerate(task.recipients):
            days = received.setdefault(external_userid, [])
            if customers and customers.get(external_userid) == "not_friend":
                task.statuses[index] = NOT_FRIEND
            elif sum(1 for day in days if day >= first) >= limit:
                task.statuses[index] = OVER_LIMIT
            else:
                task.statuses[index] = SENT
                days[:] = [d for d in days if d >= first - 31] + [today.toordinal()]
        task.send_time = self._state.unix_now()
        task.confirmed = True

    def _task(self, body: dict[str, Any]) -> GroupMsgTask:
        task = present(
            self.tasks.get(str(body.get("msgid", ""))),
            40058,
            f"invalid msgid: {body.get('msgid')!r}",
        )
        return task

    def get_groupmsg_send_result(self, call: Call) -> Outcome:
        self._authorize(call)
        task = self._task(call.body)
        userid = call.body.get("userid")
        require(isinstance(userid, str) and bool(userid), 40058, "invalid userid: userid missing")
        rows = [] if userid != task.sender else self._send_rows(task)
        page, next_cursor = _page(rows, call.body, default=500, maximum=1000)
        payload = {"errcode": 0, "errmsg": "ok", "send_list": page, "next_cursor": next_cursor}
        return Outcome(payload, ref=task.msgid)

    def _send_rows(self, task: GroupMsgTask) -> list[dict[str, Any]]:
        return [
            {
                "external_userid": external_userid,
                "userid": task.sender,
                "status": status,
                "send_time": task.send_time if status == SENT else 0,
            }
            for external_userid, status in zip(task.recipients, task.statuses, strict=True)
        ]

    def get_group_msg_result(self, call: Call) -> Outcome:
        """The older result API that ``wechatpy`` wraps (``get_group_msg_result``)."""
        self._authorize(call)
        task = self._task(call.body)
        payload = {
            "errcode": 0,
            "errmsg": "ok",
            "check_status": 1 if task.confirmed else 0,
            "detail_list": self._send_rows(task),
        }
        return Outcome(payload, ref=task.msgid)

    def get_groupmsg_task(self, call: Call) -> Outcome:
        self._authorize(call)
        task = self._task(call.body)
        row = {
            "userid": task.sender,
            "status": 2 if task.confirmed else 0,
            "send_time": task.send_time,
        }
        page, next_cursor = _page([row], call.body, default=500, maximum=1000)
        payload = {"errcode": 0, "errmsg": "ok", "task_list": page, "next_cursor": next_cursor}
        return Outcome(payload, ref=task.msgid)

    def get_groupmsg_list_v2(self, call: Call) -> Outcome:
        self._authorize(call)
        body = call.body
        require(
            body.get("chat_type") in ("single", "group"),
            40058,
            "invalid chat_type: single or group is required",
        )
        bad_range = "invalid start_time/end_time: unix seconds with start_time <= end_time"
        start = typed(body.get("start_time"), int, 40058, bad_range)
        end = typed(body.get("end_time"), int, 40058, bad_range)
        require(start <= end, 40058, bad_range)
        creator = body.get("creator")
        rows = [
            {
                "msgid": t.msgid,
                "creator": t.sender,
                "create_type": 0,
                "create_time": str(t.created_at),
                "text": t.text or {"content": ""},
                "attachments": t.attachments,
            }
            for t in self.tasks.values()
            if start <= t.created_at <= end and creator in (None, "", t.sender)
        ]
        page, next_cursor = _page(rows, body, default=50, maximum=100)
        payload = {"errcode": 0, "errmsg": "ok", "group_msg_list": page, "next_cursor": next_cursor}
        return Outcome(payload)

    def cancel_groupmsg_send(self, call: Call) -> Outcome:
        self._authorize(call)
        task = self._task(call.body)
        if not task.confirmed:
            task.cancelled = True
        return Outcome({"errcode": 0, "errmsg": "ok"}, ref=task.msgid)

    # -- join ways and group chats ---------------------------------------------------------

    def add_join_way(self, call: Call) -> Outcome:
        self._authorize(call)
        body = call.body
        bad_chats = f"invalid chat_id_list: 1..{MAX_JOIN_WAY_CHATS} group chat ids"
        chat_ids: list[str] = typed(body.get("chat_id_list"), list, 40058, bad_chats)
        state = body.get("state", "")
        require(body.get("scene") in (1, 2), 40058, "invalid scene: 1 (mini program) or 2 (QR)")
        require(
            0 < len(chat_ids) <= MAX_JOIN_WAY_CHATS
            and all(isinstance(c, str) and c for c in chat_ids),
            40058,
            bad_chats,
        )
        require(
            isinstance(state, str) and len(state) <= MAX_STATE_CHARS,
            40058,
            f"invalid state: at most {MAX_STATE_CHARS} characters",
        )
        serial = self._state.next_id("wecom_join_way", 1)
        config_id = hashlib.md5(f"{self._state.prefix}:{serial}".encode()).hexdigest()
        self.join_ways[config_id] = JoinWay(
            config_id=config_id,
            scene=int(body["scene"]),
            chat_id_list=list(chat_ids),
            state=str(state),
            remark=str(body.get("remark", "")),
            auto_create_room=int(body.get("auto_create_room", 0)),
            room_base_name=str(body.get("room_base_name", "")),
            room_base_id=int(body.get("room_base_id", 0)),
        )
        for chat_id in chat_ids:  # the sandbox creates groups it has not seen
            self._chat(chat_id)
        return Outcome({"errcode": 0, "errmsg": "ok", "config_id": config_id}, ref=config_id)

    def get_join_way(self, call: Call) -> Outcome:
        self._authorize(call)
        way = present(
            self.join_ways.get(str(call.body.get("config_id", ""))),
            40058,
            f"invalid config_id: {call.body.get('config_id')!r}",
        )
        return Outcome({"errcode": 0, "errmsg": "ok", "join_way": way.as_json()}, ref=way.config_id)

    def del_join_way(self, call: Call) -> Outcome:
        self._authorize(call)
        way = self.join_ways.pop(str(call.body.get("config_id", "")), None)
        require(way is not None, 40058, f"invalid config_id: {call.body.get('config_id')!r}")
        return Outcome({"errcode": 0, "errmsg": "ok"})

    def groupchat_get(self, call: Call) -> Outcome:
        self._authorize(call)
        require(bool(call.body.get("chat_id")), 40058, "invalid chat_id: chat_id missing")
        chat = present(
            self.chats.get(str(call.body.get("chat_id", ""))),
            40050,
            f"chat_id not exist: {call.body.get('chat_id')!r}",
        )
        return Outcome(
            {"errcode": 0, "errmsg": "ok", "group_chat": chat.as_json()}, ref=chat.chat_id
        )

    def groupchat_list(self, call: Call) -> Outcome:
        self._authorize(call)
        owners = (call.body.get("owner_filter") or {}).get("userid_list")
        rows = [
            {"chat_id": c.chat_id, "status": 0}
            for c in self.chats.values()
            if not owners or c.owner in owners
        ]
        page, next_cursor = _page(rows, call.body, default=100, maximum=1000)
        return Outcome(
            {"errcode": 0, "errmsg": "ok", "group_chat_list": page, "next_cursor": next_cursor}
        )

    def _chat(self, chat_id: str) -> GroupChat:
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = GroupChat(chat_id, DEFAULT_SENDER, self._state.unix_now())
            self.chats[chat_id] = chat
        return chat

    def join(
        self, external_userid: str, *, config_id: str | None = None, chat_id: str | None = None
    ) -> dict[str, Any]:
        """A customer joins a group by a join way's QR code, or a chat directly (control API)."""
        way = self.join_ways.get(config_id) if config_id else None
        if config_id and way is None:
            raise LookupError(f"no WeCom join way {config_id!r}")
        if way is not None:  # like WeCom: the first listed group that is not full
            chats = [self._chat(c) for c in way.chat_id_list]
            chat = next((c for c in chats if len(c.members) < MAX_CHAT_MEMBERS), chats[-1])
        elif chat_id:
            chat = self._chat(chat_id)
        else:
            raise LookupError("a join needs config_id or chat_id")
        state = way.state if way is not None else ""
        if external_userid in chat.member_ids:
            return {"chat_id": chat.chat_id, "joined": False, "state": state}
        chat.members.append(
            {
                "userid": external_userid,
                "type": 2,
                "join_time": self._state.unix_now(),
                "join_scene": JOIN_BY_QR,
                "group_nickname": "",
                "name": external_userid,
                "state": state,
            }
        )
        chat.member_ids.add(external_userid)
        chat.version += 1
        self._state.outbox.put(
            Pending(
                "wecom",
                "change_external_chat",
                chat.chat_id,
                data=(("member", external_userid), ("version", str(chat.version))),
            )
        )
        return {"chat_id": chat.chat_id, "joined": True, "state": state}

    def set_customers(self, states: dict[str, str]) -> None:
        for external_userid, customer_state in states.items():
            if customer_state not in CUSTOMER_STATES:
                raise ValueError(
                    f"wecom customer {external_userid!r}: {customer_state!r} is "
                    f"not one of {CUSTOMER_STATES}"
                )
        self.customers.update(states)

    # -- pushes ----------------------------------------------------------------------------

    def settle(self, item: Pending) -> Delivery | None:
        config = self._state.config
        if not config.wecom_callback_url:
            return None
        data = dict(item.data)
        version = int(data["version"])
        fields: dict[str, PushValue] = {
            "ToUserName": config.wecom_corp_id,
            "FromUserName": "sys",
            "CreateTime": self._state.unix_now(),
            "MsgType": "event",
            "Event": "change_external_chat",
            "ChatId": item.key,
            "ChangeType": "update",
            "UpdateDetail": "add_member",
            "JoinScene": JOIN_BY_QR,
            "QuitScene": 0,
            "MemChangeCnt": 1,
            "MemChangeList": [data["member"]],
            "LastMemVer": str(version - 1),
            "CurMemVer": str(version),
        }
        url, content = wecom_push(
            config.wecom_callback_url,
            push_xml(fields),
            token=config.wecom_token,
            aes_key=config.wecom_aes_key,
            corp_id=config.wecom_corp_id,
        )
        return Delivery("wecom", item.kind, url, content, {"Content-Type": "text/xml"})


def _limit_window(today: date, setting: str) -> tuple[int, int]:
    """The first day (ordinal) of the admin's counting period that holds ``today``, and how
    many group messages a customer may receive in it."""
    if setting == "day":
        return today.toordinal(), 1
    if setting == "week":
        return today.toordinal() - today.weekday(), 7  # natural weeks start on Monday
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    return today.replace(day=1).toordinal(), days_in_month


def _page(
    rows: list[Any], body: dict[str, Any], *, default: int, maximum: int
) -> tuple[list[Any], str]:
    """WeCom cursor paging: ``cursor`` is an opaque string (here: the offset)."""
    limit = body.get("limit") or default
    require(isinstance(limit, int) and 0 < limit <= maximum, 40058, f"invalid limit: 1..{maximum}")
    cursor = str(body.get("cursor") or "0")
    require(cursor.isdigit(), 40058, f"invalid cursor: {cursor!r}")
    start = int(cursor)
    end = start + int(limit)
    return rows[start:end], (str(end) if end < len(rows) else "")


CGI = "/cgi-bin"
EC = f"{CGI}/externalcontact"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("wecom", "GET", f"{CGI}/gettoken", WeCom.token, body_kind="query"),
    Endpoint(
        "wecom",
        "POST",
        f"{EC}/add_msg_template",
        WeCom.add_msg_template,
        recipients="external_userid",
    ),
    Endpoint("wecom", "POST", f"{EC}/get_groupmsg_send_result", WeCom.get_groupmsg_send_result),
    Endpoint("wecom", "POST", f"{EC}/get_group_msg_result", WeCom.get_group_msg_result),
    Endpoint("wecom", "POST", f"{EC}/get_groupmsg_task", WeCom.get_groupmsg_task),
    Endpoint("wecom", "POST", f"{EC}/get_groupmsg_list_v2", WeCom.get_groupmsg_list_v2),
    Endpoint("wecom", "POST", f"{EC}/cancel_groupmsg_send", WeCom.cancel_groupmsg_send),
    Endpoint("wecom", "POST", f"{EC}/groupchat/add_join_way", WeCom.add_join_way),
    Endpoint("wecom", "POST", f"{EC}/groupchat/get_join_way", WeCom.get_join_way),
    Endpoint("wecom", "POST", f"{EC}/groupchat/del_join_way", WeCom.del_join_way),
    Endpoint("wecom", "POST", f"{EC}/groupchat/get", WeCom.groupchat_get),
    Endpoint("wecom", "POST", f"{EC}/groupchat/list", WeCom.groupchat_list),
)
