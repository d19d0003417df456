"""Audience fixtures. Databases come from the shared ``db_engine`` fixture (SQLite and
PostgreSQL in turn); nothing here needs Redis."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator.audience.synth import Population, simulate
from orchestrator.config import get_settings

CHINA = timezone(timedelta(hours=8))
SYNTH_START = datetime(2026, 1, 5, tzinfo=CHINA)


@pytest.fixture(scope="session")
def population() -> Population:
    """5,000 students, 60 days, fixed seed: the churn-model benchmark fixture."""
    return simulate(5_000, days_of_history=60, start=SYNTH_START, seed=11)


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings whose state and journeys directories live in ``tmp_path``."""
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(tmp_path / "journeys"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
