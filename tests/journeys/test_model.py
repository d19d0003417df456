from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.errors import ConfigError
from orchestrator.journeys.durations import LocalWindow
from orchestrator.journeys.loader import load_all
from orchestrator.journeys.model import (
    PLATFORM_LIMITS,
    BranchStep,
    Cap,
    ExitStep,
    Journey,
    Policy,
    PolicyOverride,
    SendStep,
    WaitStep,
)

REPO = Path(__file__).resolve().parents[2]
SMS = {"signature": "【校园外卖】", "opt_out_suffix": "拒收请回复R", "price_per_segment": 0.045}


@pytest.fixture(scope="module")
def samples() -> tuple[list[Journey], Policy]:
    return load_all(REPO / "journeys", REPO / "templates")


def test_sample_policy_is_the_spec_example(samples: tuple[list[Journey], Policy]) -> None:
    policy = samples[1]
    assert policy.timezone == "Asia/Shanghai"
    assert {k: str(v) for k, v in policy.caps.items()} == {
        "global": "3 per 7d",
        "sms": "2 per 7d",
        "wechat_article": "4 per month",
        "wecom_group_invite": "1 per day",
    }
    assert policy.when_capped == "skip"
    assert policy.max_defer == timedelta(hours=24)
    assert policy.send_hours == {"sms": LocalWindow.parse("08:00-21:00")}
    assert policy.holidays == "CN"
    assert policy.sms.model_dump() == SMS


def test_winback_sample_is_the_spec_example(samples: tuple[list[Journey], Policy]) -> None:
    journey = next(j for j in samples[0] if j.id == "winback-at-risk")
    assert journey.name == "7天未活跃召回"
    assert journey.entry.segment == "tier == 'at_risk' and churn_score >= 0.6"
    assert journey.entry.schedule == "0 10 * * *"
    assert (journey.reentry, journey.holdout, journey.priority) == (timedelta(days=30), 0.1, 10)
    assert journey.goal is not None
    assert (journey.goal.event, journey.goal.within) == ("order_placed", timedelta(days=7))
    assert [s.kind for s in journey.steps] == ["send", "wait", "send", "wait", "branch", "send"]
    assert [s.id for s in journey.send_steps()] == ["article", "invite", "sms"]
    assert journey.step_index("sms") == 5
    wait = journey.steps[3]
    assert isinstance(wait, WaitStep) and str(wait.window) == "10:00-20:00"
    branch = journey.steps[4]
    assert isinstance(branch, BranchStep)
    assert (branch.if_, branch.then, branch.else_) == ("not joined('invite')", "sms", "exit")
    sms = journey.send_step("sms")
    assert sms.variants is not None and {k: v.weight for k, v in sms.variants.items()} == {
        "a": 50,
        "b": 50,
    }
    assert journey.templates_used() == [
        "winback/article.j2",
        "winback/invite.j2",
        "winback/sms_a.j2",
        "winback/sms_b.j2",
    ]
    assert len(journey.version) == 16 and journey.source_path.endswith("winback-at-risk.yaml")


def test_sample_journeys(samples: tuple[list[Journey], Policy]) -> None:
    journeys = {j.id: j for j in samples[0]}
    assert sorted(journeys) == [
        "payment-rescue",
        "tier-active-feature",
        "tier-churned-care",
        "tier-low-frequency-coupon",
        "winback-at-risk",
    ]
    rescue = journeys["payment-rescue"]
    assert rescue.entry.event == "payment_failed" and rescue.priority == 100
    assert rescue.goal is not None and rescue.reentry is not None
    assert rescue.reentry >= rescue.goal.within
    assert [s.id for s in rescue.send_steps()] == ["sms", "article"]
    coupon = journeys["tier-low-frequency-coupon"]
    assert coupon.pool_path("coupon_code") == REPO / "journeys/pools/coupons.csv"


