"""What the public routes cost: ``/metrics`` scans no table per scrape; ``/s/{code}`` is
rate-limited, ignores preview crawlers and writes only what a click needs; landing tokens
expire."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, event

from orchestrator.api.app import create_app
from orchestrator.api.ratelimit import RateLimiter
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.tracking.landing import landing_token
from orchestrator.tracking.previews import is_preview
from tests.api.conftest import Swappable
from tests.tracking.seed import LINKS, T0, TOUCHES, Seeder


class Statements:
    """Every SQL statement the engine runs while recording."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[str] = []
        self.recording = False
        event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        if self.recording:
            self.seen.append(" ".join(statement.split()).upper())

    def during(self) -> Statements:
        self.seen, self.recording = [], True
        return self

    def __enter__(self) -> Statements:
        return self

    def __exit__(self, *exc: object) -> None:
        self.recording = False

    def writes(self) -> list[str]:
        return [s for s in self.seen if s.startswith(("UPDATE", "INSERT", "DELETE"))]


@pytest.fixture
def statements(db_engine: Engine) -> Statements:
    return Statements(db_engine)


def test_metrics_scrapes_scan_no_table(
    client: httpx.Client, seed: Seeder, statements: Statements
) -> None:
    enrollment = seed.enrollment(seed.user("u1"))
    seed.touch(enrollment, "sms", status="delivered")
    with statements.during():
        scrapes = [client.get("/metrics").text for _ in range(5)]
    group_bys = [s for s in statements.seen if "GROUP BY" in s]
    assert len(group_bys) <= 2  # the two totals, once, for all five scrapes
    assert all('recall_touches{channel="sms",status="delivered"} 1.0' in s for s in scrapes)
    lookups = [s for s in statements.seen if s.startswith("SELECT") and "GROUP BY" not in s]
    assert lookups and all("MIN(" in s and "DUE_AT <=" in s for s in lookups)  # indexed


@pytest.fixture
def limited(tmp_path: Path, settings: Settings, db_engine: Engine, clock: ManualClock,
            api_server: tuple[Swappable, str]) -> Iterator[httpx.Client]:
    app = create_app(settings.model_copy(update={"link_requests_per_min": 3}),
                     engine=db_engine, clock=clock)
    swappable, url = api_server
    swappable.app = app
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        yield client
    swappable.app = None


@pytest.mark.sqlite_only
def test_short_links_are_rate_limited_per_client(limited: httpx.Client, seed: Seeder) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    code = seed.link("Ab3_-xYz9Qk", touch, "https://m.example.com/c")
    answers = [limited.get(f"/s/{code}").status_code for _ in range(3)]
    answers += [limited.get("/s/guessing-codes-1").status_code]
    assert answers == [302, 302, 302, 429]
    refused = limited.get(f"/s/{code}")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    assert seed.row(LINKS, code=code)["clicks"] == 3


def test_the_limiter_refills_and_forgets_old_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(2, max_clients=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 30.0]
    now[0] = 30.0
    assert limiter.acquire("a") == 0.0
    limiter.acquire("b")
    limiter.acquire("c")  # "a" is the oldest: forgotten
    assert limiter.acquire("a") == 0.0


PREVIEWERS = [
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Twitterbot/1.0",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "TelegramBot (like TwitterBot)",
    "WhatsApp/2.23.20.0",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) mpcrawler",
]
PEOPLE = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2f) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 13; CUBOT X30) AppleWebKit/537.36 Chrome/120.0 Mobile",
    "",
]


def test_preview_crawlers_are_told_apart_from_people() -> None:
    assert all(is_preview("GET", {"user-agent": ua}) for ua in PREVIEWERS)
    assert not any(is_preview("GET", {"user-agent": ua}) for ua in PEOPLE)
    assert is_preview("HEAD", {"user-agent": PEOPLE[0]})
    assert is_preview("GET", {"user-agent": PEOPLE[0], "sec-purpose": "prefetch"})


def test_previews_are_not_clicks_and_write_nothing(
    client: httpx.Client, seed: Seeder, statements: Statements
) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    code = seed.link("Ab3_-xYz9Qk", touch, "https://m.example.com/c")
    with statements.during():
        for agent in PREVIEWERS:
            answer = client.get(f"/s/{code}", headers={"User-Agent": agent})
            assert answer.status_code == 302
        assert client.head(f"/s/{code}").status_code == 302
    assert statements.writes() == []
    assert seed.row(LINKS, code=code)["clicks"] == 0
    assert seed.row(TOUCHES, id=touch)["clicked_at"] is None


def test_a_repeated_click_costs_one_update(
    client: httpx.Client, seed: Seeder, statements: Statements
) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    code = seed.link("Ab3_-xYz9Qk", touch, "https://m.example.com/c")
    with statements.during():
        client.get(f"/s/{code}")
    assert [w.split()[1] for w in statements.writes()] == ["LINKS", "TOUCHES"]
    with statements.during():
        client.get(f"/s/{code}")
        client.get(f"/s/{code}")
    assert [w.split()[1] for w in statements.writes()] == ["LINKS", "LINKS"]
    assert seed.row(LINKS, code=code)["clicks"] == 3
    assert seed.row(TOUCHES, id=touch)["clicked_at"] == T0


@pytest.fixture
def walled(settings: Settings, db_engine: Engine, clock: ManualClock,
           api_server: tuple[Swappable, str]) -> Iterator[tuple[httpx.Client, ManualClock]]:
    wall = ManualClock(T0)
    app = create_app(settings, engine=db_engine, clock=clock, wall_clock=wall)
    swappable, url = api_server
    swappable.app = app
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        yield client, wall
    swappable.app = None


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("age", "status"), [(timedelta(minutes=59), 302),
                                             (timedelta(minutes=61), 400),
                                             (timedelta(minutes=-10), 400)])
def test_landing_tokens_expire_after_an_hour(
    walled: tuple[httpx.Client, ManualClock], seed: Seeder, age: timedelta, status: int
) -> None:
    client, wall = walled
    touch = seed.touch(seed.enrollment(seed.user("u1")))
    seed.link("Ab3_-xYz9Qk", touch, "https://m.example.com/c")
    token = landing_token("whsec-generic", journey_id="winback", user_id="u1", issued_at=T0)
    wall.set(T0 + age)
    answer = client.get("/l/winback", params={"t": token})
    assert answer.status_code == status
    assert (seed.row(TOUCHES, id=touch)["clicked_at"] is not None) is (status == 302)
    if status == 400:
        assert "expired" in answer.text
