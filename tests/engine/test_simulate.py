"""``recall simulate``: the real stack (store, Redis, Celery worker, API, sandbox) on a
virtual clock, over the sample journeys and a synthetic campus."""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.audience.synth import generate, write_events_jsonl, write_users_csv
from orchestrator.config import Settings
from orchestrator.engine.simulate import simulate
from orchestrator.journeys.loader import load_all
from orchestrator.policy.audit import audit_store
from orchestrator.reports.export import rows
from orchestrator.store.tables import TOUCHES

REPO = Path(__file__).resolve().parents[2]
HISTORY_START = datetime(2026, 2, 1, tzinfo=UTC)
START = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
TERMINAL = {"sent", "delivered", "failed", "suppressed", "cancelled"}


@pytest.fixture
def population(tmp_path: Path) -> tuple[Path, Path]:
    users, events, _ = generate(300, days_of_history=35, start=HISTORY_START, seed=5)
    write_users_csv(tmp_path / "users.csv", users)
    write_events_jsonl(tmp_path / "events.jsonl", events)
    return tmp_path / "users.csv", tmp_path / "events.jsonl"


def settings_for(tmp_path: Path, db_engine: Engine, redis_url: str,
                 journeys: Path = REPO / "journeys") -> Settings:
    return Settings(
        _env_file=None, state_dir=tmp_path / "state", journeys_dir=journeys,
        templates_dir=REPO / "templates", redis_url=redis_url,
        database_url=db_engine.url.render_as_string(hide_password=False),
        celery_queue=f"recall-sim-{uuid.uuid4().hex[:8]}", api_keys="test-key",
    )


def test_simulate_runs_the_sample_journeys_over_virtual_days(
    tmp_path: Path, db_engine: Engine, engine_redis_url: str, population: tuple[Path, Path]
) -> None:
    users, events = population
    days = 4
    # The win-back journey has a seed list: its copies are sent, and counted nowhere.
    journeys = tmp_path / "journeys"
    shutil.copytree(REPO / "journeys", journeys)
    winback = journeys / "winback-at-risk.yaml"
    seeds = [line.split(",", 1)[0] for line in users.read_text().splitlines()[1:3]]
    winback.write_text(winback.read_text() + f"test_recipients: {seeds}\n")
    result = simulate(settings_for(tmp_path, db_engine, engine_redis_url, journeys),
                      days=days, start=START, users=users, events=events, seed=7)
    assert result.events_replayed > 0  # events after --start went through ingest
    touches = list(rows(db_engine, "touches"))
    enrollments = list(rows(db_engine, "enrollments"))
    assert touches and enrollments
    statuses = Counter(t["status"] for t in touches)
    assert result.touches == dict(statuses)  # the run's own summary counts no test send
    with db_engine.connect() as conn:
        copies = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.step_id, TOUCHES.c.status)
                              .where(TOUCHES.c.test.is_(True))).all()
    assert {u for u, _, _ in copies} == set(seeds)
    assert len(copies) == len({(u, s) for u, s, _ in copies})  # one per seed and step
    assert statuses["sent"] + statuses["delivered"] > 0
    end = START + timedelta(days=days)
    for t in touches:  # nothing lost: terminal, or waiting for a time after the run
        if t["status"] not in TERMINAL:
            assert t["status"] == "scheduled", t
            assert datetime.fromisoformat(t["due_at"].replace("Z", "+00:00")) > end - timedelta(
                minutes=1), t
    control = {e["enrollment_id"] for e in enrollments if e["arm"] == "control"}
    assert control, "the holdout is enrolled too"
    assert not [t for t in touches if t["enrollment_id"] in control]
    assert sum(result.actions.values()) > 0  # simulated people answered
    # An independent audit of every send: no cap, quiet-hour or consent violation.
    journeys, policy = load_all(REPO / "journeys", REPO / "templates")
    violations = audit_store(db_engine, policy=policy, journey_policies={
        j.id: policy.tightened_by(j.policy) for j in journeys})
    assert violations == []
