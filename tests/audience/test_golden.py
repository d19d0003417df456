from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator.audience.churn import train
from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import EVENTS, Frames, compute_features
from orchestrator.audience.golden import Signal, detect, detect_signals, write_signals
from orchestrator.audience.refresh import refresh
from orchestrator.audience.synth import Population
from orchestrator.store.tables import USER_FEATURES
from tests.audience.conftest import SYNTH_START
from tests.audience.helpers import T, add_events, days_ago, ev, load_population

CONFIG = AudienceConfig()  # drop ≥ 50 % over 7 d vs 28 d; 2 h after a failure; score ≥ 0.6


def _daily(user: str, first: int, last: int) -> list[dict[str, object]]:
    """One login a day, ``first`` … ``last`` days before T, at local noon (mid-day)."""
    return [ev(user, "login", days_ago(k, hours=12)) for k in range(first, last + 1)]


@pytest.fixture
def golden(db_engine: Engine) -> Engine:
    add_events(db_engine, [
        # Drop starts at T: 3 of the last 7 days active (vs 7 expected) — a day earlier 4.
        *_daily("dropper", 4, 39),
        *_daily("steady", 0, 39),
        *_daily("long_gone", 20, 50),  # dropped long ago: the drop is not new
        ev("sparse", "order_placed", days_ago(9), 20.0),  # 2 baseline days: not judged
        ev("sparse", "order_placed", days_ago(25), 20.0),
        # Payment failures (none of these users is otherwise active).
        ev("ripe", "payment_failed", days_ago(0, hours=3), 25.0),
        ev("fresh", "payment_failed", days_ago(0, hours=1), 25.0),
        ev("recovered", "payment_failed", days_ago(0, hours=5), 25.0),
        ev("recovered", "order_placed", days_ago(0, hours=4), 25.0),
        ev("stale", "payment_failed", days_ago(4, hours=5), 25.0),
        # Recency rule min(1, r / 30 d) crosses 0.6 at 18 days of silence.
        ev("crosser", "login", days_ago(18, hours=1)),
        ev("above", "login", days_ago(25)),
        ev("below", "login", days_ago(17, hours=22)),
    ])
    return db_engine


def _fired(signals: list[Signal]) -> list[tuple[str, str]]:
    return [(s.name, s.user_id) for s in signals]


def test_detectors_fire_exactly_where_expected(golden: Engine, tmp_path: Path) -> None:
    signals = detect_signals(golden, at=T, config=CONFIG, models_dir=tmp_path)
    assert _fired(signals) == [
        ("activity_drop", "dropper"),
        ("churn_score", "crosser"),
        ("payment_failure", "ripe"),
    ]
    drop, churn, payment = signals
    assert drop.event_id == "signal.activity_drop:dropper:2026-03-10"  # local date of T
    assert drop.ts == T
    assert drop.props == {"drop_pct": 57.1, "recent_active_days": 3,
                          "baseline_active_days": 28, "recent_days": 7, "baseline_days": 28}
    assert churn.props == {"churn_score": pytest.approx((18 + 1 / 24) / 30),
                           "previous": pytest.approx((17 + 1 / 24) / 30), "threshold": 0.6}
    # The golden moment is 2 h after the failure; the id carries the failure's local date.
    assert payment.ts == days_ago(0, hours=1)
    assert payment.event_id == "signal.payment_failure:ripe:2026-03-09"


def test_thresholds_and_switches_come_from_config(golden: Engine, tmp_path: Path) -> None:
    config = AudienceConfig.model_validate({"golden": {
        "activity_drop": {"min_drop_pct": 60},  # the dropper fell 57 %
        "payment_failure": {"after_hours": 0.5},  # now "fresh" (1 h ago) is ripe too
        "churn_score": {"enabled": False},
    }})
    signals = detect_signals(golden, at=T, config=config, models_dir=tmp_path)
    assert _fired(signals) == [("payment_failure", "fresh"), ("payment_failure", "ripe")]


