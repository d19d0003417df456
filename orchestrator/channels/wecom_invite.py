"""``send: wecom_group_invite``: invite customers into a WeCom group through their staff contact.

The invite is a group *join way* (``externalcontact/groupchat/add_join_way``, scene 2 = QR
code), created once per (group, content version) and cached in Redis; its ``state`` tags
every join it brings (``joins``). It is delivered as a WeCom mass message
(``externalcontact/add_msg_template``, ``chat_type`` single): the rendered text plus a link
attachment showing the QR code. WeCom sends a mass message on behalf of one staff member, so
a batch is split by ``Recipient.wecom_sender`` (else ``RECALL_WECOM_DEFAULT_SENDER``): one
call per sender. A task carries one text for all its customers: a shared batch must hold one
text (``check_one_text``, before any call); a ``per_recipient`` batch (each customer's own
text: user data, a per-touch link) makes one task per customer.

The staff member still has to confirm the task in the WeCom app, so ``sent`` here means
"task accepted" (``provider_message_id`` = the task's ``msgid``); ``poll`` reads the
per-customer status later (``get_groupmsg_send_result``) and ``cancel`` withdraws a task
nobody confirmed. ``add_msg_template`` has no idempotency key: each task's call is written
to the ``SendLedger`` and a retried batch never creates a second task. ``reconcile`` looks
for each task in ``get_groupmsg_list_v2`` (the sender's tasks around the batch's time) by the
reference carried in its link (the batch's; in a ``per_recipient`` batch the batch's and the
touch's), and never sends: a task it does not find is ``absent`` (the engine may then create
it), whatever the ledger said, since the ledger is only a cache; but when the sender has more
tasks in the window than it reads, one not found among them is in doubt, never ``absent``.

The link card under the text is the step's ``card:`` (``link_title``, ``link_desc``,
``link_picurl``), written for the recipients, who read Chinese; unset fields default to
邀请你加入群聊 (or the template's ``title``), 点击卡片，扫码即可入群 and the group's QR code.
WeCom's limits are checked before any call (text ≤ 4,000 bytes, card title ≤ 128, description ≤ 512,
URLs ≤ 2,048): one text goes to every customer of a task, so a text over the limit is the
step's fault (``ChannelConfig``), never a per-customer failure.

Options: ``chat_id`` (the group; required until Settings maps group names), ``link_title``,
``link_desc``, ``link_picurl``, ``landing_url`` (the page the link opens; default the QR
code image).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple
from urllib.parse import urlencode, urlsplit, urlunsplit

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
from orchestrator.channels.fanout import Outcome, conclude
from orchestrator.channels.ledger import Entry, SendLedger
from orchestrator.channels.tokens import TokenCache, fingerprint
from orchestrator.channels.weixin import RecallWeComClient
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

PROVIDER = "wecom"
EC = "externalcontact"
JOIN_WAY_TTL_S = 30 * 86_400  # join ways do not expire; re-check them monthly
MAX_STATE_CHARS = 30
DEFAULT_CARD_TITLE = "邀请你加入群聊"
DEFAULT_CARD_DESC = "点击卡片，扫码即可入群"
MAX_TEXT_BYTES = 4000
CARD_LIMITS = {"title": 128, "desc": 512, "url": 2048, "picurl": 2048}  # UTF-8 bytes
REF_PARAM = "recall_ref"
LIST_PAGE = 100
MAX_LIST_PAGES = 100  # reconcile reads at most 10,000 of a sender's tasks in the window
RESULT_PAGE = 1000
RECONCILE_BEFORE = timedelta(hours=1)  # business-clock slack around the batch's time
RECONCILE_AFTER = timedelta(days=7)

DeliveryStatus = Literal["waiting", "delivered", "failed"]
# get_groupmsg_send_result status -> (our status, failure reason)
SEND_RESULT: dict[int, tuple[DeliveryStatus, str | None]] = {
    0: ("waiting", None),  # the staff member has not confirmed (sent) it yet
    1: ("delivered", None),
    2: ("failed", "not_friend"),
    # The customer already received as many group messages as the admin allows (by default
    # as many a month as it has days; or 7 a week, or 1 a day).
    3: ("failed", "wecom_customer_limit"),
}


class _Task(NamedTuple):
    """One ``add_msg_template`` call of a batch."""

    field: str  # its entry in the batch's ledger
    sender: str
    ref: str  # carried in the card's URL: how ``reconcile`` finds the task
    messages: list[Message]


class WecomTask(NamedTuple):
    """A mass message task: its ``msgid`` and the staff member who sends it."""

    msgid: str
    sender: str


@dataclass(frozen=True)
class WecomDelivery:
    """One customer's status in a task (``poll``)."""

    msgid: str
    sender: str
    external_userid: str
    status: DeliveryStatus
    reason: str | None
    send_time: datetime | None


