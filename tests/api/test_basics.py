"""Auth, error shape, size limits, events, journeys, health and metrics."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert

from orchestrator.api.app import create_app
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.store.models import Event, JourneyState
from tests.api.conftest import Swappable
from tests.tracking.seed import T0, Seeder

EVENTS = Event.__table__  # type: ignore[attr-defined]


def event(i: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "user_id": "u1", "name": "login",
            "ts": "2026-03-02T10:00:00+08:00", "value": None, "props": {}} | fields


@pytest.mark.sqlite_only
@pytest.mark.parametrize("header", [
    None, "Bearer wrong", "Bearer key-one2", "Basic a2V5LW9uZQ==", "Bearer", "key-one",
])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/events"), ("GET", "/v1/journeys"), ("GET", "/v1/exports/touches"),
])
def test_protected_routes_need_a_key(
    client: httpx.Client, header: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client.request(method, path, headers=headers, json={"events": []})
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthorized", "field": None, "message": (
        "authentication required: send `Authorization: Bearer <key>` with one of the keys in "
        "the server's RECALL_API_KEYS")}}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.sqlite_only
def test_an_api_without_keys_says_what_its_operator_must_set(
    settings: Settings, db_engine: Engine, clock: ManualClock,
    api_server: tuple[Swappable, str],
) -> None:
    swappable, url = api_server
    swappable.app = create_app(settings.model_copy(update={"api_keys": ""}), engine=db_engine,
                               clock=clock)
    try:
        response = httpx.get(f"{url}/v1/journeys", headers={"Authorization": "Bearer x"},
                             trust_env=False)
    finally:
        swappable.app = None
    assert response.status_code == 401
    assert response.json()["error"]["message"] == (
        "authentication required, and this server has no keys (RECALL_API_KEYS is empty), so "
        "it refuses every such request: set RECALL_API_KEYS=<key>[,<key>...] where it runs, "
        "restart it, and send `Authorization: Bearer <key>`")


@pytest.mark.sqlite_only
def test_each_configured_key_works(client: httpx.Client) -> None:
    for key in ("key-one", "key-two"):
        response = client.get("/v1/journeys", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200


def test_events_are_ingested_idempotently_and_rejected_by_index(
    client: httpx.Client, auth: dict[str, str], db_engine: Engine, seed: Seeder
) -> None:
    body = {"events": [event(1), event(2), "not an object", event(3, ts="yesterday")]}
    response = client.post("/v1/events", json=body, headers=auth)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["duplicates"]) == (2, 0)
    assert [r["index"] for r in answer["rejected"]] == [2, 3]
    assert answer["rejected"][0]["error"] == "event must be a JSON object"
    assert answer["rejected"][1]["error"].startswith("ts:")
    again = client.post("/v1/events", json={"events": [event(1), event(4)]}, headers=auth)
    assert again.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert seed.count(EVENTS) == 3


@pytest.mark.sqlite_only
def test_more_than_ten_thousand_events_are_refused(
    client: httpx.Client, auth: dict[str, str], seed: Seeder
) -> None:
    response = client.post("/v1/events", json={"events": [{}] * 10_001}, headers=auth)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == "events"
    assert "10000" in error["message"]
    assert seed.count(EVENTS) == 0


@pytest.mark.sqlite_only
def test_bodies_over_the_limit_are_refused_before_reading(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    big = b'{"events": [' + b" " * (10 * 1024 * 1024) + b"]}"
    response = client.post("/v1/events", content=big, headers=auth)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.sqlite_only
def test_streamed_bodies_over_the_limit_are_refused(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    def chunks() -> Any:
        yield b'{"events": ['
        for _ in range(11):
            yield b" " * (1024 * 1024)
        yield b"]}"

    response = client.post("/v1/events", content=chunks(), headers=auth)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.sqlite_only
def test_errors_share_one_shape(client: httpx.Client, auth: dict[str, str]) -> None:
    bad_json = client.post("/v1/events", content=b"{", headers=auth | {
        "content-type": "application/json"})
    assert bad_json.status_code == 422
    assert set(bad_json.json()["error"]) == {"code", "message", "field"}
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_journeys_are_listed_with_enrollment_counts(
    client: httpx.Client, auth: dict[str, str], db_engine: Engine, seed: Seeder
) -> None:
    with db_engine.begin() as conn:
        conn.execute(insert(JourneyState.__table__).values(  # type: ignore[attr-defined]
            journey_id="winback", version="v1", state="paused", priority=2, updated_at=T0))
    seed.enrollment(seed.user("u1"))
    seed.enrollment(seed.user("u2"), state="exited")
    journeys = client.get("/v1/journeys", headers=auth).json()["journeys"]
    assert journeys == [{
        "journey_id": "winback", "version": "v1", "state": "paused", "priority": 2,
        "last_schedule_run_at": None, "updated_at": "2026-03-02T02:00:00Z",
        "enrollments": {"active": 1, "exited": 1},
    }]


def test_healthz_checks_database_and_redis(client: httpx.Client, api_redis_url: str) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "db": "ok", "redis": "ok"}


@pytest.mark.sqlite_only
def test_healthz_says_which_dependency_is_down(
    client: httpx.Client, app: Any
) -> None:
    app.state.services.settings.redis_url = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["db"] == "ok" and response.json()["redis"].startswith("error:")


def test_metrics_read_the_store(client: httpx.Client, seed: Seeder, clock: Any) -> None:
    from datetime import timedelta

    enrollment = seed.enrollment(seed.user("u1"))
    seed.touch(enrollment, "sms", status="delivered")
    seed.touch(enrollment, "article", channel="wechat_article", status="suppressed",
               reason="cap:wechat_article", sent_at=None)
    seed.touch(enrollment, "invite", channel="wecom_group_invite", status="scheduled",
               sent_at=None, due_at=T0 - timedelta(seconds=90))
    text = client.get("/metrics").text
    assert 'recall_touches{channel="sms",status="delivered"} 1.0' in text
    assert 'recall_cap_rejections_total{channel="wechat_article"} 1.0' in text
    assert "recall_queue_lag_seconds 90.0" in text
    assert "recall_store_up 1.0" in text


@pytest.mark.sqlite_only
def test_openapi_lists_every_route(client: httpx.Client) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/v1/events", "/v1/journeys", "/v1/webhooks/payments/generic",
            "/v1/webhooks/payments/stripe", "/v1/webhooks/payments/wechatpay",
            "/v1/callbacks/twilio", "/v1/callbacks/wechat", "/v1/callbacks/wecom",
            "/s/{code}", "/l/{journey_id}", "/healthz", "/metrics"} <= paths
    assert client.get("/docs").status_code == 200


def test_exports_stream_touches_and_enrollments(
    client: httpx.Client, auth: dict[str, str], seed: Seeder
) -> None:
    enrollment = seed.enrollment(seed.user("u1"))
    seed.touch(enrollment, "sms", provider_message_id="SM1", cost=0.09)
    seed.touch(seed.enrollment(seed.user("u2"), journey_id="other"), "sms")
    jsonl = client.get("/v1/exports/touches", params={"journey_id": "winback"}, headers=auth)
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [(r["user_id"], r["provider_message_id"], r["sent_at"]) for r in lines] == [
        ("u1", "SM1", "2026-03-02T02:00:00Z")]
    csv_text = client.get("/v1/exports/enrollments", params={"format": "csv"},
                          headers=auth).text
    header, *rows = csv_text.splitlines()
    assert header.startswith("journey_id,enrollment_id,user_id,arm,variant,state")
    assert len(rows) == 2
    assert client.get("/v1/exports/users", headers=auth).status_code == 422


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("journey_id", "fallback", "exact"), [
    ("winback", "touches-winback.jsonl", "touches-winback.jsonl"),
    ("校园召回", "touches-____.jsonl", "touches-%E6%A0%A1%E5%9B%AD%E5%8F%AC%E5%9B%9E.jsonl"),
    ('a"b\\c', "touches-a_b_c.jsonl", "touches-a%22b%5Cc.jsonl"),
])
def test_an_export_names_its_file_whatever_the_journey_id(
    client: httpx.Client, auth: dict[str, str], journey_id: str, fallback: str, exact: str
) -> None:
    answer = client.get("/v1/exports/touches", params={"journey_id": journey_id}, headers=auth)
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="{fallback}"; filename*=UTF-8\'\'{exact}')


def test_a_database_outage_is_a_503_in_the_error_shape(
    settings: Any, clock: Any, api_server: Any, auth: dict[str, str]
) -> None:
    from orchestrator.api.app import create_app
    from orchestrator.store.db import make_engine

    swappable, url = api_server
    unreachable = make_engine("postgresql://postgres@127.0.0.1:1/none")
    swappable.app = create_app(settings, engine=unreachable, clock=clock)
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
            response = client.get("/v1/journeys", headers=auth)
    finally:
        swappable.app = None
        unreachable.dispose()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