def test_detection_is_idempotent(golden: Engine, tmp_path: Path) -> None:
    first = detect(golden, at=T, config=CONFIG, models_dir=tmp_path)
    assert detect(golden, at=T, config=CONFIG, models_dir=tmp_path) == first
    assert write_signals(golden, first, at=T) == 3
    # An hour later the same windows are still open under the same ids; only "fresh"
    # (failed 1 h before T) has become ripe, so only it is new.
    later = detect(golden, at=T + timedelta(hours=1), config=CONFIG, models_dir=tmp_path)
    new = sorted({e["event_id"] for e in later} - {e["event_id"] for e in first})
    assert new == ["signal.payment_failure:fresh:2026-03-09"]
    assert {e["event_id"] for e in first} <= {e["event_id"] for e in later}
    assert write_signals(golden, later, at=T + timedelta(hours=1)) == 1
    assert write_signals(golden, later, at=T + timedelta(hours=2)) == 0
    with golden.connect() as conn:
        stored = conn.execute(
            select(func.count()).where(EVENTS.c.name.like("signal.%"))
        ).scalar_one()
    assert stored == 4
    # Signals are not behaviour: detecting again over them changes nothing.
    assert detect(golden, at=T, config=CONFIG, models_dir=tmp_path) == first


def test_events_after_the_detection_time_are_ignored(golden: Engine, tmp_path: Path) -> None:
    before = detect(golden, at=T, config=CONFIG, models_dir=tmp_path)
    add_events(golden, [
        ev("dropper", "login", T + timedelta(minutes=5)),
        ev("ripe", "order_placed", T + timedelta(minutes=5), 25.0),
        ev("crosser", "login", T + timedelta(minutes=5)),
    ])
    assert detect(golden, at=T, config=CONFIG, models_dir=tmp_path) == before
    assert detect(golden, at=T + timedelta(minutes=10), config=CONFIG, models_dir=tmp_path) == []


def test_signals_are_spec_events(golden: Engine, tmp_path: Path) -> None:
    events = detect(golden, at=T, config=CONFIG, models_dir=tmp_path)
    assert events[2] == {
        "event_id": "signal.payment_failure:ripe:2026-03-09",
        "user_id": "ripe",
        "name": "signal.payment_failure",
        "ts": "2026-03-09T23:00:00+08:00",
        "value": None,
        "props": {"failed_at": "2026-03-09T13:00:00+00:00", "after_hours": 2.0},
    }


# Asia/Shanghai midnights: Friday 2026-10-02 is in the National Day break; Sunday 2026-09-20
# is a make-up working day (调休) for it; Saturday 2026-09-12 is an ordinary weekend.
HOLIDAY = datetime(2026, 10, 1, 16, 0, tzinfo=UTC)
MAKEUP_WORKDAY = datetime(2026, 9, 19, 16, 0, tzinfo=UTC)
WEEKEND = datetime(2026, 9, 11, 16, 0, tzinfo=UTC)
CN = AudienceConfig(holidays="CN")  # holiday_factor 0.5 by default


def _habit_then_quiet(user: str, at: datetime) -> list[dict[str, object]]:
    """Active every day for five weeks, silent for the last two days before ``at``: 5 of
    the last 7 days (a 29 % drop, not enough), 2 of the last 4 (50 %: enough)."""
    return [ev(user, "login", days_ago(k, hours=12, at=at)) for k in range(2, 40)]


@pytest.mark.parametrize(("at", "fires"), [
    (HOLIDAY, True), (MAKEUP_WORKDAY, False), (WEEKEND, False)])
def test_activity_drop_looks_at_a_shorter_window_on_a_holiday(
    db_engine: Engine, tmp_path: Path, at: datetime, fires: bool
) -> None:
    add_events(db_engine, _habit_then_quiet("quiet", at))
    signals = detect_signals(db_engine, at=at, config=CN, models_dir=tmp_path)
    drops = [s for s in signals if s.name == "activity_drop"]
    assert _fired(drops) == ([("activity_drop", "quiet")] if fires else [])
    if fires:
        assert drops[0].props == {"drop_pct": 50.0, "recent_active_days": 2,
                                  "baseline_active_days": 28, "recent_days": 4,
                                  "baseline_days": 28}
    # Without a calendar, or with a factor of 1, a holiday is a day like any other.
    for config in (AudienceConfig(), AudienceConfig.model_validate(
            {"holidays": "CN", "golden": {"holiday_factor": 1}})):
        assert [s for s in detect_signals(db_engine, at=at, config=config, models_dir=tmp_path)
                if s.name == "activity_drop"] == []


