"""Logs hold no phone numbers, OpenIDs or message texts in clear; SQL errors no values."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError
from twilio.rest import Client as TwilioClient

from orchestrator.api.app import create_app
from orchestrator.api.server import ApiHandle
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.logs import configure_logging, redact
from orchestrator.sandbox.server import run_in_thread
from orchestrator.store.models import User
from tests.support import redis_db_url
from tests.tracking.seed import T0

USERS = User.__table__  # type: ignore[attr-defined]
PHONE = "+8613912345678"
OPENID = "oLVPpjqs9BhvzwPj5A-vTYAX3GLc"  # the shape of a real OpenID (28 characters)


def test_sql_errors_carry_no_bound_values(db_engine: Engine) -> None:
    row = {"user_id": "u1", "phone": PHONE, "openid": OPENID, "attributes": {},
           "erased": False}
    with db_engine.begin() as conn:
        conn.execute(insert(USERS).values(**row))
    with pytest.raises(IntegrityError) as caught, db_engine.begin() as conn:
        conn.execute(insert(USERS).values(**row))
    text = str(caught.value)
    assert "hidden due to hide_parameters=True" in text
    assert PHONE not in text and OPENID not in text


@pytest.fixture
def access_logged(tmp_path: object, sqlite_engine: Engine) -> Iterator[str]:
    """The API under uvicorn with its access log on, propagating to the root logger."""
    import socket
    import threading

    settings = Settings(_env_file=None, redis_url=redis_db_url(), wechat_token="wt",
                        state_dir=tmp_path / "state",  # type: ignore[operator]
                        journeys_dir=tmp_path / "journeys")  # type: ignore[operator]
    app = create_app(settings, engine=sqlite_engine, clock=ManualClock(T0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=True,
                                           log_level="info", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    with ApiHandle(server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}") as handle:
        yield handle.base_url


def test_the_access_log_masks_openids(access_logged: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    import hashlib

    at, nonce = str(int(time.time())), secrets.token_hex(4)
    signature = hashlib.sha1("".join(sorted(["wt", at, nonce])).encode()).hexdigest()
    xml = (f"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[{OPENID}]]>"
           "</FromUserName><CreateTime>1772416800</CreateTime><MsgType><![CDATA[event]]>"
           "</MsgType><Event><![CDATA[subscribe]]></Event></xml>")
    with caplog.at_level(logging.INFO):
        answer = httpx.post(f"{access_logged}/v1/callbacks/wechat", content=xml.encode(),
                            params={"signature": signature, "timestamp": at, "nonce": nonce,
                                    "openid": OPENID}, trust_env=False)
        assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while "callbacks/wechat" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)  # uvicorn writes the access line after the response
    assert "/v1/callbacks/wechat?" in caplog.text
    assert OPENID not in caplog.text
    assert "openid=oLVP***" in caplog.text


def test_the_twilio_sdk_does_not_log_numbers(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging()
    with run_in_thread() as sandbox, caplog.at_level(logging.DEBUG):
        client = TwilioClient("AC00000000000000000000000000000000", "sandbox-auth-token")
        client.api.base_url, client.edge, client.region = sandbox.base_url, None, None
        client.messages.create(to=PHONE, from_="+15005550006", body="我们想你了")
        client.messages.list(to=PHONE, limit=5)
    assert "13912345678" not in caplog.text and "我们想你了" not in caplog.text


def test_our_own_log_lines_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging()
    log = logging.getLogger("orchestrator.engine.delivery")
    with caplog.at_level(logging.INFO):
        log.error("touch %s not sent: %s", 7,
                  f"21211 The 'To' number {PHONE} is not valid; payload {{'text': '小明你好'}}")
        log.warning("reply from 138-0013-8000 to %s", OPENID)
        try:
            raise ValueError(f"bad recipient {PHONE}")
        except ValueError:
            log.exception("batch b1 failed")
    assert PHONE not in caplog.text and "138-0013-8000" not in caplog.text
    assert OPENID not in caplog.text and "小明你好" not in caplog.text
    assert "touch 7 not sent: 21211 The 'To' number +86*******5678" in caplog.text


@pytest.mark.parametrize(("text", "masked"), [
    ("To=%2B8613800138000&Body=hello", "To=**********8000&Body=[masked 5 chars]"),
    ('{"touser": ["o1", "o2"], "msgtype": "text"}',
     '{"touser": ["***", "***"], "msgtype": "text"}'),
    ("<xml><FromUserName><![CDATA[o-x]]></FromUserName><Content><![CDATA[TD]]></Content>",
     "<xml><FromUserName>***</FromUserName><Content>[masked 2 chars]</Content>"),
    ("GET /cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s3cr3t",
     "GET /cgi-bin/token?grant_type=client_credential&appid=wx1&secret=***"),
    ("touch 12 batch wa-1772416800000 at 1772416800 SM0123456789abcdef13800138000",
     "touch 12 batch wa-1772416800000 at 1772416800 SM0123456789abcdef13800138000"),
])
def test_redact(text: str, masked: str) -> None:
    assert redact(text) == masked


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["13", "15", "18", "19"]),
       st.integers(0, 10**9 - 1), st.sampled_from(["", "+86", "86", "+86 "]),
       st.text(max_size=30))
def test_a_mobile_number_never_survives(before: str, prefix: str, rest: int, country: str,
                                        after: str) -> None:
    number = f"{country}{prefix}{rest:09d}"
    text = f"{before} {number} {after}"
    assert f"{prefix}{rest:09d}" not in redact(text)
