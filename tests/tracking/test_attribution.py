from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.tracking.attribution import (
    SENT_STATUSES,
    LastTouch,
    TouchView,
    attribute,
)

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
STATUSES = ["scheduled", "claimed", "sending", "unknown", "sent", "delivered", "failed",
            "suppressed", "cancelled"]


def touch(id: int, status: str, minutes: int | None) -> TouchView:
    return TouchView(id=id, status=status,
                     sent_at=None if minutes is None else T0 + timedelta(minutes=minutes))


def test_last_sent_touch_before_the_conversion_gets_the_credit() -> None:
    touches = [touch(1, "delivered", 0), touch(2, "sent", 60), touch(3, "sent", 180)]
    assert attribute(T0 + timedelta(minutes=120), touches) == 2


def test_a_touch_sent_at_the_conversion_instant_counts() -> None:
    assert attribute(T0, [touch(7, "sent", 0)]) == 7


def test_unsent_touches_leave_the_conversion_unattributed() -> None:
    touches = [touch(1, "failed", 0), touch(2, "suppressed", None), touch(3, "unknown", 0),
               touch(4, "scheduled", None), touch(5, "cancelled", None)]
    assert attribute(T0 + timedelta(days=1), touches) is None
    assert attribute(T0, []) is None


def test_equal_send_times_go_to_the_later_touch() -> None:
    assert attribute(T0, [touch(4, "sent", 0), touch(9, "sent", 0)]) == 9


def test_naive_times_are_read_as_utc() -> None:
    naive = TouchView(id=1, status="sent", sent_at=T0.replace(tzinfo=None))
    assert attribute(T0, [naive]) == 1


touches_strategy = st.lists(
    st.builds(
        TouchView,
        id=st.integers(1, 10_000),
        status=st.sampled_from(STATUSES),
        sent_at=st.none() | st.integers(0, 10_000).map(lambda m: T0 + timedelta(minutes=m)),
    ),
    max_size=12,
    unique_by=lambda t: t.id,
)
conversions = st.integers(-10, 10_010).map(lambda m: T0 + timedelta(minutes=m))


@given(touches_strategy, conversions)
def test_never_credits_a_touch_after_the_conversion_or_an_unsent_one(
    touches: list[TouchView], converted_at: datetime
) -> None:
    chosen = attribute(converted_at, touches)
    if chosen is not None:
        winner = next(t for t in touches if t.id == chosen)
        assert winner.status in SENT_STATUSES
        assert winner.sent_at is not None and winner.sent_at <= converted_at


@given(touches_strategy, conversions)
def test_picks_the_latest_eligible_touch(touches: list[TouchView], converted_at: datetime) -> None:
    eligible = [t for t in touches
                if t.status in SENT_STATUSES and t.sent_at is not None
                and t.sent_at <= converted_at]
    chosen = attribute(converted_at, touches)
    if not eligible:
        assert chosen is None
        return
    latest = max(t.sent_at for t in eligible if t.sent_at is not None)
    winner = next(t for t in touches if t.id == chosen)
    assert winner.sent_at == latest
    assert chosen == max(t.id for t in eligible if t.sent_at == latest)


@given(touches_strategy, conversions)
def test_order_of_the_touches_does_not_matter(
    touches: list[TouchView], converted_at: datetime
) -> None:
    assert attribute(converted_at, touches) == attribute(converted_at, touches[::-1])


def test_the_model_is_pluggable() -> None:
    class FirstTouch:
        name = "first_touch"

        def attribute(self, conversion_at: datetime, touches: object) -> int | None:
            return 1

    assert attribute(T0, [], model=FirstTouch()) == 1
    assert LastTouch.name == "last_touch"
