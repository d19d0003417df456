from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.audience.synth import simulate
from orchestrator.cli import app
from orchestrator.config import get_settings
from orchestrator.store import migrate
from orchestrator.store.db import get_engine, make_engine
from tests.audience.conftest import SYNTH_START
from tests.audience.helpers import load_population

runner = CliRunner()


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, students: int) -> Iterator[Path]:
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    monkeypatch.setenv("RECALL_DATABASE_URL", url)
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(tmp_path / "journeys"))
    get_settings.cache_clear()
    engine = make_engine(url)
    migrate.upgrade(engine)
    load_population(engine, simulate(students, days_of_history=45, start=SYNTH_START, seed=8))
    engine.dispose()
    yield tmp_path
    get_engine().dispose()
    get_settings.cache_clear()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A SQLite store with 45 days of a 1,500-student campus (2026-01-05 … 2026-02-18)."""
    yield from _store(tmp_path, monkeypatch, 1_500)


@pytest.fixture
def small_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from _store(tmp_path, monkeypatch, 100)


def test_segment_train_and_score(store: Path) -> None:
    result = runner.invoke(app, ["segment", "--at", "2026-02-19"])
    assert result.exit_code == 0, result.output
    assert "1,500 users segmented at 2026-02-19 00:00 CST" in result.stdout
    for tier in ("active", "low_frequency", "at_risk", "churned"):
        assert tier in result.stdout

    result = runner.invoke(
        app, ["churn", "train", "--cutoff", "2026-01-22", "--horizon", "10d", "--model", "gbm"]
    )
    assert result.exit_code == 0, result.output
    for text in ("churn model gbm", "horizon 10d", "held out at 2026-02-01 00:00", "AUC",
                 "Brier", "ECE", "recency rule", "recency in days", "no activity for 7d",
                 "training windows: 2026-01-22, 2026-01-15, 2026-01-08",
                 "isotonic calibration on the latest window", "top-decile lift",
                 "now the latest"):
        assert text in result.stdout, text
    assert len(list((store / "state" / "models").glob("churn-*-gbm-*.joblib"))) == 1

    out = store / "scores.csv"
    result = runner.invoke(app, ["churn", "score", "--at", "2026-02-19", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["user_id", "churn_score"] and len(rows) == 1 + 1_500
    assert all(0.0 <= float(score) <= 1.0 for _, score in rows[1:])
    assert "wrote 1,500 scores" in result.stderr


def test_training_too_close_to_the_end_of_the_data_says_why(small_store: Path) -> None:
    result = runner.invoke(app, ["churn", "train", "--cutoff", "2026-02-10", "--horizon", "10d"])
    assert result.exit_code == 1
    assert "recall churn train: the evaluation label window" in result.stderr
    assert "ends after the data" in result.stderr


def test_bad_duration_and_date_are_usage_errors(small_store: Path) -> None:
    result = runner.invoke(app, ["churn", "train", "--cutoff", "2026-01-22", "--horizon", "ten"])
    assert result.exit_code == 2 and "bad duration 'ten'" in result.output
    result = runner.invoke(app, ["churn", "score", "--at", "soon", "--out", "x.csv"])
    assert result.exit_code == 2 and "'soon' is not a date" in result.output
