from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, select

from orchestrator.audience.churn import churn_labels
from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import FeatureFrame, compute_features, refresh_features
from orchestrator.audience.refresh import FEATURES
from orchestrator.audience.synth import events_for_store, simulate
from orchestrator.config import get_settings
from orchestrator.store.models import Touch
from tests.audience.conftest import SYNTH_START
from tests.audience.helpers import T, add_events, add_users, days_ago, ev

TOUCHES = Touch.__table__  # type: ignore[attr-defined]


def _touch(
    enrollment: int, sent_days_ago: float, clicked_days_ago: float, *, test: bool = False
) -> dict[str, object]:
    return {
        "enrollment_id": enrollment, "journey_id": "j", "journey_version": "v1", "user_id": "alice",
        "step_id": "sms", "channel": "sms", "status": "sent", "due_at": days_ago(sent_days_ago),
        "sent_at": days_ago(sent_days_ago), "clicked_at": days_ago(clicked_days_ago),
        "test": test,
    }


@pytest.fixture
def hand_made(db_engine: Engine) -> Engine:
    """alice: a regular with a payment failure and a click; bob: one order; carol: no
    events; dave: only events after the cutoff."""
    add_users(db_engine, [{"user_id": u} for u in ("alice", "bob", "carol")])
    add_events(db_engine, [
        ev("alice", "order_placed", days_ago(1, hours=2), 30.0),  # Sun 22:00 local
        ev("alice", "login", days_ago(1, hours=2.5)),  # Sun 21:30
        ev("alice", "payment_failed", days_ago(2), 30.0),
        ev("alice", "login", days_ago(3, hours=12)),  # Fri 12:00
        ev("alice", "order_placed", days_ago(10, hours=1), 20.0),  # Fri 23:00
        ev("alice", "order_placed", days_ago(40, hours=1), 50.0),  # Wed 23:00
        ev("alice", "signal.churn_score", days_ago(0.5)),  # not behaviour: ignored
        ev("bob", "order_placed", days_ago(20), 15.0),
        ev("dave", "login", T + timedelta(seconds=1)),
    ])
    with db_engine.begin() as conn:
        conn.execute(TOUCHES.insert(), [
            _touch(1, 5, 4), _touch(2, 40, 39), _touch(3, 2, 1, test=True),
        ])
    return db_engine


def test_hand_made_features_are_exact(hand_made: Engine) -> None:
    frame = compute_features(hand_made, cutoff=T)
    assert frame.user_ids.tolist() == ["alice", "bob", "carol"]
    alice = frame.row("alice")
    expected = {
        "recency_days": 1 + 2 / 24,
        "order_recency_days": 1 + 2 / 24,
        "tenure_days": 40 + 1 / 24,
        "frequency": 3, "monetary": 100.0,
        "events_7d": 3, "events_30d": 4, "events_90d": 5,
        "orders_7d": 1, "orders_30d": 2, "orders_90d": 3,
        "monetary_7d": 30.0, "monetary_30d": 50.0, "monetary_90d": 100.0,
        "active_days_7d": 2, "active_days_30d": 3, "active_days_90d": 4,
        "active_days_total": 4,
        "mean_gap_days": 13.0,  # active days 1, 3, 10 and 40 days ago
        "overdue_ratio": (1 + 2 / 24) / 13,
        "recent_active_days": 2, "baseline_active_days": 1,
        "activity_trend": 2 / (1 * 7 / 28),
        "top_hour_share": 0.8,  # 4 of 5 visits in 20:00-24:00
        "weekend_share": 0.4,
        "meal_share": 0.2,  # 12:00 of 12:00, 21:30, 22:00, 23:00, 23:00
        "night_share": 0.8,  # 21:00-05:00
        "orders_total": 3, "monetary_total": 100.0, "avg_order_value": 100 / 3,
        "payment_failures_30d": 1, "hours_since_payment_failure": 48.0,
        "touches_30d": 1, "clicks_30d": 1,
        "rfm_r": 4, "rfm_f": 4, "rfm_m": 4,
    }
    for name, value in expected.items():
        assert alice[name] == pytest.approx(value), name


