"""Schemathesis against the app's own OpenAPI schema, in-process (ASGI): whatever a client
sends that the schema describes, or almost describes, the answer is never a 5xx, and an
answer of 4xx leaves the store as it was.

``EXAMPLES`` cases per operation, generated deterministically; authenticated with a valid
API key so that the generated bodies reach the handlers behind the key check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case
from schemathesis.openapi import from_asgi
from sqlalchemy import Engine, select
from sqlmodel import SQLModel
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.app import create_app
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.store.db import make_engine
from tests.engine.conftest import POLICY, TEMPLATES, WINBACK, write_journeys
from tests.support import redis_db_url
from tests.tracking.seed import T0, Seeder

EXAMPLES = 15
KEY = "schema-key"
RESCUE = """\
id: rescue
name: 支付挽回
entry:
  event: payment_failed
goal: { event: order_placed, within: 3d }
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/pay?u={{ user_id }}"
"""


class Plug:
    """The ASGI app under test, plugged in per test (the schema is read once, at import)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


# The OpenAPI document does not depend on the store: read it from an app on a throwaway
# in-memory database, then plug each test's own app in.
PLUG = Plug(create_app(Settings(_env_file=None), engine=make_engine("sqlite://"),
                       clock=ManualClock(T0)))
schema = from_asgi("/openapi.json", PLUG)


@pytest.fixture
def store(tmp_path: Path, sqlite_engine: Engine) -> Iterator[Engine]:
    write_journeys(tmp_path, {"winback": WINBACK, "rescue": RESCUE}, TEMPLATES, POLICY)
    settings_ = Settings(
        _env_file=None, api_keys=KEY, redis_url=redis_db_url(), state_dir=tmp_path / "state",
        journeys_dir=tmp_path / "journeys", templates_dir=tmp_path / "templates",
        public_base_url="https://recall.example.com", generic_webhook_secret="g-secret",
        stripe_webhook_secret="s-secret", wechatpay_api_key="w-key", twilio_auth_token="t-tok",
        wechat_token="wx-token", wecom_token="wc-token", landing_token_secret="l-secret",
    )
    seed = Seeder(sqlite_engine)
    enrollment = seed.enrollment(seed.user("u1", openid="o1", phone="+8613800138000"))
    seed.link("Ab3_-xYz9Qk", seed.touch(enrollment), "https://m.example.com/c")
    schema_app = PLUG.app
    app = create_app(settings_, engine=sqlite_engine, clock=ManualClock(T0))
    app.state.services.journeys.book()  # records the journey versions now, not mid-request
    PLUG.app = app
    yield sqlite_engine
    PLUG.app = schema_app


def snapshot(engine: Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(str(row) for t in SQLModel.metadata.sorted_tables
                         for row in conn.execute(select(t)).all())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_partial_write(case: Case, store: Engine) -> None:
    before = snapshot(store)
    response = case.call(headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code < 500, (case.method, case.path, response.text)
    if 400 <= response.status_code < 500:
        assert snapshot(store) == before, (case.method, case.path, response.status_code)
