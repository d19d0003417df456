"""A hand-built journey with known answers: enrollments in both arms (with re-entries),
touches of three steps with statuses, reasons and costs, conversions with values, WeCom
tasks of three senders; plus rows of another journey that must not count."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from orchestrator.engine.book import JourneyBook
from orchestrator.journeys.model import Journey, Policy
from orchestrator.store.tables import CONVERSIONS, ENROLLMENTS, EVENTS, TOUCHES
from orchestrator.store.tables import SEND_BATCHES as BATCHES
from tests.support import jpeg

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
JOURNEY_ID = "report-demo"
OTHER = "other-journey"

POLICY_YAML = """\
timezone: Asia/Shanghai
sms:
  signature: "【校园外卖】"
  opt_out_suffix: "拒收请回复R"
  price_per_segment: 0.045
"""
JOURNEY_YAML = """\
id: report-demo
name: 报告演示
entry: { event: payment_failed }
holdout: 30%
goal: { event: order_placed, within: 7d }
steps:
  - id: article
    send: wechat_article
    template: demo/article.j2
    cover: demo/cover.jpg
  - wait: 1d
  - id: invite
    send: wecom_group_invite
    template: demo/invite.j2
    group: campus-deals
  - wait: 1d
  - id: sms
    send: sms
    template: demo/sms.j2
    fallback: wechat_article
