"""The provider error tables, row by row, and the transport rule (sent or not)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from orchestrator.channels.errors import (
    TWILIO_CODES,
    WECHAT_CODES,
    WECOM_CODES,
    Verdict,
    classify_twilio,
    classify_wechat,
    to_channel_error,
    transport_error,
    wechat_error,
)
from orchestrator.errors import (
    ChannelConfig,
    ChannelError,
    ChannelRecipient,
    ChannelRetryable,
    ChannelUnknown,
)

WECHAT_ROWS = [
    (-1, "retryable", "system_busy"),
    (45009, "retryable", "api_freq_limit"),
    (45011, "retryable", "api_minute_quota"),
    (40001, "token", "invalid_credential"),
    (40014, "token", "invalid_access_token"),
    (42001, "token", "access_token_expired"),
    (40003, "recipient", "invalid_openid"),
    (43004, "recipient", "not_following"),
    (45028, "recipient", "out_of_quota"),
    (40130, "config", "mass_send_size"),
    (40013, "config", "invalid_appid"),
    (40125, "config", "invalid_appsecret"),
    (48001, "config", "api_unauthorized"),
    (40164, "config", "ip_not_whitelisted"),
    (40037, "config", "invalid_template_id"),
    (40007, "stale_media", "invalid_media_id"),
    (45065, "duplicate", "clientmsgid_exists"),
    (45066, "retryable", "clientmsgid_retry_too_fast"),
    (99999, "config", "unrecognised_error"),
]

WECOM_ROWS = [
    (-1, "retryable", "system_busy"),
    (45009, "retryable", "api_freq_limit"),
    (45011, "retryable", "api_minute_quota"),
    (41063, "retryable", "task_being_processed"),
    (40001, "token", "invalid_credential"),
    (40014, "token", "invalid_access_token"),
    (42001, "token", "access_token_expired"),
    (40003, "recipient", "invalid_sender"),
    (40096, "recipient", "invalid_external_userid"),
    (84061, "recipient", "not_friend"),
    (40013, "config", "invalid_appid"),
    (40125, "config", "invalid_appsecret"),
    (40164, "config", "ip_not_whitelisted"),
    (48001, "config", "api_unauthorized"),
    (48002, "config", "api_forbidden"),
    (60020, "config", "ip_not_whitelisted"),
    (40058, "config", "unrecognised_error"),
]

TWILIO_ROWS = [
    (20429, 429, "retryable", "too_many_requests"),
    (20503, 503, "retryable", "service_unavailable"),
    (20500, 500, "retryable", "http_5xx"),
    (30001, 400, "retryable", "queue_overflow"),
    (21211, 400, "recipient", "invalid_number"),
    (21610, 400, "recipient", "opted_out:sms"),
    (21614, 400, "recipient", "not_mobile"),
    (21612, 400, "recipient", "unroutable_number"),
    (20003, 401, "config", "authentication_failed"),
    (20404, 404, "config", "resource_not_found"),
    (21606, 400, "config", "from_not_sms_capable"),
    (21212, 400, "config", "invalid_from_number"),
    (21408, 400, "config", "region_not_enabled"),
    (21617, 400, "config", "body_too_long"),
    (12345, 400, "config", "unrecognised_error"),
    (None, 429, "retryable", "http_429"),
]


@pytest.mark.parametrize(("code", "kind", "reason"), WECHAT_ROWS)
def test_wechat_code(code: int, kind: str, reason: str) -> None:
    assert classify_wechat(code) == Verdict(kind, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "kind", "reason"), WECOM_ROWS)
def test_wecom_code(code: int, kind: str, reason: str) -> None:
    assert classify_wechat(code, wecom=True) == Verdict(kind, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "status", "kind", "reason"), TWILIO_ROWS)
def test_twilio_code(code: int | None, status: int, kind: str, reason: str) -> None:
    assert classify_twilio(code, status=status) == Verdict(kind, reason)  # type: ignore[arg-type]


def test_every_table_row_is_covered_by_a_test_row() -> None:
    assert set(WECHAT_CODES) <= {row[0] for row in WECHAT_ROWS}
    assert set(WECOM_CODES) <= {row[0] for row in WECOM_ROWS}
    assert set(TWILIO_CODES) <= {row[0] for row in TWILIO_ROWS}


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, "retryable"), (502, "retryable"), (429, "retryable"), (404, "config")],
)
def test_http_status_without_errcode(status: int, kind: str) -> None:
    assert classify_wechat(None, status=status).kind == kind


@pytest.mark.parametrize(
    ("kind", "error_class", "message"),
    [
        ("retryable", ChannelRetryable, r"wechat POST x failed \(-1 r: busy\); retry later"),
        ("token", ChannelRetryable, r"retry later with back-off"),
        ("recipient", ChannelRecipient, r"cannot reach the recipient .*fail the touch, no retry"),
        ("config", ChannelConfig, r"was refused .*fix the wechat settings or step options"),
        ("stale_media", ChannelConfig, r"was refused"),
        ("duplicate", ChannelConfig, r"was refused"),
    ],
)
def test_verdicts_become_the_error_tree(
    kind: str, error_class: type[ChannelError], message: str
) -> None:
    error = to_channel_error(
        Verdict(kind, "r"),  # type: ignore[arg-type]
        provider="wechat",
        action="POST x",
        code=-1,
        detail="busy",
        retry_after_s=3.0,
    )
    assert type(error) is error_class
    assert error.code == -1 and error.provider == "wechat"
    with pytest.raises(error_class, match=message):
        raise error


def test_retry_after_travels_with_a_retryable_error() -> None:
    error = to_channel_error(
        TWILIO_CODES[20429],
        provider="twilio",
        action="POST",
        code=20429,
        detail="",
        retry_after_s=7,
    )
    assert isinstance(error, ChannelRetryable) and error.retry_after_s == 7


def test_wechat_error_uses_the_wecom_table_for_wecom() -> None:
    assert isinstance(
        wechat_error(40003, "invalid userid", status=200, provider="wecom", action="POST a"),
        ChannelRecipient,
    )
    assert "invalid_sender" in str(
        wechat_error(40003, "invalid userid", status=200, provider="wecom", action="POST a")
    )


# -- transport failures: a refused connection is safe to retry, a lost answer is not ----------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture
def hanging_up_server() -> Iterator[str]:
    """Reads the request, then closes the connection without a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    thread.join(5)
    sock.close()


