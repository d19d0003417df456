"""``recall demo`` end to end, as a user runs it: a subprocess on the real embedded stack
(SQLite, embedded Redis, Celery worker, API, sandbox). The numbers it prints must be the
ones ``recall export`` gives for the same run."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECALL = [sys.executable, "-m", "orchestrator.cli"]
SENT = ("sent", "delivered")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    env.update(RECALL_STATE_DIR=str(tmp_path / ".recall"),
               RECALL_JOURNEYS_DIR=str(ROOT / "journeys"),
               RECALL_TEMPLATES_DIR=str(ROOT / "templates"),
               PYTHONPATH=str(ROOT))
    return env


def tables(text: str) -> dict[str, list[list[str]]]:
    """The rich tables of ``text`` by title: each body row as its stripped cells."""
    found: dict[str, list[list[str]]] = {}
    title, rows = "", None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("┏"):
            title = lines[i - 1].strip()
            rows = found.setdefault(title, [])
        elif line.startswith("│") and rows is not None:
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
        elif line.startswith("└"):
            rows = None
    return found


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def export(env: dict[str, str], kind: str, cwd: Path) -> list[dict[str, str]]:
    done = subprocess.run([*RECALL, "export", kind, "--format", "csv"], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)
    return list(csv.DictReader(io.StringIO(done.stdout)))


@pytest.mark.slow
def test_demo_prints_what_the_exports_hold(tmp_path: Path) -> None:
    env = _env(tmp_path)
    done = subprocess.run([*RECALL, "demo", "--users", "500", "--days", "7"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr + done.stdout
    # Piped, the phases still speak: one line as each starts and ends.
    for phase in ("population", "import", "churn model", "tiers", "simulation", "figures"):
        assert f"demo: {phase} (" in done.stderr
    printed = tables(done.stdout)
    env["RECALL_STATE_DIR"] = str(tmp_path / ".recall" / "demo" / "state")
    touches = export(env, "touches", tmp_path)
    enrollments = export(env, "enrollments", tmp_path)

    journeys = {row[0]: row for row in printed["journeys"]}
    assert set(journeys) >= {"payment-rescue", "winback-at-risk"}
    for journey_id, row in journeys.items():
        theirs = [t for t in touches if t["journey_id"] == journey_id]
        assert number(row[1]) == sum(e["journey_id"] == journey_id for e in enrollments)
        assert number(row[2]) == len(theirs)
        assert number(row[3]) == sum(t["status"] in SENT for t in theirs)
    # Payment failures were replayed as they happened, and enrolled people in the rescue.
    assert number(journeys["payment-rescue"][1]) > 0

    # The monthly care journey enrolls on the first morning: its second touch, three days
    # later, is reached inside the run (a run that ends before it shows eligible 0).
    funnel = _funnel(printed["funnel per touch (treatment)"])
    assert number(funnel["tier-churned-care", "sms"][3]) > 0
    # Never an unexplained dash: a retention cell is a rate, or "not yet" with its reason.
    arm_rows = printed["recall rate by arm (each user once, first entry)"]
    retention_cells = {cell for row in arm_rows for cell in row[6:]}
    assert "—" not in retention_cells and "" not in retention_cells
    if "not yet" in retention_cells:
        assert "not yet: retained 30d (days 8–30 after entry) is not observable in this run: " \
               "the window ends after the data" in done.stdout
    # The churn model: ECE beside AUC and Brier, and what it means on a sample this size.
    assert "Brier" in done.stdout and "ECE" in done.stdout
    assert "that a perfectly calibrated model would show on" in done.stdout
    arms = _arms(printed["recall rate by arm (each user once, first entry)"])
    assert arms == _arms_from(enrollments, set(journeys))
    page = (tmp_path / "reports" / "demo.html").read_text(encoding="utf-8")
    assert all(f'id="{journey_id}"' in page for journey_id in journeys)

    # The send-time A/B and each channel's rung: users and conversions as the exports say.
    ab = printed["A/B variants: users who reached the step, converted; each variant "
                 "against the step's first"]
    assert _ab(ab) == _ab_from(touches, enrollments)
    assert {row[1] for row in ab} >= {"due (when due)", "best (best_hour)"}
    rungs = printed["each channel's own increment: users who reached the step, held out of "
                    "it (rung holdout) or not"]
    assert [row[0] for row in rungs] == ["winback-at-risk/article (10%)",
                                         "winback-at-risk/invite (10%)",
                                         "winback-at-risk/sms (20%)"]
    for row in rungs:
        step = row[0].split("/")[1].split(" ")[0]
        assert (_ratio(row[2]), _ratio(row[3])) == _rung_from(
            touches, enrollments, "winback-at-risk", step)
    money = printed["each channel's incremental return (against its rung holdout)"]
    assert [row[0] for row in money] == [row[0] for row in rungs]
    assert "A/B variants" in page and "Each channel's own increment" in page


def _ratio(cell: str) -> tuple[int, int]:
    """``"12/34 = 35.29%"`` → ``(12, 34)``."""
    converted, users = cell.split(" = ")[0].split("/")
    return number(converted), number(users)


def _ab(rows: list[list[str]]) -> dict[tuple[str, str], tuple[int, int]]:
    found, step = {}, ""
    for row in rows:
        step = row[0] or step
        found[step, row[1].split(" ")[0]] = _ratio(row[3])
    return found


def _converted_enrollments(enrollments: list[dict[str, str]]) -> set[str]:
    return {e["enrollment_id"] for e in enrollments if e["converted_at"]}


def _ab_from(touches: list[dict[str, str]], enrollments: list[dict[str, str]]
             ) -> dict[tuple[str, str], tuple[int, int]]:
    """Per step and variant: treatment users who got the variant (not rung-held-out), and
    those of them whose enrollment at the step converted."""
    won = _converted_enrollments(enrollments)
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    converted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for t in touches:
        if t["variant"] and t["arm"] == "treatment" and t["rung_arm"] != "holdout":
            key = (f"{t['journey_id']}/{t['step_id']}", t["variant"])
            users[key].add(t["user_id"])
            if t["enrollment_id"] in won:
                converted[key].add(t["user_id"])
    return {key: (len(converted[key]), len(users[key])) for key in users}


def _rung_from(touches: list[dict[str, str]], enrollments: list[dict[str, str]],
               journey_id: str, step_id: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(converted, users) held out of the step and reached at it, from the exports."""
    won = _converted_enrollments(enrollments)
    cells = []
    for arm in ("holdout", "treatment"):
        at_step = [t for t in touches if t["journey_id"] == journey_id and
                   t["step_id"] == step_id and t["arm"] == "treatment" and t["rung_arm"] == arm]
        cells.append((len({t["user_id"] for t in at_step if t["enrollment_id"] in won}),
                      len({t["user_id"] for t in at_step})))
    return cells[0], cells[1]


