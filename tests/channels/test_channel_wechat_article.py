"""wechat_article through wechatpy over HTTP against the sandbox."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from channel_helpers import calls, fault, message, messages, request

from orchestrator.channels import WeChatArticleChannel
from orchestrator.channels.base import TouchResult
from orchestrator.config import Settings
from orchestrator.errors import ChannelConfig, ChannelRetryable, ChannelUnknown
from orchestrator.sandbox.server import SandboxHandle
from tests.support import jpeg

CHANNEL = "wechat_article"
TEMPLATE = {"template_id": "tpl-winback"}


def sent_ids(results: list[TouchResult]) -> set[str | None]:
    assert {r.status for r in results} == {"sent"}, results
    return {r.provider_message_id for r in results}


def test_a_batch_of_10000_is_one_mass_send_with_the_batch_id_as_clientmsgid(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    results = article.send(request("batch-10k", CHANNEL, messages(10_000)))
    assert len(results) == 10_000
    (msg_id,) = sent_ids(results)
    (mass,) = calls(sandbox, "wechat", "/message/mass/send")
    assert mass["outcome"] == "accepted"
    assert mass["body"]["clientmsgid"] == "batch-10k"
    assert mass["body"]["msgtype"] == "mpnews"
    assert len(mass["body"]["touser"]) == 10_000
    assert str(mass["body"]["mpnews"]["media_id"]).startswith("sbx-draft-")
    assert msg_id is not None


def test_a_batch_over_max_batch_is_refused_before_any_call(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    with pytest.raises(ChannelConfig, match=r"has 10001 messages, more than max_batch=10000"):
        article.send(request("batch-10001", CHANNEL, messages(10_001)))
    assert sandbox.state.records("wechat") == []


def test_the_cover_is_uploaded_once_and_every_batch_sends_its_own_draft(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    article.send(request("b1", CHANNEL, messages(3), options={"digest": "摘要", "author": "校园"}))
    article.send(request("b2", CHANNEL, messages(3, start=3)))
    article.send(request("b3", CHANNEL, messages(3, start=6), content_version="j1:v2:tpl:a"))
    other = {"cover_jpeg_b64": base64.b64encode(jpeg(color=(0, 90, 200))).decode()}
    article.send(request("b4", CHANNEL, messages(3, start=9), options=other))
    covers = calls(sandbox, "wechat", "/material/add_material", "accepted")
    assert [(c["body"]["type"], c["body"]["format"]) for c in covers] == [("thumb", "JPEG")] * 2
    drafts = calls(sandbox, "wechat", "/draft/add", "accepted")
    assert [d["ref"] for d in drafts] == [
        m["body"]["mpnews"]["media_id"]
        for m in calls(sandbox, "wechat", "/message/mass/send", "accepted")
    ]  # one draft per mass send: a sent draft leaves the draft box
    first = drafts[0]["body"]["articles"][0]
    assert (first["title"], first["digest"], first["author"]) == ("We miss you", "摘要", "校园")
    assert [d["body"]["articles"][0]["thumb_media_id"] for d in drafts] == [
        covers[0]["ref"]] * 3 + [covers[1]["ref"]]


def test_an_article_without_a_cover_is_refused_before_any_call(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    with pytest.raises(ChannelConfig, match=r"the article has no cover and WeChat refuses an "
                       r"article without one \(40007\); give the step a cover"):
        article.send(request("b-nocover", CHANNEL, messages(3), cover=False))
    # A batch that could never be sent cannot have been: the lookup finds it absent (the
    # engine's send then fails it as the config error it is) and raises nothing.
    lost = article.reconcile(request("b-nocover", CHANNEL, messages(3), cover=False))
    assert {r.status for r in lost} == {"absent"}
    png = {"cover_jpeg_b64": base64.b64encode(jpeg(fmt="PNG")).decode()}
    with pytest.raises(ChannelConfig, match=r"the file is a PNG image, not a JPG"):
        article.send(request("b-png", CHANNEL, messages(3), options=png))
    assert sandbox.state.records("wechat") == []


def test_a_title_over_32_characters_is_refused_before_any_call(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    long_title = {"title": "好" * 33}
    with pytest.raises(ChannelConfig, match=r"the article's title is 33 characters; WeChat "
                       r"takes at most 32"):
        article.send(request("b-title", CHANNEL, messages(3), options=long_title))
    assert sandbox.state.records("wechat") == []


def test_the_same_batch_twice_is_one_send(
    article: WeChatArticleChannel,
    sandbox: SandboxHandle,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    batch = request("b-twice", CHANNEL, messages(4))
    first = article.send(batch)
    assert article.send(batch) == first  # answered from the ledger: no call at all
    assert len(calls(sandbox, "wechat", "/message/mass/send")) == 1
    # Without the ledger, WeChat's own idempotency holds. Within a minute of the last call
    # it answers 45066: retry after that minute...
    redis_client.delete(f"{key_prefix}:ledger:{CHANNEL}:b-twice")
    with pytest.raises(ChannelRetryable, match="45066 clientmsgid_retry_too_fast") as caught:
        article.send(batch)
    assert caught.value.retry_after_s == 60.0
    # ... and then 45065 with the same msg_id.
    sandbox.state.configure({"wechat_clientmsgid_retry_interval_s": 0})
    assert article.send(batch) == first
    mass = calls(sandbox, "wechat", "/message/mass/send")
    assert [m["outcome"] for m in mass] == ["accepted", "too_fast", "duplicate"]


def test_recipients_without_openid_fail_and_the_rest_is_sent(
    article: WeChatArticleChannel,
) -> None:
    batch = (*messages(2), message(9, openid=None))
    results = article.send(request("b-noid", CHANNEL, batch))
    assert [r.status for r in results] == ["sent", "sent", "failed"]
    assert results[2].reason == "no_openid"


def test_an_invalid_openid_wechat_does_not_name_is_found_and_the_rest_sent_once(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    batch = messages(250)
    bad = [batch[7].recipient.openid, batch[180].recipient.openid]
    gone = batch[60].recipient.openid
    sandbox.state.set_followers({"wechat": {**dict.fromkeys(bad, "unknown"), gone: "unfollowed"}})
    results = article.send(request("b-invalid", CHANNEL, batch))
    reasons = {i: r.reason for i, r in enumerate(results) if r.status == "failed"}
    assert reasons == {7: "invalid_openid", 60: "not_following", 180: "invalid_openid"}
    assert {r.status for i, r in enumerate(results) if i not in reasons} == {"sent"}
    mass = calls(sandbox, "wechat", "/message/mass/send")
    assert [m["outcome"] for m in mass] == ["error:40003", "accepted"]
    assert mass[1]["body"]["clientmsgid"] == "b-invalid"  # the refused call created nothing
    assert set(mass[1]["body"]["touser"]).isdisjoint([*bad, gone])
    probes = calls(sandbox, "wechat", "/user/info/batchget")
    assert max(len(p["body"]["user_list"]) for p in probes) == 100
    assert len(probes) <= 3 + 2 * 2 * 7  # 3 pages, then halving two chunks down to one id


def test_nobody_following_fails_every_touch_as_not_following(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    batch = messages(3)
    sandbox.state.set_followers(
        {"wechat": {m.recipient.openid: "unfollowed" for m in batch if m.recipient.openid}}
    )
    results = article.send(request("b-unfollowed", CHANNEL, batch))
    assert {(r.status, r.reason) for r in results} == {("failed", "not_following")}


def test_a_lone_recipient_goes_by_template_message(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    landing = {**TEMPLATE, "link": "https://m.example.com/welcome"}  # the step's landing
    (result,) = article.send(request("b-lone", CHANNEL, messages(1), options=landing))
    assert result.status == "sent" and result.provider_message_id
    (sent,) = calls(sandbox, "wechat", "/message/template/send")
    assert sent["body"]["template_id"] == "tpl-winback"
    assert sent["body"]["url"] == "https://m.example.com/welcome"
    assert sent["body"]["data"]["first"] == {"value": "We miss you"}
    assert calls(sandbox, "wechat", "/message/mass/send") == []


def test_a_lone_recipient_without_template_id_is_a_config_error(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    with pytest.raises(ChannelConfig, match=r"a lone recipient goes by template message"):
        article.send(request("b-lone-nt", CHANNEL, messages(1)))
    assert sandbox.state.records("wechat") == []


def test_template_mode_sends_one_message_per_touch_once(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    batch = request("b-tpl", CHANNEL, messages(5), options={**TEMPLATE, "mode": "per_recipient"})
    first = article.send(batch)
    assert len({r.provider_message_id for r in first}) == 5
    assert article.send(batch) == first
    sends = calls(sandbox, "wechat", "/message/template/send")
    assert sorted((s["body"]["touser"], s["body"]["url"]) for s in sends) == sorted(
        (m.recipient.openid, m.link) for m in batch.messages
    )  # each recipient's own link


def test_a_test_send_goes_by_preview_once_per_recipient_and_spends_no_quota(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    batch = request("b-preview", CHANNEL, messages(3), options={"preview": "1"})
    first = article.send(batch)
    assert len({r.provider_message_id for r in first}) == 3
    assert article.send(batch) == first  # the ledger: no second call
    assert article.reconcile(batch) == first
    assert article.dedupe_window(batch) is None
    assert len(calls(sandbox, "wechat", "/draft/add")) == 1  # the batch's draft, made once
    previews = calls(sandbox, "wechat", "/message/mass/preview")
    assert sorted(p["body"]["touser"] for p in previews) == sorted(
        m.recipient.openid for m in batch.messages)
    assert {p["outcome"] for p in previews} == {"accepted"}
    assert len({p["body"]["mpnews"]["media_id"] for p in previews}) == 1
    assert calls(sandbox, "wechat", "/message/mass/send") == []
    # A lone test recipient sees the article too (not a template message).
    (lone,) = article.send(request("b-preview-1", CHANNEL, messages(1, start=7),
                                   options={"preview": "1"}))
    assert lone.status == "sent"
    assert calls(sandbox, "wechat", "/message/template/send") == []


@pytest.mark.parametrize(("kind", "code"), [("busy", -1), ("rate_limit", 45009)])
def test_busy_and_rate_limit_are_retryable_and_the_retry_sends_once(
    article: WeChatArticleChannel, sandbox: SandboxHandle, kind: str, code: int
) -> None:
    batch = request(f"b-{kind}", CHANNEL, messages(3))
    fault(sandbox, kind, "wechat", "/message/mass/send")
    with pytest.raises(ChannelRetryable, match=r"retry later with back-off") as caught:
        article.send(batch)
    assert caught.value.code == code
    sent_ids(article.send(batch))
    outcomes = [m["outcome"] for m in calls(sandbox, "wechat", "/message/mass/send")]
    assert outcomes == [f"fault:{kind}", "accepted"]


def test_a_template_message_lookup_trusts_the_ledger_only_while_it_is_intact(
    article: WeChatArticleChannel, sandbox: SandboxHandle, redis_client: redis.Redis,
    key_prefix: str
) -> None:
    # Template messages have no lookup API: the ledger is all there is. A message it has no
    # entry for was never called while the ledger is the one the calls were written to.
    own = {**TEMPLATE, "mode": "per_recipient"}
    batch = request("b-tpl-look", CHANNEL, messages(3), options=own)
    first = replace(batch, messages=batch.messages[:1])
    article.send(first)  # one message went out; the other two never left
    looked = article.reconcile(batch)
    assert [r.status for r in looked] == ["sent", "absent", "absent"]
    # Redis lost the ledger (a restart, an eviction): nobody can say any more.
    redis_client.delete(f"{key_prefix}:ledger:{CHANNEL}:b-tpl-look")
    assert [r.status for r in article.reconcile(batch)] == ["unknown"] * 3
    assert len(calls(sandbox, "wechat", "/message/template/send")) == 1


def test_http_500_is_retryable(article: WeChatArticleChannel, sandbox: SandboxHandle) -> None:
    fault(sandbox, "http_500", "wechat", "/message/mass/send")
    with pytest.raises(ChannelRetryable, match=r"http_5xx"):
        article.send(request("b-500", CHANNEL, messages(2)))


@pytest.mark.short_timeout
@pytest.mark.parametrize("kind", ["drop", "timeout"])
def test_a_lost_answer_is_unknown_and_reconcile_finds_the_send_without_resending(
    article: WeChatArticleChannel, sandbox: SandboxHandle, kind: str
) -> None:
    batch = request(f"b-{kind}", CHANNEL, messages(3))
    fault(sandbox, kind, "wechat", "/message/mass/send")
    with pytest.raises(ChannelUnknown, match=r"reconcile, do not resend"):
        article.send(batch)
    sandbox.state.configure({"wechat_clientmsgid_retry_interval_s": 0})  # a minute later
    reconciled = article.reconcile(batch)
    (msg_id,) = sent_ids(reconciled)
    mass = calls(sandbox, "wechat", "/message/mass/send")
    assert [m["outcome"] for m in mass] == ["accepted", "duplicate"]  # sent exactly once
    assert msg_id is not None


def test_a_cover_gone_from_the_material_is_uploaded_again(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    article.send(request("b-media-1", CHANNEL, messages(2)))
    sandbox.state.reset()  # the sandbox forgets the cover we cached: deleted by an editor
    sent_ids(article.send(request("b-media-2", CHANNEL, messages(2, start=2))))
    assert [(c["path"].rsplit("/", 1)[-1], c["outcome"]) for c in sandbox.state.records()] == [
        ("add", "error:40007"),
        ("add_material", "accepted"),
        ("add", "accepted"),
        ("send", "accepted"),
    ]


def test_token_expiry_mid_run_costs_one_refresh_for_many_threads(
    settings: Settings, redis_client: redis.Redis, key_prefix: str, sandbox: SandboxHandle
) -> None:
    workers = 6
    channels = [
        WeChatArticleChannel(settings, redis_client, key_prefix=key_prefix) for _ in range(2)
    ]
    channels[0].send(request("b-warm", CHANNEL, messages(2)))  # token + media cached
    fault(sandbox, "token_expired", "wechat")
    start = threading.Barrier(workers)

    def worker(i: int) -> list[TouchResult]:
        start.wait()
        batch = request(f"b-exp-{i}", CHANNEL, messages(2, start=10 * (i + 1)))
        return channels[i % 2].send(batch)

    try:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(worker, range(workers)))
    finally:
        for channel in channels:
            channel.close()
    assert all(r.status == "sent" for rs in results for r in rs)
    assert len(calls(sandbox, "wechat", "/cgi-bin/token")) == 2  # the first and ONE refresh
    assert len(calls(sandbox, "wechat", "/message/mass/send", "accepted")) == workers + 1


class AlwaysExpiredProvider:
    """A loopback server that issues tokens and rejects every API call with 42001."""

    def __init__(self) -> None:
        self.token_calls = 0
        self.api_calls = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                provider.token_calls += 1
                self._json({"access_token": f"t{provider.token_calls}", "expires_in": 7200})

            def do_POST(self) -> None:  # noqa: N802
                provider.api_calls += 1
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._json({"errcode": 42001, "errmsg": "access_token expired"})

            def _json(self, payload: dict[str, object]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_token_rejected_twice_is_retryable_not_an_endless_loop(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    provider = AlwaysExpiredProvider()
    settings = Settings(_env_file=None, wechat_api_base=provider.base_url)  # type: ignore[call-arg]
    channel = WeChatArticleChannel(settings, redis_client, key_prefix=key_prefix)
    try:
        with pytest.raises(ChannelRetryable, match=r"42001 access_token_expired"):
            channel.send(request("b-expired", CHANNEL, messages(2)))
    finally:
        channel.close()
        provider.close()
    # cover upload: first token, rejected, one refresh, rejected again -> stop.
    assert (provider.token_calls, provider.api_calls) == (2, 2)


def test_a_shared_batch_whose_texts_differ_is_refused_before_any_call(
    article: WeChatArticleChannel, sandbox: SandboxHandle
) -> None:
    """A mass send is one article for everyone: never the first recipient's to all."""
    shared = request("b-mixed", CHANNEL, messages(3))
    own = tuple(replace(m, text=f"<p>{m.recipient.user_id}</p>") for m in shared.messages)
    with pytest.raises(ChannelConfig, match=r"holds 3 different texts, but one call sends one "
                                            r"text to all its recipients"):
        article.send(replace(shared, messages=own))
    assert sandbox.state.records("wechat") == []
