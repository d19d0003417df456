from __future__ import annotations

import math
import re
from datetime import timedelta

from sqlalchemy import Engine

from orchestrator.tracking.links import (
    CODE_BYTES,
    create_links,
    new_code,
    record_click,
    short_url,
    tracked_target,
    with_query,
)
from tests.tracking.seed import LINKS, T0, TOUCHES, Seeder


def test_params_are_appended_and_the_existing_query_is_kept_byte_for_byte() -> None:
    url = "https://m.example.com/coupon?u=u%201&x=a+b#top"
    assert with_query(url, {"utm_source": "recall"}) == (
        "https://m.example.com/coupon?u=u%201&x=a+b&utm_source=recall#top"
    )
    assert with_query("https://m.example.com/c", {"a": "1 2"}) == "https://m.example.com/c?a=1+2"


def test_tracked_target_adds_utm_and_touch_but_keeps_the_operators_utm() -> None:
    target = tracked_target("https://m.example.com/c?utm_campaign=spring&touch=old",
                            channel="sms", journey_id="winback", code="AbCdEfGh123")
    assert target == ("https://m.example.com/c?utm_campaign=spring&utm_source=recall"
                      "&utm_medium=sms&touch=AbCdEfGh123")


def test_codes_are_long_random_and_url_safe() -> None:
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", c) for c in codes)
    assert CODE_BYTES * 8 >= 64  # 2**64 codes: guessing one live link is hopeless
    alphabet = {ch for c in codes for ch in c}
    assert len(alphabet) > 60 and math.log2(len(alphabet)) * 11 >= 64
    assert short_url("https://r.example.com/", "abc") == "https://r.example.com/s/abc"


def test_first_click_stamps_touch_and_link_once_and_every_click_counts(
    db_engine: Engine, seed: Seeder
) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    with db_engine.begin() as conn:
        code = create_links(conn, [(touch, "https://m.example.com/c?u=u1")], now=T0)[touch]
    for minutes in (5, 9, 30):
        with db_engine.begin() as conn:
            click = record_click(conn, code, now=T0 + timedelta(minutes=minutes))
        assert click is not None and click.touch_id == touch
    link = seed.row(LINKS, code=code)
    assert link["clicks"] == 3 and link["first_clicked_at"] == T0 + timedelta(minutes=5)
    assert seed.row(TOUCHES, id=touch)["clicked_at"] == T0 + timedelta(minutes=5)
    assert click.redirect_url == ("https://m.example.com/c?u=u1&utm_source=recall&utm_medium=sms"
                                  f"&utm_campaign=winback&touch={code}")


def test_unknown_code_records_nothing(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        assert record_click(conn, "nope-nope-1", now=T0) is None