@pytest.mark.parametrize(("at", "sooner"), [
    (HOLIDAY, True), (MAKEUP_WORKDAY, False), (WEEKEND, False)])
def test_a_payment_failure_on_a_holiday_ripens_sooner(
    db_engine: Engine, tmp_path: Path, at: datetime, sooner: bool
) -> None:
    failed = at + timedelta(hours=10)  # 10:00 local on the day
    add_events(db_engine, [ev("payer", "payment_failed", failed, 25.0)])
    early = detect_signals(db_engine, at=failed + timedelta(hours=1.5), config=CN,
                           models_dir=tmp_path)
    assert _fired(early) == ([("payment_failure", "payer")] if sooner else [])
    if sooner:
        assert early[0].ts == failed + timedelta(hours=1)
        assert early[0].props == {"failed_at": failed.isoformat(), "after_hours": 1.0,
                                  "holiday": True}
    # The ordinary delay still applies on an ordinary day: ripe after 2 h.
    later = detect_signals(db_engine, at=failed + timedelta(hours=2), config=CN,
                           models_dir=tmp_path)
    assert _fired(later) == [("payment_failure", "payer")]
    assert later[0].ts == failed + timedelta(hours=1 if sooner else 2)


def _user_features(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            select(USER_FEATURES).order_by(USER_FEATURES.c.user_id))]


def test_refresh_and_detection_share_one_feature_computation(
    golden: Engine, tmp_path: Path, isolated_settings: None
) -> None:
    """The scheduled refresh hands its features at ``at`` to the detection: tiers, RFM,
    churn scores and signals are exactly what the two compute on their own."""
    assert refresh(golden, at=T, config=CONFIG) == 11
    alone = _user_features(golden)
    signals = detect(golden, at=T, config=CONFIG, models_dir=tmp_path)
    assert len(signals) == 3

    frames: Frames = {}
    assert refresh(golden, at=T, config=CONFIG, frames=frames) == 11
    assert list(frames) == [(T, CONFIG)]
    assert _user_features(golden) == alone
    assert detect(golden, at=T, config=CONFIG, models_dir=tmp_path, frames=frames) == signals
    # The detection computed only the moment one interval earlier, and only for the users
    # whose condition holds at T: the whole population's frame was the refresh's.
    assert list(frames) == [(T, CONFIG)]


@pytest.mark.parametrize("kind", ["model", "rule"])
def test_the_earlier_moment_of_the_candidates_only_fires_what_everyone_s_fires(
    db_engine: Engine, population: Population, tmp_path: Path, kind: str
) -> None:
    """Detection computes the moment one interval earlier for the users whose condition
    holds now only: on a synthetic campus, with a trained model and with the recency rule,
    it fires exactly the signals the whole population's earlier frame fires."""
    load_population(db_engine, population)
    if kind == "model":
        train(db_engine, cutoff=SYNTH_START + timedelta(days=25), horizon=timedelta(days=14),
              model="gbm", models_dir=tmp_path)
    config = AudienceConfig.model_validate({"golden": {"churn_score": {"threshold": 0.5}}})
    fired = {}
    for day in (40, 47, 53):
        at = SYNTH_START + timedelta(days=day, hours=9)
        everyone: Frames = {(at - timedelta(hours=24), config):
                            compute_features(db_engine, cutoff=at - timedelta(hours=24),
                                             config=config)}
        whole = detect_signals(db_engine, at=at, config=config, models_dir=tmp_path,
                               frames=everyone)
        assert detect_signals(db_engine, at=at, config=config, models_dir=tmp_path) == whole
        fired[day] = {s.name for s in whole}
    assert set().union(*fired.values()) >= {"activity_drop", "churn_score"}
