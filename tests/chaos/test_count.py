"""The chaos run's counting, on fabricated records: each bad outcome is counted, and only
bad outcomes are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.chaos.count import (
    Expectation,
    Person,
    ProviderRefusal,
    ProviderSend,
    StoreEnrollment,
    StoreTouch,
    Tally,
    tally,
)
from orchestrator.policy.rules import PLATFORM_LIMITS, CapRule

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
STEPS = {"article": "wechat_article", "invite": "wecom_group_invite", "sms": "sms"}
CAPS = [CapRule.per("global", None, 3, "7d"), CapRule.per("sms", "sms", 2, "7d"),
        *PLATFORM_LIMITS.values()]
EXPECT = Expectation(steps=STEPS, caps=CAPS, timezone=ZoneInfo("Asia/Shanghai"))
ADDRESS = {"wechat_article": "o", "wecom_group_invite": "wm", "sms": "+86139"}


def person(n: int) -> Person:
    return Person(f"u{n}", f"o{n}", f"wm{n}", f"+86139{n}")


def send(n: int, step: str, seq: int, at: datetime = T0, ref: str | None = None) -> ProviderSend:
    channel = STEPS[step]
    return ProviderSend(channel, f"{ADDRESS[channel]}{n}", seq, at, ref or f"ref-{n}-{step}")


def touch(n: int, step: str, status: str = "sent", reason: str | None = None,
          ref: str | None = None) -> StoreTouch:
    pmid = (ref or f"ref-{n}-{step}") if status in ("sent", "delivered") else None
    return StoreTouch(n, f"u{n}", "treatment", step, STEPS[step], status, reason, pmid)


def enrolled(*numbers: int, arm: str = "treatment") -> list[StoreEnrollment]:
    return [StoreEnrollment(n, f"u{n}", arm) for n in numbers]


def healthy(n: int) -> tuple[list[StoreTouch], list[ProviderSend]]:
    """A person who got each step exactly once, as both sides agree."""
    steps = list(STEPS)
    return ([touch(n, s) for s in steps],
            [send(n, s, seq=10 * n + i, at=T0 + timedelta(minutes=i))
             for i, s in enumerate(steps)])


def run(touches: list[StoreTouch], sends: list[ProviderSend], *, people: range = range(1, 3),
        enrollments: list[StoreEnrollment] | None = None,
        refusals: list[ProviderRefusal] | None = None) -> Tally:
    return tally([person(n) for n in people], enrollments or enrolled(*people), touches, sends,
                 refusals or [], EXPECT)


def test_a_clean_run_counts_nothing() -> None:
    (t1, s1), (t2, s2) = healthy(1), healthy(2)
    assert run(t1 + t2, s1 + s2).totals() == dict.fromkeys(
        ("duplicates", "lost", "cap_violations", "mismatches", "unexpected_suppressions"), 0)


def test_a_person_receiving_one_touch_twice_is_a_duplicate() -> None:
    touches, sends = healthy(1)
    sends.append(send(1, "sms", seq=99, at=T0 + timedelta(minutes=5), ref="ref-1-sms"))
    result = run(touches, sends, people=range(1, 2))
    assert result.total("duplicates") == 1
    assert result.of("duplicates")[0].detail == "2 provider sends; records #12, #99"
    # Four sends to one person in minutes also break the global cap of 3 per 7d.
    assert result.total("cap_violations") == 1
    assert result.total("lost") == result.total("mismatches") == 0


def test_unknown_outcome_the_provider_never_saw_is_lost() -> None:
    touches, sends = healthy(1)
    touches[2] = touch(1, "sms", "failed", "unknown_outcome")
    result = run(touches, sends[:2], people=range(1, 2))
    assert result.total("lost") == 1
    assert result.of("lost")[0].detail == "failed/unknown_outcome; the provider has no send"
    assert result.total("mismatches") == 0  # both sides agree nothing went out


def test_unknown_outcome_the_provider_did_send_is_a_mismatch_not_a_loss() -> None:
    touches, sends = healthy(1)
    touches[2] = touch(1, "sms", "failed", "unknown_outcome")
    result = run(touches, sends, people=range(1, 2))
    assert result.total("lost") == 0
    assert result.total("mismatches") == 1
    assert "provider sent, store says failed/unknown_outcome" in result.of("mismatches")[0].detail


def test_a_rate_limit_is_not_a_rejection() -> None:
    touches, sends = healthy(1)
    touches[2] = touch(1, "sms", "failed", "retries_exhausted:20429")
    assert run(touches, sends[:2], people=range(1, 2)).total("lost") == 1
    # Even beside a rejection on record, a touch the store failed for a rate limit is lost.
    refusal = ProviderRefusal("sms", "+861391", 7, "error:21211")
    assert run(touches, sends[:2], people=range(1, 2), refusals=[refusal]).total("lost") == 1


def test_a_definite_rejection_the_provider_recorded_is_not_lost() -> None:
    touches, sends = healthy(1)
    touches[2] = touch(1, "sms", "failed", "invalid_number")
    refusal = ProviderRefusal("sms", "+861391", 7, "error:21211")
    assert run(touches, sends[:2], people=range(1, 2), refusals=[refusal]).total("lost") == 0


def test_a_rejection_the_provider_never_made_is_lost() -> None:
    touches, sends = healthy(1)
    touches[2] = touch(1, "sms", "failed", "invalid_number")
    assert run(touches, sends[:2], people=range(1, 2)).total("lost") == 1


def test_suppressed_and_cancelled_are_not_lost_but_suppressions_are_reported() -> None:
    touches, sends = healthy(1)
    touches[1] = touch(1, "invite", "cancelled", "goal_reached")
    touches[2] = touch(1, "sms", "suppressed", "capped:global")
    result = run(touches, sends[:1], people=range(1, 2))
    assert result.total("lost") == 0
    assert result.total("unexpected_suppressions") == 1
    expecting = Expectation(steps=STEPS, caps=CAPS, timezone=EXPECT.timezone,
                            suppressions_expected=True)
    relaxed = tally([person(1)], enrolled(1), touches, sends[:1], [], expecting)
    assert relaxed.total("unexpected_suppressions") == 0


def test_a_step_never_reached_is_lost() -> None:
    touches, sends = healthy(1)
    result = run(touches[:2], sends[:2], people=range(1, 2))
    assert [(f.step_id, f.detail) for f in result.of("lost")] == [
        ("sms", "no touch; the provider has no send")]


def test_store_says_sent_without_a_provider_send_is_lost_and_a_mismatch() -> None:
    touches, sends = healthy(1)
    result = run(touches, sends[:2], people=range(1, 2))
    assert result.total("lost") == 1 and result.total("mismatches") == 1


def test_a_send_to_the_holdout_or_a_stranger_is_a_mismatch() -> None:
    touches, sends = healthy(1)
    control = enrolled(2, arm="control")
    extra = [send(2, "sms", seq=50), ProviderSend("sms", "+10000000000", 51, T0)]
    result = run(touches, sends + extra, people=range(1, 3),
                 enrollments=enrolled(1) + control)
    assert result.total("mismatches") == 2
    assert result.total("lost") == 0  # the holdout expects nothing


def test_a_wrong_provider_id_is_a_mismatch() -> None:
    touches, sends = healthy(1)
    touches[0] = touch(1, "article", ref="someone-else")
    assert run(touches, sends, people=range(1, 2)).total("mismatches") == 1


def test_calendar_and_rolling_caps_count_each_send_beyond() -> None:
    same_day = [send(1, "invite", seq=i, at=T0 + timedelta(hours=i)) for i in range(3)]
    result = run([touch(1, "invite")], same_day, people=range(1, 2))
    by_rule = {f.detail.split(" (")[0]: f.n for f in result.of("cap_violations")}
    assert by_rule["cap platform:wecom_group_invite"] == 2  # 3 on one Shanghai day, max 1
    apart = [send(1, "sms", seq=i, at=T0 + timedelta(days=4 * i)) for i in range(3)]
    spaced = run([touch(1, "sms")], apart, people=range(1, 2))
    assert not spaced.of("cap_violations")  # never more than 2 within any 7 days


NUDGED = Expectation(steps=STEPS, caps=CAPS, timezone=EXPECT.timezone,
                     capped=frozenset({"nudge"}))


def nudge(n: int, status: str, reason: str | None = None, ref: str | None = None
          ) -> StoreTouch:
    return StoreTouch(100 + n, f"u{n}", "treatment", "nudge", "sms", status, reason, ref)


def test_a_capped_step_the_caps_refused_counts_nothing() -> None:
    touches, sends = healthy(1)
    refused = [*touches, nudge(1, "suppressed", "capped:global")]
    assert tally([person(1)], enrolled(1), refused, sends, [], NUDGED).totals() == dict.fromkeys(
        ("duplicates", "lost", "cap_violations", "mismatches", "unexpected_suppressions"), 0)


def test_a_capped_step_sent_is_a_cap_violation_not_a_duplicate() -> None:
    touches, sends = healthy(1)
    leaked = [*touches, nudge(1, "sent", ref="ref-nudge")]
    extra = send(1, "sms", seq=90, at=T0 + timedelta(minutes=9), ref="ref-nudge")
    result = tally([person(1)], enrolled(1), leaked, [*sends, extra], [], NUDGED)
    assert [f.detail for f in result.of("cap_violations")] == [
        "cap global (3 per 604800s): 4 sends"]
    assert result.total("duplicates") == result.total("mismatches") == 0


def test_a_capped_step_the_caps_let_through_counts_even_unsent() -> None:
    touches, sends = healthy(1)
    for status, reason in (("failed", "invalid_number"), ("suppressed", "opted_out"),
                           ("sent", None)):  # a send the provider has no record of
        result = tally([person(1)], enrolled(1), [*touches, nudge(1, status, reason)], sends,
                       [], NUDGED)
        assert [f.detail for f in result.of("cap_violations")] == [
            f"{status}/{reason or '-'}: the caps should have refused it"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=8))
def test_duplicates_and_losses_add_up(sends_per_person: list[int]) -> None:
    """Whatever the provider did, duplicates are the extra sends and losses the people with
    none, given a store that (wrongly or not) says every touch was sent."""
    people = range(1, len(sends_per_person) + 1)
    touches = [touch(n, "sms") for n in people]
    sends = [send(n, "sms", seq=100 * n + k, at=T0 + timedelta(days=10 * k))
             for n, times in zip(people, sends_per_person, strict=True) for k in range(times)]
    only_sms = Expectation(steps={"sms": "sms"}, caps=CAPS, timezone=EXPECT.timezone)
    result = tally([person(n) for n in people], enrolled(*people), touches, sends, [], only_sms)
    assert result.total("duplicates") == sum(max(0, n - 1) for n in sends_per_person)
    assert result.total("lost") == sends_per_person.count(0)
