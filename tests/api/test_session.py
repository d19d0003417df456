"""The dashboard's session tokens and sign-in helpers (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.api import session

KEYS = ["key-one", "key-two"]
NOW = 1_780_000_000.0


def test_a_token_is_valid_until_it_expires_under_its_key_only() -> None:
    token = session.issue("key-two", now=NOW)
    assert session.is_valid(token, KEYS, now=NOW)
    assert session.is_valid(token, KEYS, now=NOW + session.SESSION_S - 1)
    assert not session.is_valid(token, KEYS, now=NOW + session.SESSION_S)
    assert not session.is_valid(token, ["key-one"], now=NOW)  # key-two was rotated out
    assert not session.is_valid(token, [], now=NOW)
    assert "key-two" not in token


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(codec="utf-8"))
def test_any_change_to_a_token_makes_it_invalid(position: int, replacement: str) -> None:
    token = session.issue("key-one", now=NOW)
    i = position % len(token)
    changed = token[:i] + replacement + token[i + 1:]
    if changed != token:
        assert not session.is_valid(changed, KEYS, now=NOW)


@pytest.mark.parametrize("token", ["", ".", "abc", "123.", ".abc", "-5.ab", "1e9.ab",
                                   "9" * 13 + ".ab", "１２３.ab"])
def test_malformed_tokens_are_invalid(token: str) -> None:
    assert not session.is_valid(token, KEYS, now=0)


@pytest.mark.parametrize(("presented", "ok"), [
    ("key-one", True), ("key-two", True), ("key-on", False), ("key-one ", False), ("", False),
])
def test_matching_key(presented: str, ok: bool) -> None:
    assert session.matching_key(presented, KEYS) is ok
    assert session.matching_key(presented, []) is False


@pytest.mark.parametrize(("target", "safe"), [
    ("/", "/"), ("/journeys/x?a=1", "/journeys/x?a=1"), (None, "/"), ("", "/"),
    ("//evil.example", "/"), ("https://evil.example", "/"), ("/\\evil.example", "/"),
    ("journeys", "/"), ("javascript:alert(1)", "/"),
])
def test_safe_next_stays_on_this_site(target: str | None, safe: str) -> None:
    assert session.safe_next(target) == safe
