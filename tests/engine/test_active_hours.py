"""Simulated responses that depend on the hour: a touch in the person's top hours is
answered more often than one outside their active hours, by the profile best_hour uses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from orchestrator.engine.active_hours import placements
from orchestrator.engine.responses import ActiveHours, Responses, load_responses, plan_touch
from orchestrator.engine.runtime import Runtime
from tests.audience.helpers import add_events, ev
from tests.engine.conftest import T0, TEMPLATES
from tests.engine.test_best_hour import TIMED, _local

SENT = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)


def _kinds(r: Responses, placement: str | None, touches: range) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {"click": set(), "convert": set()}
    for touch_id in touches:
        for action in plan_touch(r, 7, touch_id=touch_id, enrollment_id=touch_id,
                                 user_id="u", channel="sms", tier=None, sent_at=SENT,
                                 goal_within=timedelta(days=7), placement=placement):
            if action.kind in found:
                found[action.kind].add(touch_id)
    return found


def test_the_hour_scales_click_and_convert() -> None:
    r = Responses(active_hours=ActiveHours(top=2.0, inside=1.0, outside=0.5))
    touches = range(4000)
    top, inside, outside = (_kinds(r, p, touches) for p in ("top", "inside", "outside"))
    plain = _kinds(Responses(active_hours=None), "top", touches)
    assert inside == _kinds(r, None, touches) == plain  # factor 1: the plain reaction
    for kind in ("click", "convert"):
        # The same draws against a higher probability: more people, never others.
        assert outside[kind] < inside[kind] < top[kind]
    clicks = {p: len(k["click"]) / len(touches) for p, k in
              (("top", top), ("inside", inside), ("outside", outside))}
    assert clicks["top"] == pytest.approx(2 * 0.09, abs=0.02)
    assert clicks["outside"] == pytest.approx(0.5 * 0.09, abs=0.015)


def test_the_responses_file_takes_active_hours(tmp_path: Path) -> None:
    path = tmp_path / "responses.yaml"
    path.write_text("active_hours: {top: 3, inside: 1.8, outside: 0.6, top_hours: 2}\n")
    assert load_responses(path).active_hours == ActiveHours(top=3, inside=1.8, outside=0.6,
                                                            top_hours=2)
    path.write_text("active_hours: null\n")
    assert load_responses(path).active_hours is None
    path.write_text("active_hours: {top: -1}\n")
    with pytest.raises(ValidationError, match=r"active_hours\.top\n.*greater than or equal"):
        load_responses(path)


def test_placements_read_the_profile_best_hour_uses(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime({"timed": TIMED}, TEMPLATES, users=3)
    add_events(rt.db, [
        *(ev("u0000", "login", _local(d, 19)) for d in range(1, 11)),  # an evening habit
        *(ev("u0002", "session", _local(d % 20 + 1, 15)) for d in range(60)),  # population
    ])
    version = rt.book.latest("timed").version

    def touch(id_: int, user: str, local_hour: int) -> SimpleNamespace:
        sent = datetime(2026, 3, 2, local_hour, 5, tzinfo=UTC) - timedelta(hours=8)
        return SimpleNamespace(id=id_, user_id=user, journey_id="timed",
                               journey_version=version, sent_at=sent)

    with rt.db.connect() as conn:
        found = placements(rt, conn, [touch(1, "u0000", 19), touch(2, "u0000", 10),
                                      touch(3, "u0001", 15), touch(4, "u0001", 3)],
                           now=T0 + timedelta(hours=12), top=3)
    # u0000's own evenings; u0001 (no history) the population's afternoons.
    assert found == {1: "top", 2: "outside", 3: "top", 4: "outside"}
