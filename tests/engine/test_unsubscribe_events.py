"""An ``unsubscribe`` event is an opt-out: the next send on that channel does not go out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from orchestrator.engine.importer import import_events
from orchestrator.engine.ingest import ingest_events
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Event
from tests.engine.conftest import T0
from tests.engine.test_policy_flow import enroll_all, rows, sms_journey, sms_sent_to

EVENTS = Event.__table__  # type: ignore[attr-defined]


def unsubscribe(event_id: str, user_id: str, channel: object) -> dict[str, object]:
    return {"event_id": event_id, "user_id": user_id, "name": "unsubscribe",
            "ts": T0.isoformat(), "value": None, "props": {"channel": channel}}


def test_unsubscribe_events_are_honoured_by_the_next_send(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, tmp_path: Path
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=4)
    # The API's ingest path (POST /v1/events) ...
    result = ingest_events(rt.db, [unsubscribe("x-1", "u0000", "sms")], now=T0,
                           journeys=rt.book)
    assert (result.accepted, result.rejected) == (1, [])
    # ... and `recall import events`.
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(unsubscribe("x-2", "u0001", "all")) + "\n"
                    + json.dumps(unsubscribe("x-3", "u0002", "wechat_article")) + "\n",
                    encoding="utf-8")
    report = import_events(rt.db, path, now=T0)
    assert (report.imported, report.errors) == (2, [])

    enroll_all(rt, "a", 4)
    run_until_idle(rt)
    by_user = {t.user_id: (t.status, t.reason) for t in rows(rt)}
    assert by_user == {
        "u0000": ("suppressed", "opted_out:sms"),
        "u0001": ("suppressed", "unsubscribed"),
        "u0002": ("sent", None),  # opted out of articles only
        "u0003": ("sent", None),
    }
    assert sms_sent_to(sandbox) == {"+8613800000002": 1, "+8613800000003": 1}


def test_an_unsubscribe_without_a_channel_is_rejected_and_not_stored(
    make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=1)
    events = [unsubscribe("x-1", "u0000", None), unsubscribe("x-2", "u0000", "email"),
              {**unsubscribe("x-3", "u0000", "sms"), "props": {}}]
    result = ingest_events(rt.db, events, now=T0)
    assert result.accepted == 0
    assert [r.index for r in result.rejected] == [0, 1, 2]
    assert all(r.error.startswith("props.channel: an unsubscribe event names the channel")
               for r in result.rejected)
    assert "'email'" in result.rejected[1].error
    with rt.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EVENTS)).scalar_one() == 0