def _funnel(rows: list[list[str]]) -> dict[tuple[str, str], list[str]]:
    """``(journey, step) → cells`` of the funnel (a long suppressed list wraps onto lines
    with no step)."""
    steps, journey = {}, ""
    for row in rows:
        journey = row[0] or journey
        if row[1]:
            steps[journey, row[1]] = row
    return steps


def _arms(rows: list[list[str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """``(journey, arm) → (users, converted)`` as printed (a journey's name is on its first
    row only)."""
    arms, journey = {}, ""
    for row in rows:
        journey = row[0] or journey
        arms[journey, row[1]] = (number(row[2]), number(row[3]))
    return arms


def _arms_from(enrollments: list[dict[str, str]], journeys: set[str]
               ) -> dict[tuple[str, str], tuple[int, int]]:
    """The same from the export: each user once per journey, in the arm of their first
    enrollment, converted if any of their enrollments converted."""
    first: dict[tuple[str, str], str] = {}
    converted: set[tuple[str, str]] = set()
    for e in sorted(enrollments, key=lambda e: (e["entered_at"], int(e["enrollment_id"]))):
        key = (e["journey_id"], e["user_id"])
        first.setdefault(key, e["arm"])
        if e["converted_at"]:
            converted.add(key)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for key, arm in first.items():
        counts[key[0], arm][0] += 1
        counts[key[0], arm][1] += key in converted
    return {(j, arm): (counts[j, arm][0], counts[j, arm][1]) for j in journeys
            for arm in ("control", "treatment")}
