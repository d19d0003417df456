from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from orchestrator.config import Settings
from orchestrator.errors import SignatureError
from orchestrator.tracking.landing import (
    landing_secret,
    landing_token,
    read_landing_token,
    record_landing_click,
)
from tests.tracking.seed import LINKS, T0, TOUCHES, Seeder

SECRET = "landing-secret"


def test_token_round_trips_and_matches_the_documented_construction() -> None:
    token = landing_token(SECRET, journey_id="winback", user_id="u1", issued_at=T0,
                          to="https://m.example.com/c")
    claim = read_landing_token(SECRET, token, journey_id="winback", now=T0)
    assert (claim.user_id, claim.to) == ("u1", "https://m.example.com/c")
    payload, mac = token.split(".")
    expected = hmac.new(SECRET.encode(), b"recall-landing\nwinback\n" + payload.encode(),
                        hashlib.sha256).digest()
    assert mac == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
    lambda t: "e30" + t[t.index("."):],  # payload {} with the old mac
    lambda t: t.split(".")[0],
    lambda t: "",
])
def test_altered_tokens_are_refused(mutate: object) -> None:
    token = landing_token(SECRET, journey_id="winback", user_id="u1", issued_at=T0)
    with pytest.raises(SignatureError, match="landing token is not valid"):
        read_landing_token(SECRET, mutate(token),  # type: ignore[operator]
                           journey_id="winback", now=T0)


def test_a_token_is_bound_to_its_journey_and_secret() -> None:
    token = landing_token(SECRET, journey_id="winback", user_id="u1", issued_at=T0)
    with pytest.raises(SignatureError):
        read_landing_token(SECRET, token, journey_id="rescue", now=T0)
    with pytest.raises(SignatureError):
        read_landing_token("other", token, journey_id="winback", now=T0)


def test_only_http_targets() -> None:
    with pytest.raises(SignatureError, match="http"):
        landing_token(SECRET, journey_id="j", user_id="u", issued_at=T0,
                      to="javascript:alert(1)")


def test_secret_is_the_landing_token_setting() -> None:
    settings = Settings(landing_token_secret="l-secret", generic_webhook_secret="g-secret")
    assert landing_secret(settings) == "l-secret"


def test_click_goes_on_the_latest_sent_touch(db_engine: Engine, seed: Seeder) -> None:
    enrollment = seed.enrollment(seed.user("u1"))
    older = seed.touch(enrollment, "article", channel="wechat_article", sent_at=T0)
    latest = seed.touch(enrollment, "sms", sent_at=T0 + timedelta(hours=1))
    seed.touch(enrollment, "later", status="scheduled", sent_at=None)
    seed.link("code-sms-001", latest, "https://m.example.com/c")
    for minutes in (120, 150):
        with db_engine.begin() as conn:
            hit = record_landing_click(conn, journey_id="winback", user_id="u1",
                                       now=T0 + timedelta(minutes=minutes))
    assert hit is not None and hit.touch_id == latest
    assert seed.row(TOUCHES, id=latest)["clicked_at"] == T0 + timedelta(minutes=120)
    assert seed.row(TOUCHES, id=older)["clicked_at"] is None
    assert seed.row(LINKS, code="code-sms-001")["clicks"] == 2
    assert hit.redirect_url("winback", None) == (
        "https://m.example.com/c?utm_source=recall&utm_medium=sms&utm_campaign=winback"
        "&touch=code-sms-001"
    )


def test_a_user_without_a_sent_touch_records_nothing(db_engine: Engine, seed: Seeder) -> None:
    seed.touch(seed.enrollment(seed.user("u1")), status="scheduled", sent_at=None)
    with db_engine.begin() as conn:
        assert record_landing_click(conn, journey_id="winback", user_id="u1", now=T0) is None
