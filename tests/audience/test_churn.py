from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sqlalchemy import Engine

from orchestrator.audience.churn import (
    ChurnMetrics,
    calibrated_for,
    calibration_table,
    churn_labels,
    evaluate,
    expected_calibration_error,
    load_model,
    recency_rule,
    score,
    train,
)
from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import FeatureFrame, compute_features
from orchestrator.audience.synth import Population, simulate
from orchestrator.errors import InputError
from tests.audience.conftest import SYNTH_START
from tests.audience.helpers import T, add_events, days_ago, ev, load_population

CUTOFF = SYNTH_START + timedelta(days=32)
HORIZON = timedelta(days=14)
EVAL_CUTOFF = CUTOFF + HORIZON  # label window ends on day 60, the end of the history


def _truth_auc(engine: Engine, population: Population, frame: FeatureFrame) -> float:
    """AUC of the true probabilities on exactly the users and labels the models face."""
    y = churn_labels(engine, cutoff=EVAL_CUTOFF, horizon=HORIZON, user_ids=frame.user_ids,
                     config=AudienceConfig())
    truth = population.truth_at(EVAL_CUTOFF, HORIZON.days)
    return float(roc_auc_score(y, [truth[u] for u in frame.user_ids.tolist()]))


def _assert_calibration_adds_up(metrics: ChurnMetrics, predictions: np.ndarray) -> None:
    rows = metrics.calibration
    assert [r.decile for r in rows] == list(range(1, 11))
    assert sum(r.n for r in rows) == metrics.n == len(predictions)
    assert max(r.n for r in rows) - min(r.n for r in rows) <= 1
    assert sum(r.n * r.observed_rate for r in rows) == pytest.approx(metrics.positives)
    assert sum(r.n * r.mean_predicted for r in rows) == pytest.approx(predictions.sum())
    means = [r.mean_predicted for r in rows]
    assert means == sorted(means)


def test_models_beat_the_recency_rule_and_stay_below_the_truth(
    db_engine: Engine, population: Population, tmp_path: Path
) -> None:
    load_population(db_engine, population)
    everyone = compute_features(db_engine, cutoff=EVAL_CUTOFF)
    eval_frame = everyone.select(~np.isnan(everyone["recency_days"]))  # seen active
    truth_auc = _truth_auc(db_engine, population, eval_frame)
    for kind in ("logreg", "gbm"):
        model = train(db_engine, cutoff=CUTOFF, horizon=HORIZON, model=kind, models_dir=tmp_path)
        m = model.metrics
        assert model.eval_cutoff == EVAL_CUTOFF and model.train_rows > 3_000
        assert m.auc >= m.recency_auc - 0.005, (kind, m.auc, m.recency_auc)
        assert m.auc > m.rule_auc
        assert m.auc <= truth_auc + 0.005, (kind, m.auc, truth_auc)
        assert m.brier < m.rule_brier
        assert 1.0 < m.top_decile_lift <= 1 / m.base_rate + 1e-9
        _assert_calibration_adds_up(m, model.predict(eval_frame))

    # The last model trained is the latest; its artifact carries metrics and features.
    latest = load_model(models_dir=tmp_path)
    assert latest is not None and latest.kind == "gbm" and latest.path == model.path
    assert (tmp_path / "latest").read_text().strip() == model.path.name
    summary = json.loads(model.path.with_suffix(".json").read_text())
    assert summary["metrics"]["auc"] == pytest.approx(model.metrics.auc)
    assert summary["feature_names"] == model.feature_names
    assert len(list(tmp_path.glob("churn-*-logreg-*.joblib"))) == 1
    scores = score(db_engine, at=EVAL_CUTOFF, models_dir=tmp_path)
    assert list(scores) == everyone.user_ids.tolist()
    assert list(scores.values()) == pytest.approx(latest.predict(everyone).tolist())
    assert len(scores) == len(population.users)


def test_without_a_model_scores_are_the_recency_rule(db_engine: Engine, tmp_path: Path) -> None:
    add_events(db_engine, [ev("a", "login", days_ago(3)), ev("b", "login", days_ago(45)),
                           ev("c", "payment_failed", days_ago(1))])
    scores = score(db_engine, at=T, models_dir=tmp_path / "none")
    assert scores == pytest.approx({"a": 0.1, "b": 1.0, "c": 1.0})
    frame = compute_features(db_engine, cutoff=T)
    assert recency_rule(frame, AudienceConfig()).tolist() == pytest.approx([0.1, 1.0, 1.0])


@pytest.fixture
def small_history(sqlite_engine: Engine) -> Engine:
    pop = simulate(400, days_of_history=40, start=SYNTH_START, seed=3)
    load_population(sqlite_engine, pop)
    return sqlite_engine


