"""The journey book's policy: RECALL_TIMEZONE stands in when policy.yaml names no zone."""

from __future__ import annotations

from pathlib import Path

from orchestrator.engine.book import JourneyBook
from tests.engine.conftest import POLICY, TEMPLATES, WINBACK, write_journeys


def test_a_policy_without_a_timezone_takes_the_setting(tmp_path: Path) -> None:
    write_journeys(tmp_path, {"winback": WINBACK}, TEMPLATES,
                   POLICY.replace("timezone: Asia/Shanghai\n", ""))
    book = JourneyBook(tmp_path / "journeys", tmp_path / "templates", tmp_path / "state",
                       "America/New_York")
    assert book.policy.timezone == "America/New_York"


def test_a_policy_timezone_wins_over_the_setting(tmp_path: Path) -> None:
    write_journeys(tmp_path, {"winback": WINBACK}, TEMPLATES, POLICY)
    book = JourneyBook(tmp_path / "journeys", tmp_path / "templates", tmp_path / "state",
                       "America/New_York")
    assert book.policy.timezone == "Asia/Shanghai"
