"""Short links and fixed-link landing over HTTP."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from orchestrator.clock import ManualClock, utcnow
from orchestrator.tracking.landing import landing_token
from tests.tracking.seed import LINKS, T0, TOUCHES, Seeder

TARGET = "https://m.example.com/coupon?u=u1"


def sms_link(seed: Seeder, code: str = "Ab3_-xYz9Qk") -> tuple[int, str]:
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    return touch, seed.link(code, touch, TARGET)


def test_short_link_redirects_and_records_the_first_click_once(
    client: httpx.Client, seed: Seeder, clock: ManualClock
) -> None:
    touch, code = sms_link(seed)
    first = client.get(f"/s/{code}")
    assert first.status_code == 302
    assert first.headers["location"] == (
        f"{TARGET}&utm_source=recall&utm_medium=sms&utm_campaign=winback&touch={code}")
    assert first.headers["cache-control"] == "no-store"
    clock.advance(timedelta(minutes=5))
    assert client.get(f"/s/{code}").status_code == 302
    assert seed.row(TOUCHES, id=touch)["clicked_at"] == T0
    link = seed.row(LINKS, code=code)
    assert (link["clicks"], link["first_clicked_at"]) == (2, T0)


def test_head_answers_without_counting(client: httpx.Client, seed: Seeder) -> None:
    touch, code = sms_link(seed)
    head = client.head(f"/s/{code}")
    assert head.status_code == 302 and "utm_medium=sms" in head.headers["location"]
    assert seed.row(LINKS, code=code)["clicks"] == 0
    assert seed.row(TOUCHES, id=touch)["clicked_at"] is None


@pytest.mark.parametrize("code", ["Ab3_-xYz9Ql", "short", "x" * 40, "has.dots.in.it",
                                  "%27%20or%201%3D1"])
def test_unknown_codes_get_a_404_page(client: httpx.Client, seed: Seeder, code: str) -> None:
    sms_link(seed)
    response = client.get(f"/s/{code}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Link not found" in response.text
    assert seed.row(LINKS, code="Ab3_-xYz9Qk")["clicks"] == 0


def test_landing_records_the_click_for_the_tokens_user(
    client: httpx.Client, seed: Seeder
) -> None:
    touch, code = sms_link(seed)
    token = landing_token("whsec-generic", journey_id="winback", user_id="u1", issued_at=utcnow())
    response = client.get("/l/winback", params={"t": token})
    assert response.status_code == 302
    assert response.headers["location"].endswith(f"utm_campaign=winback&touch={code}")
    assert seed.row(TOUCHES, id=touch)["clicked_at"] == T0
    assert seed.row(LINKS, code=code)["clicks"] == 1


def test_landing_with_an_explicit_target_and_no_link(client: httpx.Client, seed: Seeder) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1")), "article", channel="wechat_article")
    token = landing_token("whsec-generic", journey_id="winback", user_id="u1", issued_at=utcnow(),
                          to="https://m.example.com/menu")
    response = client.get("/l/winback", params={"t": token})
    assert response.headers["location"] == ("https://m.example.com/menu?utm_source=recall"
                                            "&utm_medium=wechat_article&utm_campaign=winback")
    assert seed.row(TOUCHES, id=touch)["clicked_at"] == T0


@pytest.mark.sqlite_only
def test_landing_refuses_forged_tokens(client: httpx.Client, seed: Seeder) -> None:
    touch, _ = sms_link(seed)
    forged = landing_token("guessed-secret", journey_id="winback", user_id="u1",
                           issued_at=utcnow())
    other_journey = landing_token("whsec-generic", journey_id="rescue", user_id="u1",
                                  issued_at=utcnow())
    for token in (forged, other_journey, "garbage"):
        response = client.get("/l/winback", params={"t": token})
        assert response.status_code == 400 and "Invalid link" in response.text
    assert seed.row(TOUCHES, id=touch)["clicked_at"] is None


@pytest.mark.sqlite_only
def test_landing_without_a_touch_or_target_is_a_404(client: httpx.Client,
                                                    seed: Seeder) -> None:
    seed.user("u1")
    token = landing_token("whsec-generic", journey_id="winback", user_id="u1", issued_at=utcnow())
    assert client.get("/l/winback", params={"t": token}).status_code == 404
