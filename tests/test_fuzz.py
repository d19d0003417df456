"""Hostile input, generated: journey YAML, ``users.csv`` and ``events.jsonl``.

Each property says what must hold for *any* input: a clear error or a report, never an
unexpected exception, and no partial write when the whole input is refused. Example
counts are bounded (``EXAMPLES``) so that the suite stays quick; the HTTP bodies are
fuzzed in ``tests/api/test_fuzz_http.py``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select

from orchestrator.engine.importer import REQUIRED, import_events, import_users
from orchestrator.errors import InputError
from orchestrator.journeys.loader import check_paths
from orchestrator.store import migrate
from orchestrator.store.db import make_engine
from orchestrator.store.models import Event, OptOut, User
from tests.engine.conftest import POLICY, T0, TEMPLATES, WINBACK, write_journeys

EXAMPLES = {"yaml": 100, "yaml_text": 60, "users": 50, "events": 50}
USERS = User.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
OPT_OUTS = OptOut.__table__  # type: ignore[attr-defined]
BASE = settings(deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """Deterministic (CI reruns the same examples), bounded, no example database."""
    return settings(BASE, max_examples=examples)

# ------------------------------------------------------------------ journey YAML

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["1d", "0s", "-3h", "10:00-20:00", "25:00-26:00", "exit",
                                     "sms", "wechat_article", "{{ user_id }}", "{% if %}",
                                     "{{ ''.__class__ }}", "50%", "101%", "never", "month"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
JOURNEY = yaml.safe_load(WINBACK)
STEP_KEYS = ["id", "send", "template", "wait", "window", "if", "then", "else", "link",
             "variants", "group", "holdout", "at", "fallback"]


@st.composite
def journey_docs(draw: st.DrawFn) -> str:
    """The valid win-back journey with a few keys replaced, added or removed."""
    doc = json.loads(json.dumps(JOURNEY))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "step", "drop"]))
        if where == "top":
            key = draw(st.sampled_from([*JOURNEY, "policy", "test_recipients", "pools",
                                        "retention", "priority", "unknown_key"]))
            doc[key] = draw(values)
        elif where == "step" and doc.get("steps"):
            steps = doc["steps"] if isinstance(doc["steps"], list) else []
            if steps:
                step = steps[draw(st.integers(0, len(steps) - 1))]
                if isinstance(step, dict):
                    step[draw(st.sampled_from(STEP_KEYS))] = draw(values)
        elif doc:
            doc.pop(draw(st.sampled_from(sorted(doc))), None)
    return yaml.safe_dump(doc, allow_unicode=True)


@pytest.fixture
def journey_dir(tmp_path: Path) -> Path:
    write_journeys(tmp_path, {}, TEMPLATES, POLICY)
    return tmp_path


def assert_checked(journey_dir: Path, text: str | bytes, name: str = "fuzzed.yaml") -> None:
    path = journey_dir / "journeys" / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    report = check_paths([path], journey_dir / "templates")  # must never raise
    for problem in report.problems:
        assert problem.line >= 1 and problem.col >= 1 and problem.message
    if any(p.file.endswith(name) for p in report.errors):
        assert not report.journeys


@fuzz(EXAMPLES["yaml"])
@given(text=journey_docs())
def test_journey_loader_structured(journey_dir: Path, text: str) -> None:
    assert_checked(journey_dir, text)


@fuzz(EXAMPLES["yaml_text"])
@given(text=st.one_of(
    st.text(max_size=200),
    st.binary(max_size=80),
    st.builds(lambda cut, junk: WINBACK[:cut] + junk + WINBACK[cut:],
              st.integers(0, len(WINBACK)), st.text(max_size=12)),
    st.sampled_from(["a: &x [*x]", "!!python/object:os.system {}", "a: b: c", "- - -",
                     "steps: !!binary aGVsbG8=", "? [a]\n: b", "x: " + "[" * 200,
                     "id: x\n" * 3, "\ufeffid: x", "%YAML 9.9\n---\nid: x"]),
))
def test_journey_loader_raw_text(journey_dir: Path, text: str | bytes) -> None:
    assert_checked(journey_dir, text)


@fuzz(EXAMPLES["yaml_text"] // 2)
@given(policy=st.dictionaries(st.sampled_from(["timezone", "caps", "when_capped", "max_defer",
                                               "send_hours", "sms", "holidays", "x"]),
                              values, max_size=4))
def test_policy_loader(journey_dir: Path, policy: dict[str, Any]) -> None:
    (journey_dir / "journeys" / "policy.yaml").write_text(yaml.safe_dump(policy),
                                                         encoding="utf-8")
    assert_checked(journey_dir, WINBACK, "winback.yaml")


# ------------------------------------------------------------------ users.csv


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'recall.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def empty(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (USERS, EVENTS, OPT_OUTS):
            conn.execute(delete(table))


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


cells = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", "true", "0", "yes", "maybe", "+8613800138000", "138 0013 8000", "12345", "+1",
     "Asia/Shanghai", "Mars/Base", "o-shared", "wm-shared", " u1 ", "a,b", 'q"uote',
     "x" * 200, "\u0000", "\r\n"]))


@st.composite
def users_files(draw: st.DrawFn) -> bytes:
    header = list(REQUIRED) + draw(st.lists(st.text(max_size=6), max_size=2))
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    if draw(st.integers(0, 4)) == 0:
        header = [h for h in header if h != draw(st.sampled_from(list(REQUIRED)))]
    delimiter = draw(st.sampled_from([",", ",", ";", "\t", "|"]))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=len(header) + 2), max_size=8))
    rows = [[draw(st.sampled_from(["u1", "u2", "u3", ""]))] + r[1:] if r else r
            for r in rows]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=draw(
        st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    data = out.getvalue().encode()
    if draw(st.integers(0, 6)) == 0:
        data += draw(st.binary(max_size=8))  # a broken tail (maybe not UTF-8)
    return data


@fuzz(EXAMPLES["users"])
@given(data=users_files())
def test_users_import_reports_or_refuses_whole(engine: Engine, tmp_path: Path,
                                               data: bytes) -> None:
    empty(engine)
    path = tmp_path / "users.csv"
    path.write_bytes(data)
    try:
        report = import_users(engine, path, now=T0)
    except InputError as exc:
        assert str(exc).startswith(f"{path}:")
        assert count(engine, USERS) == 0  # refused as a whole: nothing written
        return
    assert count(engine, USERS) == report.imported
    assert all(line >= 2 and reason for line, reason in report.errors)
    with engine.connect() as conn:
        phones = conn.execute(select(USERS.c.phone).where(USERS.c.phone.is_not(None)))
        assert all(p.startswith("+") and p[1:].isdigit() for p in phones.scalars())


# ------------------------------------------------------------------ events.jsonl

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@st.composite
def event_lines(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=40)).replace("\n", " ").replace("\r", " ")
    event: dict[str, Any] = {
        "event_id": draw(st.one_of(st.text(max_size=8), st.sampled_from(["e1", "e2", ""]))),
        "user_id": draw(st.sampled_from(["u1", "u2", "", "x" * 200])),
        "name": draw(st.sampled_from(["login", "order_placed", "unsubscribe", "", "payment_"
                                      "failed"])),
        "ts": draw(st.sampled_from(["2026-03-02T10:00:00+08:00", "2026-03-02T10:00:00",
                                    "yesterday", "", "9999-12-31T23:59:59+14:00"])),
        "value": draw(st.one_of(st.none(), st.floats(), st.text(max_size=4))),
        "props": draw(st.one_of(st.dictionaries(st.sampled_from(["channel", "x"]), st.one_of(
            st.sampled_from(["sms", "all", "email"]), json_values), max_size=2), json_values)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=2)):
        event.pop(key, None)
    if kind == 1:
        event[draw(st.text(max_size=5))] = draw(json_values)
    return json.dumps(event, allow_nan=True)


@fuzz(EXAMPLES["events"])
@given(lines=st.lists(event_lines(), max_size=12))
def test_events_import_accepts_or_rejects_each_line(engine: Engine, tmp_path: Path,
                                                    lines: list[str]) -> None:
    empty(engine)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_events(engine, path, now=T0)
    stored = count(engine, EVENTS)
    assert stored == report.imported
    non_empty = sum(1 for line in lines if line.strip())
    assert report.imported + report.duplicates + len(report.errors) == non_empty
    assert all(1 <= line <= len(lines) and reason for line, reason in report.errors)
    with engine.connect() as conn:
        unsubscribes = conn.execute(select(func.count()).select_from(EVENTS).where(
            EVENTS.c.name == "unsubscribe")).scalar_one()
    assert (count(engine, OPT_OUTS) > 0) == (unsubscribes > 0)
