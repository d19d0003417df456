"""Secrets fail closed: the published sandbox placeholders sign nothing outside the
embedded stack on loopback, and an exposed API does not start on them."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from orchestrator.api.app import create_app
from orchestrator.api.exposure import check_can_serve, is_loopback_host, sandbox_secrets_allowed
from orchestrator.cli import app as cli
from orchestrator.clock import ManualClock, utcnow
from orchestrator.config import Settings
from orchestrator.errors import ConfigError
from orchestrator.store.models import Event, OptOut, WebhookReceipt
from orchestrator.tracking.landing import landing_token
from tests.api.conftest import Swappable
from tests.support import redis_db_url
from tests.tracking.seed import T0, TOUCHES, Seeder

EVENTS = Event.__table__  # type: ignore[attr-defined]
RECEIPTS = WebhookReceipt.__table__  # type: ignore[attr-defined]
OPT_OUTS = OptOut.__table__  # type: ignore[attr-defined]


def defaults(tmp_path: Path, **overrides: object) -> Settings:
    """Every secret at its built-in sandbox placeholder, as a deployment that forgot them."""
    return Settings(_env_file=None, redis_url=redis_db_url(), state_dir=tmp_path / "state",
                    journeys_dir=tmp_path / "journeys", templates_dir=tmp_path / "templates",
                    **overrides)  # type: ignore[arg-type]


def serve(app_server: tuple[Swappable, str], app: object) -> Iterator[httpx.Client]:
    swappable, url = app_server
    swappable.app = app  # type: ignore[assignment]
    with httpx.Client(base_url=url, trust_env=False, timeout=30,
                      follow_redirects=False) as client:
        yield client
    swappable.app = None


@pytest.fixture
def exposed(tmp_path: Path, db_engine: Engine,
            api_server: tuple[Swappable, str]) -> Iterator[httpx.Client]:
    """``create_app`` as any ASGI server would load it: nobody vouched for loopback."""
    app = create_app(defaults(tmp_path, public_base_url="https://recall.example.com"),
                     engine=db_engine, clock=ManualClock(T0))
    yield from serve(api_server, app)


@pytest.fixture
def embedded(tmp_path: Path, db_engine: Engine,
             api_server: tuple[Swappable, str]) -> Iterator[httpx.Client]:
    settings = defaults(tmp_path)
    app = create_app(settings, engine=db_engine, clock=ManualClock(T0),
                     allow_sandbox_secrets=sandbox_secrets_allowed(settings, "127.0.0.1"))
    yield from serve(api_server, app)


def generic(client: httpx.Client, secret: bytes) -> httpx.Response:
    body = json.dumps({"id": "pay_1", "type": "payment_failed", "user_id": "u1",
                       "amount": 9.5, "currency": "cny",
                       "occurred_at": "2026-03-02T09:58:00+08:00"}).encode()
    t = int(T0.timestamp())
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return client.post("/v1/webhooks/payments/generic", content=body,
                       headers={"X-Recall-Signature": f"t={t},v1={mac}",
                                "Content-Type": "application/json"})


def wechat_unsubscribe(client: httpx.Client, token: str) -> httpx.Response:
    at, nonce = str(int(time.time())), secrets.token_hex(5)
    signature = hashlib.sha1("".join(sorted([token, at, nonce])).encode()).hexdigest()
    xml = ("<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]>"
           "</FromUserName><CreateTime>1772416800</CreateTime><MsgType><![CDATA[event]]>"
           "</MsgType><Event><![CDATA[unsubscribe]]></Event></xml>")
    return client.post("/v1/callbacks/wechat", content=xml.encode(),
                       params={"signature": signature, "timestamp": at, "nonce": nonce})


def test_placeholder_signed_webhooks_and_callbacks_are_refused_when_exposed(
    exposed: httpx.Client, seed: Seeder
) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    webhook = generic(exposed, b"sandbox-generic-secret")
    assert webhook.status_code == 503
    assert webhook.json()["error"]["code"] == "not_configured"
    assert "RECALL_GENERIC_WEBHOOK_SECRET" in webhook.json()["error"]["message"]
    callback = wechat_unsubscribe(exposed, "sandbox-token")
    assert callback.status_code == 503
    assert seed.count(EVENTS) == seed.count(RECEIPTS) == seed.count(OPT_OUTS) == 0


def test_a_placeholder_signed_landing_token_is_refused_when_exposed(
    exposed: httpx.Client, seed: Seeder
) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    token = landing_token("sandbox-landing-secret", journey_id="winback", user_id="u1",
                          issued_at=utcnow(), to="https://m.example.com/x")
    response = exposed.get("/l/winback", params={"t": token})
    assert response.status_code == 503
    assert seed.row(TOUCHES, id=touch)["clicked_at"] is None


def test_the_embedded_stack_on_loopback_keeps_its_zero_config(
    embedded: httpx.Client, seed: Seeder
) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    assert generic(embedded, b"sandbox-generic-secret").json() == {"status": "accepted"}
    assert wechat_unsubscribe(embedded, "sandbox-token").status_code == 200
    assert seed.count(OPT_OUTS) == 1


@pytest.mark.parametrize(("host", "public", "allowed"), [
    ("127.0.0.1", "http://127.0.0.1:8000", True),
    ("::1", "http://[::1]:8000", True),
    ("localhost", "http://localhost:8000", True),
    ("0.0.0.0", "http://127.0.0.1:8000", False),
    ("10.0.0.5", "http://127.0.0.1:8000", False),
    ("127.0.0.1", "https://recall.example.com", False),  # behind a proxy: reachable
])
def test_who_may_use_the_placeholders(tmp_path: Path, host: str, public: str,
                                      allowed: bool) -> None:
    settings = defaults(tmp_path, public_base_url=public)
    assert sandbox_secrets_allowed(settings, host) is allowed
    if allowed:
        check_can_serve(settings, host)
    else:
        with pytest.raises(ConfigError, match="RECALL_GENERIC_WEBHOOK_SECRET.*"
                                              "RECALL_API_KEYS"):
            check_can_serve(settings, host)


def test_an_exposed_api_with_real_secrets_and_keys_starts(tmp_path: Path) -> None:
    real = {name: f"real-{name}" for name, field in Settings.model_fields.items()
            if "SecretStr" in str(field.annotation)
            and "aes" not in name}
    settings = defaults(tmp_path, public_base_url="https://recall.example.com",
                        api_keys="k1", **real)
    check_can_serve(settings, "0.0.0.0")
    assert not sandbox_secrets_allowed(settings, "0.0.0.0")
    no_keys = settings.model_copy(update={"api_keys": ""})
    with pytest.raises(ConfigError, match="RECALL_API_KEYS"):
        check_can_serve(no_keys, "0.0.0.0")


def test_recall_api_refuses_to_serve_every_address_on_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.config import get_settings

    monkeypatch.chdir(tmp_path)
    for name in [n for n in __import__("os").environ if n.startswith("RECALL_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["api", "--host", "0.0.0.0", "--no-migrate"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "sandbox placeholders" in result.output and "RECALL_API_KEYS" in result.output


def test_loopback_names() -> None:
    assert is_loopback_host("127.0.0.2") and is_loopback_host("[::1]")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("recall.example.com")
