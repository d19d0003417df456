"""A key the engine does not act on yet is flagged, never silently accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.journeys.loader import validate_paths

REPO = Path(__file__).resolve().parents[2]

JOURNEY = """\
id: tr
name: t
entry:
  segment: "True"
test_recipients: ["u1"]
steps:
  - id: sms
    send: sms
    template: winback/sms_a.j2
    link: "https://x.example/?u={{ user_id }}"
"""


def test_test_recipients_is_flagged_as_not_acted_on(tmp_path: Path) -> None:
    shutil.copy(REPO / "journeys" / "policy.yaml", tmp_path / "policy.yaml")
    (tmp_path / "tr.yaml").write_text(JOURNEY, encoding="utf-8")
    problems = validate_paths([tmp_path], REPO / "templates")
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'tr.yaml'}:5:1: warning: test_recipients is accepted but not acted on "
        "yet: the engine sends no seed-list copies; remove it and use "
        "`recall send-test JOURNEY --to LIST` meanwhile"
    ]