def test_sparse_and_silent_users_have_defined_or_missing_values(hand_made: Engine) -> None:
    frame = compute_features(hand_made, cutoff=T)
    bob, carol = frame.row("bob"), frame.row("carol")
    assert bob["recency_days"] == 20 and bob["frequency"] == 1 and bob["monetary"] == 15
    assert bob["mean_gap_days"] is None and bob["overdue_ratio"] is None  # one visit only
    assert bob["activity_trend"] == 0.0 and bob["hours_since_payment_failure"] is None
    assert (bob["rfm_r"], bob["rfm_f"], bob["rfm_m"]) == (2, 2, 2)
    assert carol["recency_days"] is None and carol["frequency"] == 0
    assert (bob["meal_share"], bob["night_share"]) == (0.0, 1.0)  # midnight is night
    assert carol["top_hour_share"] is None and carol["activity_trend"] is None
    assert carol["meal_share"] is None and carol["night_share"] is None
    assert (carol["rfm_r"], carol["rfm_f"], carol["rfm_m"]) == (1, 1, 1)
    assert frame.tiers.tolist() == ["low_frequency", "at_risk", "churned"]


def test_subset_of_users_keeps_given_ids(hand_made: Engine) -> None:
    frame = compute_features(hand_made, cutoff=T, user_ids=["bob", "nobody", "alice", "bob"])
    assert frame.user_ids.tolist() == ["alice", "bob", "nobody"]
    assert frame.row("alice")["events_90d"] == 5
    assert frame.row("nobody")["recency_days"] is None


def test_tiers_at_their_boundaries(db_engine: Engine) -> None:
    add_events(db_engine, [
        *(ev("daily", "login", days_ago(k, hours=1)) for k in range(10)),
        *(ev("fresh", "session", days_ago(k, hours=23)) for k in (6, 8, 9, 11)),
        ev("few", "login", days_ago(2)), ev("few", "login", days_ago(5)),
        ev("edge7", "login", days_ago(7)),
        ev("edge30", "order_placed", days_ago(30), 9.0),
        ev("almost30", "login", days_ago(29, hours=23)),
        ev("payer", "payment_failed", days_ago(1)),  # not an activity event
    ])
    frame = compute_features(db_engine, cutoff=T)
    tiers = dict(zip(frame.user_ids.tolist(), frame.tiers.tolist(), strict=True))
    assert tiers == {
        "daily": "active", "fresh": "active", "few": "low_frequency", "edge7": "at_risk",
        "almost30": "at_risk", "edge30": "churned", "payer": "churned",
    }


def test_tier_thresholds_come_from_config(db_engine: Engine) -> None:
    add_events(db_engine, [ev("u", "login", days_ago(4)), ev("u", "custom_visit", days_ago(1))])
    config = AudienceConfig.model_validate(
        {"activity_events": ["login", "custom_visit"],
         "tiers": {"at_risk_days": 3, "churned_days": 5, "low_frequency_active_days": 2}}
    )
    frame = compute_features(db_engine, cutoff=T, config=config)
    assert frame.row("u")["recency_days"] == 1 and frame.tiers.tolist() == ["active"]
    frame = compute_features(db_engine, cutoff=T + timedelta(days=3), config=config)
    assert frame.tiers.tolist() == ["at_risk"]


# ----------------------------------------------------------------------------- leakage


def _same(a: FeatureFrame, b: FeatureFrame) -> bool:
    return (
        a.user_ids.tolist() == b.user_ids.tolist()
        and a.tiers.tolist() == b.tiers.tolist()
        and all(np.array_equal(a[n], b[n], equal_nan=True) for n in a.names)
    )