def _failure(url: str, timeout: tuple[float, float] = (1.0, 0.2)) -> requests.RequestException:
    with pytest.raises(requests.RequestException) as caught:
        requests.post(url, data=b"x", timeout=timeout)
    return caught.value


def test_connection_refused_is_retryable() -> None:
    error = transport_error(
        _failure(f"http://127.0.0.1:{_free_port()}/"), provider="twilio", action="POST"
    )
    assert isinstance(error, ChannelRetryable)
    assert "nothing was sent" in str(error)


def test_read_timeout_after_sending_is_unknown(silent_server: str) -> None:
    error = transport_error(_failure(silent_server), provider="wechat", action="POST mass")
    assert isinstance(error, ChannelUnknown)
    assert "reconcile, do not resend" in str(error)


def test_dropped_connection_after_sending_is_unknown(hanging_up_server: str) -> None:
    error = transport_error(_failure(hanging_up_server), provider="wecom", action="POST task")
    assert isinstance(error, ChannelUnknown)


def test_calls_without_side_effects_are_always_retryable(silent_server: str) -> None:
    error = transport_error(_failure(silent_server), provider="wechat", action="GET", sent=False)
    assert isinstance(error, ChannelRetryable)


def test_a_malformed_base_url_is_config() -> None:
    with pytest.raises(requests.RequestException) as caught:
        requests.get("127.0.0.1:1/cgi-bin/token", timeout=1)
    assert isinstance(transport_error(caught.value, provider="wechat", action="GET"), ChannelConfig)
