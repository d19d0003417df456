"""After a Redis restart the caps come back from SQL before anything is granted."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import sqlalchemy as sa
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from orchestrator.config import get_settings
from orchestrator.errors import RetryLater
from orchestrator.policy.caps import (
    CapsNeedRebuild,
    CapsRebuildInterrupted,
    CapStore,
    HeldReservation,
    touch_key,
)
from orchestrator.policy.cli import register
from orchestrator.policy.rebuild import count_held, held_reservations, rebuild_from_store
from orchestrator.policy.reference import ReferenceCaps
from orchestrator.policy.rules import CapRule
from orchestrator.store.models import Touch

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
POLICY = [
    CapRule.per("global", None, 3, "7d"),
    CapRule.per("sms", "sms", 2, "7d"),
    CapRule.per("wecom_group_invite", "wecom_group_invite", 1, "day"),
]
USERS = ("u1", "u2", "u3")
CHANNELS = ("wechat_article", "wecom_group_invite", "sms")


def touch_row(
    enrollment_id: int, user: str, channel: str, status: str, **extra: Any
) -> dict[str, Any]:
    # Every row names the same columns: a multi-row insert takes its columns from the first.
    row = dict(
        enrollment_id=enrollment_id, journey_id="winback", journey_version="v1", user_id=user,
        step_id=channel, channel=channel, status=status, due_at=T0, reserved_at=None,
        test=False, reason=None,
    )  # fmt: skip
    return row | extra


def insert_touches(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(Touch.__table__), rows)  # type: ignore[attr-defined]


def send_like_the_engine(engine: Engine, caps: CapStore, count: int, seed: int = 7) -> int:
    """Reserve touches as the engine would and record them in SQL; returns how many hold."""
    rng = random.Random(seed)
    rows, holding = [], 0
    for n in range(count):
        user, channel = rng.choice(USERS), rng.choice(CHANNELS)
        at = T0 + timedelta(hours=rng.randrange(0, 10 * 24))
        key = touch_key(n, channel)
        decision = caps.reserve(person=user, channel=channel, key=key, now=at, rules=POLICY, tz=TZ)
        if not decision.ok:
            rows.append(touch_row(n, user, channel, "suppressed", reason=f"capped:{decision.cap}"))
            continue
        status = rng.choice(["sending", "unknown", "sent", "delivered", "failed"])
        if status == "failed":  # a definite rejection releases the slot
            caps.release(person=user, channel=channel, key=key)
        else:
            holding += 1
        rows.append(touch_row(n, user, channel, status, reserved_at=at))
    # Rows that hold nothing: a test send, a scheduled touch, a cancelled one.
    rows.append(touch_row(900, "u1", "sms", "sent", reserved_at=T0, test=True))
    rows.append(touch_row(901, "u1", "sms", "scheduled"))
    rows.append(touch_row(902, "u2", "sms", "cancelled", reserved_at=T0))
    insert_touches(engine, rows)
    return holding


def held_by_user(caps: CapStore) -> dict[str, list[HeldReservation]]:
    return {user: caps.held(user) for user in USERS}


def test_caps_are_rebuilt_from_held_touches(
    db_engine: Engine, caps: CapStore, policy_redis: redis.Redis
) -> None:
    holding = send_like_the_engine(db_engine, caps, count=60)
    before = held_by_user(caps)
    full_user = next(u for u, held in before.items() if len(held) >= 3)
    probe = dict(person=full_user, channel="sms", key="probe", now=before[full_user][-1].at,
                 rules=POLICY, tz=TZ)  # fmt: skip
    refused_before = caps.reserve(**probe)  # type: ignore[arg-type]
    assert not refused_before.ok

    policy_redis.flushdb()  # the local Redis keeps nothing on disk: a restart is a flush
    with pytest.raises(CapsNeedRebuild):
        caps.reserve(**probe)  # type: ignore[arg-type]
    assert count_held(db_engine) == holding
    assert rebuild_from_store(db_engine, caps) == holding

    assert held_by_user(caps) == before
    assert caps.reserve(**probe) == refused_before  # type: ignore[arg-type]
    # Every later decision is what the reference model says from the same held touches.
    model = ReferenceCaps()
    model.rebuild(h for held in before.values() for h in held)
    rng = random.Random(3)
    for n in range(40):
        at = T0 + timedelta(hours=rng.randrange(0, 20 * 24))
        person, channel = rng.choice(USERS), rng.choice(CHANNELS)
        request = dict(
            person=person, channel=channel, key=f"later:{n}", now=at, rules=POLICY, tz=TZ
        )
        assert caps.reserve(**request) == model.reserve(**request)  # type: ignore[arg-type]


def test_held_reservations_read_only_held_non_test_touches(db_engine: Engine) -> None:
    rows = [touch_row(n, "u1", "sms", status, reserved_at=T0 + timedelta(days=n))
            for n, status in enumerate(["sending", "unknown", "sent", "delivered", "failed",
                                        "suppressed", "cancelled", "claimed"])]  # fmt: skip
    rows.append(touch_row(50, "u1", "sms", "sent", reserved_at=T0, test=True))
    rows.append(touch_row(51, "u1", "sms", "claimed"))  # claimed, not being reserved
    insert_touches(db_engine, rows)
    held = list(held_reservations(db_engine))
    # A claimed touch with a reservation mark is being gated: loaded, provisionally.
    assert sorted((h.key, h.at, h.provisional) for h in held) == [
        *[(f"{n}:sms", T0 + timedelta(days=n), False) for n in range(4)],
        ("7:sms", T0 + timedelta(days=7), True),
    ]
    assert count_held(db_engine, since=T0 + timedelta(days=2)) == 3


def test_reset_drops_reservations_sql_does_not_hold(caps: CapStore) -> None:
    caps.reserve(person="u1", channel="sms", key="leaked", now=T0, rules=POLICY, tz=TZ)
    sql = [HeldReservation("u1", "sms", "1:sms", T0)]
    caps.rebuild(sql)
    assert {h.key for h in caps.held("u1")} == {"leaked", "1:sms"}
    caps.rebuild(sql, reset=True)
    assert [h.key for h in caps.held("u1")] == ["1:sms"]


def test_one_rebuild_at_a_time(caps: CapStore, policy_redis: redis.Redis) -> None:
    policy_redis.set("recall:cap:rebuild-lock", "someone-else")
    with pytest.raises(RetryLater, match="a caps rebuild is in progress elsewhere"):
        caps.rebuild([])


def test_a_rebuild_interrupted_by_a_restart_grants_nothing(
    empty_caps: CapStore, policy_redis: redis.Redis
) -> None:
    held = [HeldReservation("u1", "sms", f"{n}:sms", T0) for n in range(3)]

    def redis_restarts(_: int) -> None:
        policy_redis.flushdb()

    with pytest.raises(CapsRebuildInterrupted, match="lost its lock .* run the rebuild again"):
        empty_caps.rebuild(held, progress=redis_restarts)
    assert empty_caps.epoch() is None
    with pytest.raises(CapsNeedRebuild):
        empty_caps.reserve(person="u1", channel="sms", key="x", now=T0, rules=POLICY, tz=TZ)


@pytest.fixture
def cli_env(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caps_redis_url: str
) -> Iterator[Engine]:
    monkeypatch.setenv("RECALL_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("RECALL_REDIS_URL", caps_redis_url)
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield sqlite_engine
    get_settings.cache_clear()


def test_recall_caps_rebuild_and_status(cli_env: Engine, empty_caps: CapStore) -> None:
    insert_touches(cli_env, [touch_row(1, "u1", "sms", "sent", reserved_at=T0)])
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    missing = runner.invoke(app, ["caps", "status"])
    assert missing.exit_code == 0, missing.output
    assert missing.stdout.startswith("caps rebuild pending: Redis holds no caps yet")
    assert "the worker rebuilds them from SQL before it grants any reservation" in missing.stdout

    rebuilt = runner.invoke(app, ["caps", "rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "caps rebuilt: 1 held reservations loaded under recall:cap" in rebuilt.output
    assert empty_caps.held("u1") == [HeldReservation("u1", "sms", "1:sms", T0)]

    status = runner.invoke(app, ["caps", "status"])
    assert status.exit_code == 0 and status.stdout.startswith("caps ready: {")
    assert '"reservations": 1' in status.stdout


def test_caps_status_says_what_the_worker_will_do(cli_env: Engine, empty_caps: CapStore,
                                                  policy_redis: redis.Redis) -> None:
    """A marker from another server is a pending rebuild, a held lock a running one."""
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    policy_redis.set(empty_caps.epoch_key, '{"epoch": "x", "run_id": "another-server"}')
    restored = runner.invoke(app, ["caps", "status"])
    assert restored.exit_code == 0, restored.output
    assert "caps rebuild pending: the rebuild marker names another Redis server" in restored.stdout

    policy_redis.set("recall:cap:rebuild-lock", "someone")
    rebuilding = runner.invoke(app, ["caps", "status"])
    assert (rebuilding.exit_code, rebuilding.stdout.split(":")[0]) == (0, "caps rebuilding")



def test_caps_status_fails_when_redis_does_not_answer(
    cli_env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = typer.Typer()
    register(app)
    monkeypatch.setenv("RECALL_REDIS_URL", "redis://127.0.0.1:9/0")  # discard port: refused
    get_settings.cache_clear()
    down = CliRunner().invoke(app, ["caps", "status"])
    assert down.exit_code == 1
    assert down.stderr.startswith("recall caps status: Error ")
