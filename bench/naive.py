"""The naive baseline: one Celery task per touch, as the obvious app would be written.

Each task makes one provider call with ``httpx`` to the same sandbox and writes its result
with one ``UPDATE``: an SMS is one ``POST Messages.json``; an article touch one WeChat
template message (the per-recipient call), an invite touch one WeCom ``add_msg_template``
with its one contact. Same Celery settings as Recall's workers (``acks_late``,
``reject_on_worker_lost``, prefetch 1, JSON), same broker and database servers, same
``--concurrency``. What it does *not* do, to its advantage: no consent, quiet hours, caps,
rendering or short links (the text comes in the task), no claim or lease, no look-up
before a resend — so it is not exactly-once either.

Run as a worker: ``celery -A naive worker`` from ``bench/`` with ``NAIVE_DATABASE_URL``,
``NAIVE_BROKER_URL``, ``NAIVE_SANDBOX`` and ``NAIVE_QUEUE`` set (``bench_touches.py`` does).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import sqlalchemy as sa
from celery import Celery
from celery.signals import worker_process_init

TWILIO_SID = "AC00000000000000000000000000000000"
TWILIO_TOKEN = "sandbox-auth-token"  # the sandbox's placeholder credentials
TWILIO_FROM = "+15005550006"
WECHAT = {"appid": "wx-sandbox-appid", "secret": "sandbox-secret"}
WECOM = {"corpid": "ww-sandbox-corp", "corpsecret": "sandbox-secret"}
TABLE = """CREATE TABLE IF NOT EXISTS naive_touches (
    id bigint PRIMARY KEY, channel text NOT NULL, address text NOT NULL, body text NOT NULL,
    sender text, status text NOT NULL DEFAULT 'scheduled', provider_ref text,
    sent_at timestamptz)"""

app = Celery("naive")
app.conf.update(
    broker_url=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/12"),
    task_default_queue=os.environ.get("NAIVE_QUEUE", "naive"),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class _Process:
    """What each worker child makes once after fork: a database engine, an HTTP client."""

    engine: sa.Engine | None = None
    http: httpx.Client | None = None
    tokens: dict[str, str] = {}

    def reset(self, **_: Any) -> None:
        url = os.environ["NAIVE_DATABASE_URL"].replace("postgresql://",
                                                       "postgresql+psycopg://", 1)
        self.engine = sa.create_engine(url)
        self.http = httpx.Client(base_url=os.environ["NAIVE_SANDBOX"], trust_env=False,
                                 timeout=20)
        self.tokens = {}


_proc = _Process()
worker_process_init.connect(_proc.reset)


def _record(touch_id: int, ref: str) -> None:
    assert _proc.engine is not None
    with _proc.engine.begin() as conn:
        conn.execute(sa.text("UPDATE naive_touches SET status = 'sent', provider_ref = :ref, "
                             "sent_at = now() WHERE id = :id"), {"id": touch_id, "ref": ref})


def _token(provider: str) -> str:
    assert _proc.http is not None
    if provider not in _proc.tokens:
        if provider == "wechat":
            answer = _proc.http.get("/cgi-bin/token", params={
                "grant_type": "client_credential", **WECHAT}).json()
        else:
            answer = _proc.http.get("/cgi-bin/gettoken", params=WECOM).json()
        _proc.tokens[provider] = answer["access_token"]
    return _proc.tokens[provider]


def _post_json(provider: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    assert _proc.http is not None
    for _ in range(3):  # a token superseded by another process is fetched again
        answer: dict[str, Any] = _proc.http.post(
            path, params={"access_token": _token(provider)}, json=body).json()
        if answer.get("errcode") not in (40001, 40014, 42001):
            break
        _proc.tokens.pop(provider, None)
    if answer.get("errcode"):
        raise RuntimeError(f"{path}: {answer}")
    return answer


@app.task(name="naive.sms")
def sms(touch_id: int, to: str, body: str) -> None:
    assert _proc.http is not None
    answer = _proc.http.post(f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                             auth=(TWILIO_SID, TWILIO_TOKEN),
                             data={"To": to, "From": TWILIO_FROM, "Body": body})
    answer.raise_for_status()
    _record(touch_id, answer.json()["sid"])


@app.task(name="naive.article")
def article(touch_id: int, openid: str, title: str) -> None:
    answer = _post_json("wechat", "/cgi-bin/message/template/send", {
        "touser": openid, "template_id": "recall-touch",
        "url": "https://m.example.com/a", "data": {"first": {"value": title}}})
    _record(touch_id, str(answer["msgid"]))


@app.task(name="naive.invite")
def invite(touch_id: int, external_userid: str, text: str, sender: str) -> None:
    answer = _post_json("wecom", "/cgi-bin/externalcontact/add_msg_template", {
        "chat_type": "single", "external_userid": [external_userid], "sender": sender,
        "text": {"content": text}})
    _record(touch_id, str(answer["msgid"]))