def test_the_evaluation_window_must_fit_in_the_data(small_history: Engine) -> None:
    late = SYNTH_START + timedelta(days=20)
    with pytest.raises(InputError, match=r"the evaluation label window \(.*\] ends after the "
                                         r"data, which ends at 2026-02-13T16:00:00\+00:00"):
        train(small_history, cutoff=late, horizon=HORIZON, save=False)


def test_the_evaluation_must_be_held_out_in_time(small_history: Engine) -> None:
    cutoff = SYNTH_START + timedelta(days=5)
    with pytest.raises(InputError, match="before the end of the training label window"):
        train(small_history, cutoff=cutoff, horizon=HORIZON, save=False,
              eval_cutoff=cutoff + timedelta(days=7))


def test_too_few_users_are_refused(sqlite_engine: Engine) -> None:
    add_events(sqlite_engine, [ev(u, "login", days_ago(k)) for u in "abc" for k in (1, 30, 50)])
    with pytest.raises(InputError, match=r"only \d+ rows of active users; need at least 50"):
        train(sqlite_engine, cutoff=days_ago(40), horizon=HORIZON, save=False)


def test_unknown_model_and_empty_store_are_refused(sqlite_engine: Engine) -> None:
    with pytest.raises(InputError, match="unknown model 'forest'; use one of logreg, gbm"):
        train(sqlite_engine, cutoff=T, horizon=HORIZON, model="forest", save=False)
    with pytest.raises(InputError, match="no activity events in the store; import events"):
        train(sqlite_engine, cutoff=T, horizon=HORIZON, save=False)


def test_a_single_label_class_is_refused(sqlite_engine: Engine) -> None:
    # Everyone is active every day: nobody churns in any window.
    users = [f"u{i}" for i in range(30)]
    add_events(sqlite_engine, [ev(u, "login", days_ago(k)) for u in users for k in range(60)])
    with pytest.raises(InputError, match=r"the training windows at .*: all 90 rows have the "
                                         r"same label \(active\)"):
        train(sqlite_engine, cutoff=days_ago(40), horizon=HORIZON, save=False)


def test_scores_stay_calibrated_sixty_days_after_training(sqlite_engine: Engine) -> None:
    """Trained at T, scored at T + 60 d on a drifting campus (later cohorts sparser, the
    population ageing): calibrated within 0.02 and ahead of the recency rule by 0.02."""
    campus = simulate(8_000, days_of_history=120, start=SYNTH_START, seed=11)
    load_population(sqlite_engine, campus)
    cutoff, later = SYNTH_START + timedelta(days=46), SYNTH_START + timedelta(days=106)
    model = train(sqlite_engine, cutoff=cutoff, horizon=HORIZON, model="gbm",
                  eval_cutoff=later, save=False)
    m = model.metrics

    # The same model without recalibration, and the truth, on the same users and labels.
    config = AudienceConfig()
    frame = compute_features(sqlite_engine, cutoff=later, config=config)
    frame = frame.select(~np.isnan(frame["recency_days"]))
    y = churn_labels(sqlite_engine, cutoff=later, horizon=HORIZON, user_ids=frame.user_ids,
                     config=config)
    as_trained = evaluate(y, model.predict(frame), frame, config)
    truth = campus.truth_at(later, HORIZON.days)
    true_p = np.array([truth[u] for u in frame.user_ids.tolist()])
    print(
        f"\nchurn at T + 60 d: {m.n} users, {m.base_rate:.1%} churned; model gbm AUC "
        f"{m.auc:.4f} Brier {m.brier:.4f} ECE {m.ece:.4f} (as trained, not recalibrated: "
        f"ECE {as_trained.ece:.4f}); recency rule AUC {m.recency_rule_auc:.4f}, recency in "
        f"days AUC {m.recency_auc:.4f}; truth AUC {roc_auc_score(y, true_p):.4f} ECE "
        f"{expected_calibration_error(calibration_table(y, true_p)):.4f}"
    )
    assert m.n == len(frame) and model.origins[0] == cutoff and len(model.origins) == 4
    assert m.ece <= 0.02
    assert m.auc >= m.recency_rule_auc + 0.02
    assert m.ece < as_trained.ece  # recalibration on the latest labelled window helps
    # Scoring at T + 60 d calibrates on the windows labelled by then.
    scorer = calibrated_for(sqlite_engine, model, later + timedelta(hours=5))
    assert scorer.calibrated_at == later - HORIZON and scorer.calibration_rows > m.n
    assert calibrated_for(sqlite_engine, model, cutoff + HORIZON) is model