"""
TEMPLATES: dict[str, str | bytes] = {
    "demo/article.j2": '{% set title = "好久不见" %}<p>同学你好</p>\n',
    "demo/invite.j2": "进群领红包\n",
    "demo/sms.j2": "8元券已到账\n",
    "demo/cover.jpg": jpeg(),
}


@dataclass
class Dataset:
    engine: Engine
    journey: Journey
    policy: Policy


def write_journeys(root: Path) -> tuple[Path, Path]:
    """The journey files above under ``root``; returns (journeys dir, templates dir)."""
    journeys, templates = root / "journeys", root / "templates"
    journeys.mkdir(parents=True)
    (journeys / "policy.yaml").write_text(POLICY_YAML, encoding="utf-8")
    (journeys / f"{JOURNEY_ID}.yaml").write_text(JOURNEY_YAML, encoding="utf-8")
    for name, text in TEMPLATES.items():
        (templates / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (templates / name).write_bytes(text)
        else:
            (templates / name).write_text(text, encoding="utf-8")
    return journeys, templates


def _enrollment(id_: int, user: str, arm: str, entered: datetime,
                converted: datetime | None = None, journey_id: str = JOURNEY_ID) -> dict[str, Any]:
    return {"id": id_, "journey_id": journey_id, "journey_version": "v1", "user_id": user,
            "arm": arm, "state": "completed", "entered_at": entered, "converted_at": converted,
            "cursor": 0, "data": {}}


def _touch(enrollment_id: int, user: str, step: str, channel: str, status: str,
           **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "enrollment_id": enrollment_id, "journey_id": JOURNEY_ID, "journey_version": "v1",
        "user_id": user, "arm": "treatment", "step_id": step, "channel": channel,
        "planned_channel": channel, "variant": None, "rung_arm": None, "priority": 0,
        "status": status,
        "reason": None, "due_at": T0, "attempts": 0, "batch_id": None, "sent_at": None,
        "delivered_at": None, "clicked_at": None, "joined_at": None, "converted_at": None,
        "segments": 0, "cost": 0.0, "test": False,
    }
    return row | fields


def _conversion(enrollment_id: int, user: str, arm: str, value: float | None,
                journey_id: str = JOURNEY_ID) -> dict[str, Any]:
    return {"enrollment_id": enrollment_id, "journey_id": journey_id, "user_id": user,
            "arm": arm, "event_id": f"ev-{enrollment_id}", "converted_at": T0 + timedelta(days=2),
            "value": value, "touch_id": None}


def _batch(id_: str, sender: str | None, state: str, created: datetime,
           confirmed: datetime | None, journey_id: str = JOURNEY_ID) -> dict[str, Any]:
    return {"id": id_, "channel": "wecom_group_invite", "journey_id": journey_id,
            "step_id": "invite", "state": state, "attempts": 1, "sender": sender,
            "result": {}, "payload": {}, "created_at": created, "confirmed_at": confirmed}


D2 = T0 + timedelta(days=2)
LATER = T0 + timedelta(days=10)
ENROLLMENT_ROWS = [
    # control: c1 (converts on re-entry), c2 converts, c3, c4 do not → 2 of 4 users
    _enrollment(1, "c1", "control", T0), _enrollment(2, "c2", "control", T0, D2),
    _enrollment(3, "c3", "control", T0), _enrollment(4, "c4", "control", T0),
    _enrollment(5, "c1", "control", LATER, LATER + timedelta(days=1)),
    # treatment: t1 converts twice (counted once), t2..t5 convert → 5 of 8 users
    *(_enrollment(10 + i, f"t{i}", "treatment", T0, D2 if i <= 5 else None)
      for i in range(1, 9)),
    _enrollment(19, "t1", "treatment", LATER, LATER + timedelta(days=1)),
    _enrollment(30, "t1", "treatment", T0, D2, journey_id=OTHER),
]
CONVERSION_ROWS = [
    _conversion(2, "c2", "control", 20.0), _conversion(5, "c1", "control", 10.0),
    _conversion(11, "t1", "treatment", 30.0), _conversion(19, "t1", "treatment", 30.0),
    _conversion(12, "t2", "treatment", 25.0), _conversion(13, "t3", "treatment", 15.0),
    _conversion(14, "t4", "treatment", None), _conversion(15, "t5", "treatment", 20.0),
    _conversion(30, "t1", "treatment", 999.0, journey_id=OTHER),
]
ART, INV, SMS = "wechat_article", "wecom_group_invite", "sms"
TOUCH_ROWS = [
    _touch(11, "t1", "article", ART, "delivered", delivered_at=D2, clicked_at=D2),
    _touch(12, "t2", "article", ART, "delivered", delivered_at=D2, clicked_at=D2, converted_at=D2),
    _touch(13, "t3", "article", ART, "sent"),
    _touch(14, "t4", "article", ART, "sent"),
    _touch(15, "t5", "article", ART, "suppressed", reason="cap:wechat_article"),
    _touch(16, "t6", "article", ART, "suppressed", reason="no_consent"),
    _touch(17, "t7", "article", ART, "failed", reason="not_followed"),
    _touch(18, "t8", "article", ART, "suppressed", reason="cap:wechat_article"),
    _touch(19, "t1", "article", ART, "scheduled"),
    _touch(11, "t1", "invite", INV, "delivered", delivered_at=D2, joined_at=D2, batch_id="b1"),
    _touch(12, "t2", "invite", INV, "sent", batch_id="b1"),
    _touch(13, "t3", "invite", INV, "failed", reason="unconfirmed", batch_id="b2"),
    _touch(14, "t4", "invite", INV, "failed", reason="unconfirmed", batch_id="b2"),
    _touch(17, "t7", "invite", INV, "suppressed"),
    _touch(11, "t1", "sms", SMS, "delivered", delivered_at=D2, clicked_at=D2, converted_at=D2,
           segments=2, cost=0.09),
    _touch(13, "t3", "sms", SMS, "sent", converted_at=D2, segments=1, cost=0.045),
    _touch(16, "t6", "sms", SMS, "failed", reason="provider:30003", segments=1, cost=0.045),
    _touch(17, "t7", "sms", SMS, "suppressed", reason="sms_opt_out"),
    _touch(18, "t8", "sms", SMS, "delivered", delivered_at=D2, segments=1, cost=0.045),
    _touch(14, "t4", "sms", ART, "sent", planned_channel=SMS),  # fell back to the article
    _touch(30, "t1", "sms", SMS, "delivered", journey_id=OTHER, cost=5.0),
]
BATCH_ROWS = [
    _batch("b1", "alice", "sent", T0 + timedelta(days=1), T0 + timedelta(days=1, minutes=30)),
    _batch("b2", "bob", "sent", T0 + timedelta(days=1), T0 + timedelta(days=1, hours=2)),
    _batch("b3", "alice", "sent", T0 + timedelta(days=2), T0 + timedelta(days=2, minutes=90)),
    _batch("b4", None, "sent", T0 + timedelta(days=2), None),
    _batch("b5", "alice", "failed", T0 + timedelta(days=2), None),
    _batch("b6", "alice", "sent", T0, T0 + timedelta(minutes=1), journey_id=OTHER),
]


def _event(user: str, name: str, at: datetime) -> dict[str, Any]:
    return {"event_id": f"{user}-{name}-{at.isoformat()}", "user_id": user, "name": name,
            "ts": at, "value": None, "props": {}}


DAY = timedelta(days=1)
# Activity after entry (T0 for everyone's first entry): retention windows 7d and 30d are
# days 1-7 (T0, T0 + 7d] and days 8-30 (T0 + 7d, T0 + 30d].
EVENT_ROWS = [
    _event("c1", "login", T0 + DAY),                  # window 1
    _event("c2", "order_placed", T0 + 2 * DAY),       # window 1
    _event("c2", "session", T0 + 8 * DAY),            # window 2
    _event("c3", "login", T0 - DAY),                  # before entry: not retention
    _event("c3", "payment_failed", T0 + 3 * DAY),     # not an activity event
    _event("t1", "login", T0 + 7 * DAY),              # window 1 (its end is inside)
    _event("t1", "login", T0 + 7 * DAY + timedelta(seconds=1)),  # window 2
    _event("t2", "session", T0 + 20 * DAY),           # window 2
    _event("t3", "login", T0),                        # at entry itself: not after it
    _event("t4", "login", T0 + 6 * DAY),              # window 1
    _event("t5", "session", T0 + 29 * DAY),           # window 2
    _event("t6", "login", T0 + 31 * DAY),             # after the last window
    _event("t8", "login", T0 + timedelta(hours=1)),   # window 1
]


def seed(engine: Engine) -> None:
    """Insert the dataset in bulk (SQLAlchemy Core, one statement per table)."""
    with engine.begin() as conn:
        conn.execute(insert(EVENTS), EVENT_ROWS)
        conn.execute(insert(ENROLLMENTS), ENROLLMENT_ROWS)
        conn.execute(insert(CONVERSIONS), CONVERSION_ROWS)
        conn.execute(insert(TOUCHES), TOUCH_ROWS)
        conn.execute(insert(BATCHES), BATCH_ROWS)


@pytest.fixture
def journey_dirs(tmp_path: Path) -> tuple[Path, Path]:
    return write_journeys(tmp_path)


@pytest.fixture
def dataset(db_engine: Engine, journey_dirs: tuple[Path, Path], tmp_path: Path) -> Dataset:
    book = JourneyBook(*journey_dirs, tmp_path / "state", "Asia/Shanghai")
    journey = book.latest(JOURNEY_ID)
    seed(db_engine)
    return Dataset(db_engine, journey, book.policy_for(journey))