class GroupJoin(NamedTuple):
    """A customer in a group chat: who, through which join way ``state``, when."""

    external_userid: str
    state: str
    join_time: datetime


@dataclass(frozen=True)
class JoinWay:
    config_id: str
    qr_code: str
    state: str


class WeComInviteChannel:
    """The ``wecom_group_invite`` channel. Build once per process and reuse it."""

    name: ClassVar[str] = "wecom_group_invite"
    max_batch: ClassVar[int] = 10_000
    one_text: ClassVar[bool] = True  # a task sends one text to all its customers

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        key_prefix: str = "recall",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        list_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self._corp_id = settings.wecom_corp_id
        self._list_pages = list_pages
        self._default_sender = settings.wecom_default_sender
        self._redis = redis
        self._key_prefix = key_prefix
        self._ledger = SendLedger(redis, prefix=key_prefix, channel=self.name)
        self._clients = PerThread(
            lambda: RecallWeComClient(
                settings.wecom_corp_id,
                settings.wecom_secret.get_secret_value(),
                redis=redis,
                api_base=settings.wecom_api_base,
                key_prefix=key_prefix,
                timeout=timeout,
            )
        )
        self.client()  # validates the base URL now, not at the first send

    def __repr__(self) -> str:
        return f"WeComInviteChannel(corp_id={self._corp_id!r}, secret=***)"

    def client(self) -> RecallWeComClient:
        """This thread's client."""
        return self._clients.get()

    # -- the port ---------------------------------------------------------------------------

    def send(self, request: SendRequest) -> list[TouchResult]:
        """One ``add_msg_template`` per task; recorded tasks are not called again."""
        check_batch(request, channel=self.name, max_batch=self.max_batch)
        check_one_text(request, channel=self.name)
        for message in {m.text: m for m in request.messages}.values():  # before any call
            _check_limits(request, message.text, _card(request, message, qr_code="", ref=""))
        tasks = _tasks(request, self._default_sender)
        outcomes = _no_contact(request)
        if tasks:
            join_way = self.join_way(request)
            recorded = self._ledger.load(request.batch_id)
            for task in tasks:
                entry = recorded.get(task.field)
                if entry is not None:
                    outcomes += _from_entry(entry, task.messages)
                else:
                    outcomes += self._send_task(request, join_way, task)
        return conclude(request, outcomes, provider=PROVIDER)

    def reconcile(self, request: SendRequest) -> list[TouchResult]:
        """What became of each task, from the ledger or ``get_groupmsg_list_v2``."""
        recorded = self._ledger.load(request.batch_id)
        outcomes = _no_contact(request)
        looking: list[_Task] = []
        for task in _tasks(request, self._default_sender):
            entry = recorded.get(task.field)
            if entry is not None and not entry.pending:
                outcomes += _from_entry(entry, task.messages)
            else:
                looking.append(task)
        found = self._find_tasks(looking, request.created_at)
        for task in looking:
            msgid = found.get((task.sender, task.ref))
            if msgid is None:
                self._ledger.forget(request.batch_id, [task.field])
                outcomes += [Outcome(m, result=_absent(m)) for m in task.messages]
                continue
            entry_data: dict[str, Any] = {"msgid": msgid, "fail_list": []}
            self._ledger.record(request.batch_id, {task.field: entry_data})
            outcomes += _task_outcomes(entry_data, task.messages)
        return [o.result or unknown(o.message) for o in _in_order(request, outcomes)]

    # -- sending ----------------------------------------------------------------------------

    def _send_task(self, request: SendRequest, join_way: JoinWay, task: _Task) -> list[Outcome]:
        payload = _task_payload(request, join_way, task)
        messages = task.messages
        self._ledger.mark_pending(request.batch_id, [task.field])
        client = self.client()
        try:
            answer = client.call(
                f"POST {EC}/add_msg_template",
                lambda: client.post(f"{EC}/add_msg_template", data=payload),
            )
        except ChannelUnknown:
            return [Outcome(m, result=unknown(m)) for m in messages]  # stays pending
        except ChannelRecipient as exc:  # e.g. the sender is not a valid staff member
            refused: dict[str, Any] = {"reason": wechat_reason(exc)}
            self._ledger.record(request.batch_id, {task.field: refused})
            return _task_outcomes(refused, messages)
        except ChannelError as exc:
            self._ledger.forget(request.batch_id, [task.field])
            return [Outcome(m, error=exc) for m in messages]
        accepted: dict[str, Any] = {
            "msgid": str(answer["msgid"]),
            "fail_list": list(answer.get("fail_list") or []),
        }
        self._ledger.record(request.batch_id, {task.field: accepted})
        return _task_outcomes(accepted, messages)

    def join_way(self, request: SendRequest) -> JoinWay:
        """The group's join way for this content version, created once (under a Redis lock)."""
        chat_id = _chat_id(request)
        state = join_state(request.journey_id, request.step_id, request.content_version)
        key = (
            f"{self._key_prefix}:joinway:wecom:{self._corp_id}:"
            f"{fingerprint(self.client().base_url)}:{chat_id}:{request.content_version}"
        )
        cache = TokenCache(
            redis=self._redis,
            key=key,
            fetch=lambda: (self._create_join_way(chat_id, state), JOIN_WAY_TTL_S),
            provider=PROVIDER,
        )
        return JoinWay(**json.loads(cache.get()))

    def _create_join_way(self, chat_id: str, state: str) -> str:
        client = self.client()
        body = {"scene": 2, "chat_id_list": [chat_id], "state": state, "remark": "recall"}
        try:
            added = client.call(
                f"POST {EC}/groupchat/add_join_way",
                lambda: client.post(f"{EC}/groupchat/add_join_way", data=body),
            )
            config_id = str(added["config_id"])
            got = client.call(
                f"POST {EC}/groupchat/get_join_way",
                lambda: client.post(f"{EC}/groupchat/get_join_way", data={"config_id": config_id}),
            )
        except ChannelUnknown as exc:
            # A join way that may exist is only an unused QR code: creating another is safe.
            raise ChannelRetryable(str(exc), provider=PROVIDER) from exc
        way = JoinWay(config_id=config_id, qr_code=str(got["join_way"]["qr_code"]), state=state)
        return json.dumps(asdict(way))

    # -- asynchronous results ---------------------------------------------------------------

    def poll(self, tasks: Iterable[WecomTask]) -> list[WecomDelivery]:
        """Each customer's status in each task (``get_groupmsg_send_result``, all pages)."""
        client = self.client()
        deliveries: list[WecomDelivery] = []
        for task in tasks:
            for row in self._pages(
                client,
                f"{EC}/get_groupmsg_send_result",
                {"msgid": task.msgid, "userid": task.sender, "limit": RESULT_PAGE},
                "send_list",
            ):
                status, reason = SEND_RESULT.get(int(row["status"]), ("waiting", None))
                sent_at = int(row.get("send_time") or 0)
                deliveries.append(
                    WecomDelivery(
                        msgid=task.msgid,
                        sender=task.sender,
                        external_userid=str(row["external_userid"]),
                        status=status,
                        reason=reason,
                        send_time=datetime.fromtimestamp(sent_at, UTC) if sent_at else None,
                    )
                )
        return deliveries

    def joins(self, chat_id: str) -> list[GroupJoin]:
        """Customers (external members) of a group chat, with the join way state they used."""
        client = self.client()
        answer = client.call(
            f"POST {EC}/groupchat/get",
            lambda: client.post(f"{EC}/groupchat/get", data={"chat_id": chat_id, "need_name": 0}),
        )
        members = answer.get("group_chat", {}).get("member_list", [])
        return [
            GroupJoin(
                external_userid=str(m["userid"]),
                state=str(m.get("state") or ""),
                join_time=datetime.fromtimestamp(int(m.get("join_time") or 0), UTC),
            )
            for m in members
            if int(m.get("type", 0)) == 2  # 2 = external contact (a customer)
        ]

    def cancel(self, task: WecomTask) -> None:
        """Withdraw a task its staff member has not confirmed (``confirm_timeout``)."""
        client = self.client()
        client.call(
            f"POST {EC}/cancel_groupmsg_send",
            lambda: client.post(f"{EC}/cancel_groupmsg_send", data={"msgid": task.msgid}),
        )

    # -- reconciliation ---------------------------------------------------------------------

    def _find_tasks(
        self, tasks: list[_Task], created_at: datetime | None
    ) -> dict[tuple[str, str], str]:
        """The msgid of each task found, by its (sender, ref): one scan of each sender's tasks.
        The sender is part of the key because every sender's task of a shared batch carries the
        batch's one ref: one sender's task found says nothing of another's."""
        wanted: dict[str, set[str]] = {}
        for task in tasks:
            wanted.setdefault(task.sender, set()).add(task.ref)
        found: dict[tuple[str, str], str] = {}
        for sender, refs in wanted.items():
            found.update(((sender, ref), msgid)
                         for ref, msgid in self._scan(sender, refs, created_at).items())
        return found

    def _scan(self, sender: str, refs: set[str], created_at: datetime | None) -> dict[str, str]:
        """``sender``'s tasks around ``created_at`` that carry one of ``refs``. Reads only."""
        around = created_at or datetime.now(UTC)
        body = {
            "chat_type": "single",
            "start_time": int((around - RECONCILE_BEFORE).timestamp()),
            "end_time": int((around + RECONCILE_AFTER).timestamp()),
            "creator": sender,
            "filter_type": 2,
            "limit": LIST_PAGE,
        }
        found: dict[str, str] = {}
        try:
            for item in self._pages(
                self.client(),
                f"{EC}/get_groupmsg_list_v2",
                body,
                "group_msg_list",
                max_pages=self._list_pages,
                cut_off=True,
            ):
                if item.get("creator") not in (None, "", sender):
                    continue  # another staff member's task: not one of these
                text = json.dumps(item, ensure_ascii=False)
                found.update((ref, str(item["msgid"])) for ref in refs if ref in text)
                if len(found) == len(refs):
                    break
        except ChannelUnknown as exc:  # a read with no answer: safe to ask again
            raise ChannelRetryable(str(exc), provider=PROVIDER) from exc
        except _ListCutOff:
            # A task not among the tasks read may still be among those not read: in doubt,
            # never "absent" (that would make it a second time).
            raise ChannelRetryable(
                f"{sender!r} has more than {self._list_pages * LIST_PAGE} tasks around the "
                f"batch; {len(refs) - len(found)} of the tasks looked for are not among them, "
                "so whether they were made is unknown",
                provider=PROVIDER,
            ) from None
        return found

    @staticmethod
    def _pages(
        client: RecallWeComClient,
        path: str,
        body: Mapping[str, Any],
        rows: str,
        *,
        max_pages: int = 1000,
        cut_off: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Rows of a cursor-paged WeCom list; ``cut_off``: raise ``_ListCutOff`` when
        ``max_pages`` were read and more remain."""
        cursor = ""
        for _ in range(max_pages):
            page_body = {**body, "cursor": cursor}
            answer = client.call(f"POST {path}", partial(client.post, path, data=page_body))
            yield from answer.get(rows, [])
            cursor = str(answer.get("next_cursor") or "")
            if not cursor:
                return
        if cut_off:
            raise _ListCutOff(path)


class _ListCutOff(Exception):
    """A paged list was read up to its bound and has more pages."""


def batch_ref(batch_id: str) -> str:
    """A short, URL-safe reference to a batch, carried in the invite link for reconciliation."""
    return "rb" + hashlib.sha1(batch_id.encode()).hexdigest()[:16]


def join_state(journey_id: str, step_id: str, content_version: str) -> str:
    """The join way ``state`` (≤ 30 chars) for a journey step's content version."""
    digest = hashlib.sha1(f"{journey_id}\x00{step_id}\x00{content_version}".encode())
    return ("rj" + digest.hexdigest())[:MAX_STATE_CHARS]


def _chat_id(request: SendRequest) -> str:
    chat_id = request.options.get("chat_id")
    if not chat_id:
        raise ChannelConfig(
            f"wecom_group_invite step {request.step_id!r} of {request.journey_id!r} names no "
            "group: set options.chat_id to the WeCom group chat id",
            provider=PROVIDER,
        )
    return chat_id


def _field(sender: str) -> str:
    return f"sender:{sender}"


def _tasks(request: SendRequest, default_sender: str) -> list[_Task]:
    """The batch's tasks: one per sender, or in a ``per_recipient`` batch one per customer."""
    groups = _by_sender(request, default_sender)
    if not per_recipient(request):
        ref = batch_ref(request.batch_id)
        return [_Task(_field(s), s, ref, messages) for s, messages in groups.items()]
    return [
        _Task(f"{_field(s)}:touch:{m.touch_id}", s,
              batch_ref(f"{request.batch_id}:{m.touch_id}"), [m])
        for s, messages in groups.items()
        for m in messages
    ]


def _by_sender(request: SendRequest, default_sender: str) -> dict[str, list[Message]]:
    groups: dict[str, list[Message]] = {}
    for message in request.messages:
        if message.recipient.external_userid:
            sender = message.recipient.wecom_sender or default_sender
            groups.setdefault(sender, []).append(message)
    return groups


def _no_contact(request: SendRequest) -> list[Outcome]:
    return [
        Outcome(m, result=failed(m, "no_external_userid"))
        for m in request.messages
        if not m.recipient.external_userid
    ]


def _task_payload(request: SendRequest, join_way: JoinWay, task: _Task) -> dict[str, Any]:
    """One text for every customer of the task (all its messages say the same)."""
    first = task.messages[0]
    link = _card(request, first, qr_code=join_way.qr_code, ref=task.ref)
    _check_limits(request, first.text, link)
    return {
        "chat_type": "single",
        "external_userid": list(
            dict.fromkeys(m.recipient.external_userid for m in task.messages)
        ),
        "sender": task.sender,
        "text": {"content": first.text},
        "attachments": [{"msgtype": "link", "link": link}],
    }


def _card(request: SendRequest, message: Message, *, qr_code: str, ref: str) -> dict[str, str]:
    """The link card: the step's ``card:``, else Chinese defaults and the group's QR code."""
    options = request.options
    landing = options.get("landing_url") or qr_code
    return {
        "title": options.get("link_title") or message.title or DEFAULT_CARD_TITLE,
        "picurl": options.get("link_picurl") or qr_code,
        "desc": options.get("link_desc") or DEFAULT_CARD_DESC,
        "url": _with_query(landing, {REF_PARAM: ref or batch_ref(request.batch_id)}),
    }


def _check_limits(request: SendRequest, text: str, link: Mapping[str, str]) -> None:
    sizes = {"text": (len(text.encode("utf-8")), MAX_TEXT_BYTES)}
    sizes.update((f"card {k}", (len(link[k].encode("utf-8")), n)) for k, n in CARD_LIMITS.items())
    for what, (size, limit) in sizes.items():
        if size > limit:
            raise ChannelConfig(
                f"wecom_group_invite step {request.step_id!r} of {request.journey_id!r}: the "
                f"{what} is {size:,} bytes in UTF-8; WeCom takes at most {limit:,}: shorten it",
                provider=PROVIDER,
            )


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def _task_outcomes(task: Mapping[str, Any], messages: list[Message]) -> list[Outcome]:
    """Accepted task: sent (``msgid``) except the ``fail_list``; refused: failed with reason."""
    if "reason" in task:
        return [Outcome(m, result=failed(m, str(task["reason"]))) for m in messages]
    refused = set(task.get("fail_list") or [])
    return [
        Outcome(m, result=failed(m, "not_friend"))
        if m.recipient.external_userid in refused
        else Outcome(
            m,
            result=TouchResult(
                touch_id=m.touch_id, status="sent", provider_message_id=str(task["msgid"])
            ),
        )
        for m in messages
    ]


def _absent(message: Message) -> TouchResult:
    return TouchResult(touch_id=message.touch_id, status="absent", reason="not_found")


def _from_entry(entry: Entry, messages: list[Message]) -> list[Outcome]:
    """A sender's task from the ledger; pending = an earlier call with no answer."""
    if entry.pending:
        return [Outcome(m, result=unknown(m)) for m in messages]
    return _task_outcomes(entry.data, messages)


def _in_order(request: SendRequest, outcomes: list[Outcome]) -> list[Outcome]:
    by_touch = {o.message.touch_id: o for o in outcomes}
    return [by_touch[m.touch_id] for m in request.messages]
