from __future__ import annotations

import csv
import json
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orchestrator.audience.synth import (
    USER_COLUMNS,
    Population,
    generate,
    simulate,
    write_events_jsonl,
    write_users_csv,
)
from orchestrator.errors import InputError
from tests.audience.conftest import SYNTH_START


def test_same_seed_same_population() -> None:
    a = generate(300, days_of_history=20, start=SYNTH_START, seed=4)
    b = generate(300, days_of_history=20, start=SYNTH_START, seed=4)
    c = generate(300, days_of_history=20, start=SYNTH_START, seed=5)
    assert a == b
    assert a[1] != c[1]


def test_users_look_like_a_campus(population: Population) -> None:
    users = population.users
    assert list(users[0])[: len(USER_COLUMNS)] == list(USER_COLUMNS)
    assert {k for u in users for k in u} == {*USER_COLUMNS, "campus", "grade", "signup_channel"}
    assert len({u["user_id"] for u in users}) == len(users)
    for u in users:
        assert re.fullmatch(r"o[-\w]{27}", u["openid"])
        assert u["phone"] is None or re.fullmatch(r"\+861[35789]\d{9}", u["phone"])
        assert (u["wecom_sender"] is None) == (u["external_userid"] is None)
    zones = Counter(u["timezone"] for u in users)
    assert zones.most_common(1)[0][0] == "Asia/Shanghai"
    assert zones["Asia/Shanghai"] / len(users) > 0.9


def test_events_are_spec_events_in_time_order(population: Population) -> None:
    events = population.events
    assert len({e["event_id"] for e in events}) == len(events)
    stamps = [datetime.fromisoformat(e["ts"]) for e in events]
    assert stamps == sorted(stamps)
    assert all(e["ts"].endswith("+08:00") for e in events[:100])
    assert SYNTH_START < stamps[0] and stamps[-1] < SYNTH_START + timedelta(days=60)
    assert {e["name"] for e in events} == {"login", "session", "order_placed", "payment_failed"}
    for e in events[:2_000]:
        assert set(e) == {"event_id", "user_id", "name", "ts", "value", "props"}
        priced = e["name"] in ("order_placed", "payment_failed")
        assert (e["value"] is not None and e["value"] > 0) if priced else e["value"] is None


def test_many_buyers_are_sparse(population: Population) -> None:
    orders = Counter(e["user_id"] for e in population.events if e["name"] == "order_placed")
    one_or_two = sum(1 for n in orders.values() if n <= 2)
    assert one_or_two / len(population.users) > 0.15
    assert max(orders.values()) > 20  # and some order nearly every day


def test_truth_matches_what_the_process_then_does() -> None:
    pop = simulate(10_000, days_of_history=44, start=SYNTH_START, seed=21)
    truth = np.array(list(pop.truth_at(SYNTH_START + timedelta(days=30), 14).values()))
    silent = ~pop.active[:, 30:44].any(axis=1)
    assert truth.mean() == pytest.approx(silent.mean(), abs=0.01)
    for group in np.array_split(np.argsort(truth), 5):  # calibrated in every quintile
        assert truth[group].mean() == pytest.approx(silent[group].mean(), abs=0.025)


def test_generate_returns_truth_for_every_user_after_the_history() -> None:
    users, _, truth = generate(200, days_of_history=10, start=SYNTH_START, seed=1)
    assert list(truth) == [u["user_id"] for u in users]
    assert all(0.0 <= p <= 1.0 for p in truth.values())


def test_truth_needs_a_cutoff_on_the_day_grid(population: Population) -> None:
    with pytest.raises(InputError, match="is not a whole number of days after"):
        population.truth_at(SYNTH_START + timedelta(hours=30), 14)
    with pytest.raises(InputError, match="is outside the generated history"):
        population.truth_at(SYNTH_START + timedelta(days=61), 14)
    with pytest.raises(InputError, match="start must be timezone-aware"):
        simulate(10, days_of_history=5, start=datetime(2026, 1, 1), seed=0)


def test_writers_produce_the_spec_files(tmp_path: Path) -> None:
    users, events, _ = generate(50, days_of_history=10, start=SYNTH_START, seed=2)
    assert write_users_csv(tmp_path / "users.csv", users) == 50
    assert write_events_jsonl(tmp_path / "events.jsonl", events) == len(events)
    with (tmp_path / "users.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == [*USER_COLUMNS, "campus", "grade", "signup_channel"]
        rows = list(reader)
    assert rows[0]["user_id"] == users[0]["user_id"]
    assert {r["sms_opt_out"] for r in rows} <= {"true", "false"}
    assert all(r["unionid"] == (u["unionid"] or "") for r, u in zip(rows, users, strict=True))
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == events
