"""SandboxState without HTTP: tokens on an injected clock, quotas, the record's storage,
fault arithmetic, endpoint matching."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.sandbox.calls import ProviderError
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.faults import FaultBook, FaultSpec
from orchestrator.sandbox.state import SandboxState, find_endpoint
from orchestrator.sandbox.tokens import OVERLAP_S, TokenBook

MASS = "/cgi-bin/message/mass/send"


class Ticker:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def token_for(state: SandboxState) -> str:
    config = state.config
    reply = state.request(
        "GET",
        "/cgi-bin/token",
        query={
            "grant_type": "client_credential",
            "appid": config.wechat_appid,
            "secret": config.wechat_secret,
        },
    )
    assert reply.payload is not None
    token: str = reply.payload["access_token"]
    return token


def mass(state: SandboxState, token: str, openids: list[str], msgid: str) -> dict[str, object]:
    reply = state.request(
        "POST",
        MASS,
        query={"access_token": token},
        json_body={
            "touser": openids,
            "msgtype": "text",
            "text": {"content": "hi"},
            "clientmsgid": msgid,
        },
    )
    assert reply.payload is not None
    return reply.payload


def test_tokens_expire_on_the_lease_clock_and_refresh_overlaps_five_minutes() -> None:
    ticker = Ticker()
    book = TokenBook(ticker)
    first, _ = book.issue("wechat", "app", 7200, reuse=False)
    ticker.now += 100
    second, _ = book.issue("wechat", "app", 7200, reuse=False)
    assert book.check("wechat", first, invalid_code=40001) == "app"  # still in the overlap
    ticker.now += OVERLAP_S
    with pytest.raises(ProviderError) as superseded:
        book.check("wechat", first, invalid_code=40001)
    assert superseded.value.code == 40001
    ticker.now += 7200
    with pytest.raises(ProviderError) as expired:
        book.check("wechat", second, invalid_code=40001)
    assert expired.value.code == 42001
    with pytest.raises(ProviderError) as missing:
        book.check("wechat", "", invalid_code=40001)
    assert missing.value.code == 41001


def test_wecom_tokens_are_reused_while_valid() -> None:
    book = TokenBook(Ticker())
    token, _ = book.issue("wecom", "corp/secret", 7200, reuse=True)
    assert book.issue("wecom", "corp/secret", 7200, reuse=True)[0] == token
    with pytest.raises(ProviderError) as wrong_provider:
        book.check("wechat", token, invalid_code=40001)
    assert wrong_provider.value.code == 40001


def test_quota_is_per_natural_month_in_shanghai() -> None:
    clock = ManualClock(datetime(2024, 1, 31, 15, 59, tzinfo=UTC))  # 23:59 Jan 31 Shanghai
    state = SandboxState(clock=clock)
    token = token_for(state)
    for n in range(4):
        assert mass(state, token, ["a", "b"], f"jan{n}")["errcode"] == 0
    assert mass(state, token, ["a", "b"], "jan4")["errcode"] == 45028
    clock.set(datetime(2024, 1, 31, 16, 0, tzinfo=UTC))  # 00:00 Feb 1 Shanghai
    assert mass(state, token, ["a", "b"], "feb0")["errcode"] == 0


def test_record_keeps_raw_bytes_not_parsed_lists() -> None:
    state = SandboxState()
    token = token_for(state)
    openids = [f"o{i:027d}" for i in range(10_000)]
    mass(state, token, openids, "big")
    entry = list(state.record.select("wechat"))[-1]
    assert isinstance(entry.raw, bytes) and entry.summary is None
    assert entry.recipients() == openids


def test_fault_rate_is_deterministic_for_a_seed() -> None:
    def hits(seed: int) -> list[bool]:
        book = FaultBook(seed)
        book.arm(FaultSpec(kind="http_500", count=None, rate=0.3))
        return [book.take("twilio", "/x") is not None for _ in range(200)]

    assert hits(7) == hits(7)
    assert 20 < sum(hits(7)) < 100


def test_endpoint_matching_reads_twilio_path_parameters() -> None:
    found = find_endpoint("GET", "/2010-04-01/Accounts/AC1/Messages/SM9.json")
    assert found is not None
    endpoint, params = found
    assert endpoint.provider == "twilio" and params == {"AccountSid": "AC1", "MessageSid": "SM9"}
    assert find_endpoint("DELETE", MASS) is None
    with pytest.raises(LookupError, match="no provider API at GET /nope"):
        SandboxState().request("GET", "/nope")


def test_config_follows_recall_settings() -> None:
    settings = Settings(wechat_appid="wx-real", twilio_account_sid="AC42")
    config = SandboxConfig.from_settings(settings)
    assert (config.wechat_appid, config.twilio_account_sid) == ("wx-real", "AC42")
    assert config.wechat_secret == settings.wechat_secret.get_secret_value()


def test_wecom_confirm_rejects_other_senders() -> None:
    state = SandboxState()
    token = state.request(
        "GET",
        "/cgi-bin/gettoken",
        query={"corpid": state.config.wecom_corp_id, "corpsecret": state.config.wecom_secret},
    ).payload
    assert token is not None
    reply = state.request(
        "POST",
        "/cgi-bin/externalcontact/add_msg_template",
        query={"access_token": token["access_token"]},
        json_body={"external_userid": ["wm1"], "sender": "zhang", "text": {"content": "hi"}},
    )
    assert reply.payload is not None
    with pytest.raises(LookupError, match="for sender 'li'"):
        state.wecom_confirm(reply.payload["msgid"], "li")
    assert state.wecom_confirm(reply.payload["msgid"], "zhang")["sent"] == 1


def test_unfreezing_returns_to_the_injected_clock() -> None:
    simulated = ManualClock(datetime(2025, 6, 1, tzinfo=UTC))
    state = SandboxState(clock=simulated)
    state.set_clock(datetime(2030, 1, 1, tzinfo=UTC))
    assert state.now().year == 2030
    state.set_clock(None)
    assert state.now() == datetime(2025, 6, 1, tzinfo=UTC)
    state.set_clock(datetime(2030, 1, 1, tzinfo=UTC))
    state.reset()
    assert state.clock is simulated