def test_version_changes_with_a_template(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(REPO / "journeys", tmp_path / "journeys")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    before = {j.id: j.version for j in load_all(tmp_path / "journeys", tmp_path / "templates")[0]}
    with (tmp_path / "templates/winback/sms_a.j2").open("a", encoding="utf-8") as handle:
        handle.write("\n")
    after = {j.id: j.version for j in load_all(tmp_path / "journeys", tmp_path / "templates")[0]}
    assert before["winback-at-risk"] != after["winback-at-risk"]
    assert before["payment-rescue"] == after["payment-rescue"]


def test_step_models_construct_by_name() -> None:
    branch = BranchStep(if_="sent('a')", then="b", else_="exit")
    assert branch.model_dump(by_alias=True) == {
        "id": None,
        "if": "sent('a')",
        "then": "b",
        "else": "exit",
    }
    assert ExitStep(exit=True).kind == "exit"
    step = SendStep(id="s", send="sms", template="x.j2")
    assert (step.kind, step.channel, step.template_for(None)) == ("send", "sms", "x.j2")
    assert WaitStep(wait="1d12h").model_dump(mode="json") == {
        "id": None,
        "wait": "1d12h",
        "window": None,
    }


def test_cap_periods() -> None:
    rolling, calendar = Cap(max=2, per="7d"), Cap(max=4, per="month")
    assert (rolling.rolling, rolling.calendar) == (timedelta(days=7), None)
    assert (calendar.rolling, calendar.calendar) == (None, "month")
    with pytest.raises(ValidationError, match="bad cap period 'fortnight'"):
        Cap(max=1, per="fortnight")


@pytest.mark.parametrize(
    ("cap", "limit", "stricter"),
    [
        (Cap(max=3, per="month"), Cap(max=4, per="month"), True),
        (Cap(max=4, per="31d"), Cap(max=4, per="month"), True),
        (Cap(max=4, per="30d"), Cap(max=4, per="month"), False),
        (Cap(max=4, per="week"), Cap(max=4, per="month"), False),
        (Cap(max=1, per="week"), Cap(max=1, per="day"), True),
        (Cap(max=1, per="24h"), Cap(max=1, per="day"), True),
        (Cap(max=1, per="day"), Cap(max=1, per="24h"), False),
        (Cap(max=1, per="14d"), Cap(max=2, per="7d"), True),
        (Cap(max=3, per="14d"), Cap(max=2, per="7d"), False),
    ],
)
def test_cap_strictness(cap: Cap, limit: Cap, stricter: bool) -> None:
    assert cap.at_least_as_strict_as(limit) is stricter


def test_policy_always_carries_the_platform_limits() -> None:
    policy = Policy(sms=SMS)  # type: ignore[arg-type]
    assert policy.caps == PLATFORM_LIMITS


def test_policy_refuses_raising_a_platform_limit() -> None:
    with pytest.raises(ValidationError, match="allows more than the platform limit of 4 per month"):
        Policy(sms=SMS, caps={"wechat_article": {"max": 4, "per": "week"}})  # type: ignore[arg-type]


def test_tightened_by() -> None:
    policy = Policy(
        sms=SMS,  # type: ignore[arg-type]
        caps={"sms": Cap(max=2, per="7d")},
        send_hours={"sms": LocalWindow.parse("08:00-21:00")},
    )
    override = PolicyOverride(
        caps={"sms": Cap(max=1, per="7d")},
        send_hours={"sms": LocalWindow.parse("10:00-20:00")},
        when_capped="defer",
        max_defer=timedelta(hours=2),
    )
    tight = policy.tightened_by(override)
    assert tight.caps["sms"] == Cap(max=1, per="7d")
    assert tight.caps["wechat_article"] == PLATFORM_LIMITS["wechat_article"]
    assert tight.send_hours["sms"] == LocalWindow.parse("10:00-20:00")
    assert (tight.when_capped, tight.max_defer) == ("defer", timedelta(hours=2))
    assert policy.tightened_by(None) is policy


def test_tightened_by_refuses_loosening() -> None:
    policy = Policy(sms=SMS, send_hours={"sms": "08:00-21:00"})  # type: ignore[arg-type]
    loose = PolicyOverride(
        caps={"wecom_group_invite": Cap(max=2, per="day")},
        send_hours={"sms": LocalWindow.parse("07:00-21:00")},
        max_defer=timedelta(days=2),
    )
    with pytest.raises(ConfigError) as caught:
        policy.tightened_by(loose)
    assert str(caught.value) == (
        "journey cap wecom_group_invite 2 per day is looser than the policy's 1 per day; "
        "journey max_defer 2d is longer than the policy's 1d; "
        "journey send_hours sms 07:00-21:00 is not inside the policy's 08:00-21:00"
    )


def test_send_window_on_rest_days_and_make_up_working_days() -> None:
    policy = Policy(
        sms=SMS,  # type: ignore[arg-type]
        holidays="CN",
        send_hours={"sms": "08:00-21:00"},  # type: ignore[dict-item]
        holiday_send_hours={"sms": "10:00-20:00"},  # type: ignore[dict-item]
    )
    workday, spring_festival, make_up_sunday = (
        date(2025, 1, 27),
        date(2025, 1, 29),
        date(2025, 1, 26),
    )
    assert str(policy.send_window("sms", workday)) == "08:00-21:00"
    assert str(policy.send_window("sms", spring_festival)) == "10:00-20:00"
    assert str(policy.send_window("sms", make_up_sunday)) == "08:00-21:00"  # 调休
    assert str(policy.send_window("sms", date(2025, 2, 9))) == "10:00-20:00"  # plain Sunday
    assert policy.send_window("wechat_article", spring_festival) is None


def test_policy_refuses_unknown_zone_and_holiday_calendar() -> None:
    with pytest.raises(ValidationError) as caught:
        Policy(sms=SMS, timezone="Mars/Olympus", holidays="XX")  # type: ignore[arg-type]
    messages = [e["msg"] for e in caught.value.errors()]
    assert messages == [
        "Value error, unknown time zone 'Mars/Olympus': use an IANA name such as Asia/Shanghai",
        "Value error, unknown holiday calendar 'XX': a country code of the holidays package, "
        "e.g. CN",
    ]