def test_events_after_the_cutoff_change_no_feature_and_no_label(db_engine: Engine) -> None:
    pop = simulate(300, days_of_history=40, start=SYNTH_START, seed=5)
    add_events(db_engine, events_for_store(pop.events))
    cutoff, horizon = SYNTH_START + timedelta(days=20), timedelta(days=7)
    config = AudienceConfig()

    def snapshot() -> tuple[FeatureFrame, np.ndarray]:
        frame = compute_features(db_engine, cutoff=cutoff)
        labels = churn_labels(db_engine, cutoff=cutoff, horizon=horizon,
                              user_ids=frame.user_ids, config=config)
        return frame, labels

    frame, labels = snapshot()
    silent = [u for u, y in zip(frame.user_ids, labels, strict=True)
              if y and frame.row(u)["recency_days"] is not None]
    known = frame.user_ids.tolist()

    # After the label window: a burst for everyone, plus a brand-new user.
    late = cutoff + horizon + timedelta(seconds=1)
    add_events(db_engine, [ev(u, "order_placed", late, 99.0) for u in known[:50]])
    add_events(db_engine, [ev("newcomer", "login", late)])
    frame2, labels2 = snapshot()
    assert _same(frame, frame2) and labels.tolist() == labels2.tolist()

    # Inside the label window: features still blind to it, but the label sees it.
    add_events(db_engine, [ev(silent[0], "login", cutoff + timedelta(seconds=1))])
    frame3, labels3 = snapshot()
    assert _same(frame, frame3)
    flipped = [u for u, a, b in zip(known, labels, labels3, strict=True) if a != b]
    assert flipped == [silent[0]]

    # Exactly at the cutoff counts as before it: the features do change.
    add_events(db_engine, [ev(silent[1], "order_placed", cutoff, 12.5)])
    frame4, _ = snapshot()
    assert not _same(frame, frame4)
    assert frame4.row(silent[1])["recency_days"] == 0.0
    assert frame4.row(silent[1])["orders_7d"] == frame.row(silent[1])["orders_7d"] + 1


# ----------------------------------------------------------------------------- refresh


def test_refresh_writes_every_user_in_bulk_and_is_repeatable(
    hand_made: Engine, isolated_settings: None
) -> None:
    settings = get_settings()
    assert refresh_features(hand_made, at=T, settings=settings) == 3
    # A day later dave's first event is in the past: he is known now.
    assert refresh_features(hand_made, at=T + timedelta(days=1), settings=settings) == 4
    with hand_made.connect() as conn:
        rows = {r.user_id: r for r in conn.execute(select(FEATURES))}
    assert set(rows) == {"alice", "bob", "carol", "dave"}
    alice, bob, carol = rows["alice"], rows["bob"], rows["carol"]
    assert alice.computed_at == T + timedelta(days=1)
    assert alice.tier == "low_frequency" and alice.frequency == 3 and alice.monetary == 100
    assert alice.recency_days == pytest.approx(2 + 2 / 24)
    # No model trained: churn score is the recency rule min(1, recency / 30 d).
    assert alice.churn_score == pytest.approx((2 + 2 / 24) / 30)
    assert bob.churn_score == pytest.approx(21 / 30) and bob.tier == "at_risk"
    assert carol.churn_score == 1.0 and carol.tier == "churned" and carol.recency_days is None
    assert alice.features["mean_gap_days"] == 13.0
    assert bob.features["mean_gap_days"] is None  # JSON null, never NaN
    # Of 4 users, 2 are less recent than alice (1 + 5·2//4 = 3), 3 buy less (1 + 5·3//4 = 4).
    assert (alice.rfm_r, alice.rfm_f, alice.rfm_m) == (3, 4, 4)


def test_refresh_reports_progress(hand_made: Engine, isolated_settings: None) -> None:
    seen: list[tuple[int, int]] = []
    refresh_features(hand_made, at=T, settings=get_settings(),
                     progress=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 3)]
