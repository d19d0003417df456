"""``POST /v1/events`` with an ``unsubscribe`` event withdraws consent in the same request."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine

from orchestrator.policy import consent
from tests.tracking.seed import T0, Seeder


def test_an_unsubscribe_event_over_http_is_an_opt_out(
    client: httpx.Client, auth: dict[str, str], seed: Seeder, db_engine: Engine
) -> None:
    seed.user("u1", phone="+8613800138000", openid="o1", wechat_followed=True)
    seed.user("u2", phone="+8613800138001")
    events = [
        {"event_id": "e1", "user_id": "u1", "name": "unsubscribe", "ts": T0.isoformat(),
         "value": None, "props": {"channel": "sms", "source": "settings page"}},
        {"event_id": "e2", "user_id": "u2", "name": "unsubscribe", "ts": T0.isoformat(),
         "value": None, "props": {"channel": "sms-typo"}},
    ]
    answer = client.post("/v1/events", json={"events": events}, headers=auth)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["accepted"], [r["index"] for r in body["rejected"]]) == (1, [1])
    assert consent.suppressions(db_engine, ["u1", "u2"], "sms") == {"u1": "opted_out:sms"}
    assert consent.suppressions(db_engine, ["u1"], "wechat_article") == {}
