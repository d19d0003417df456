"""test_recipients is acted on (the engine sends the seed list its copies): validate accepts
it without a word."""

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


def test_test_recipients_is_accepted_without_a_warning(tmp_path: Path) -> None:
    shutil.copy(REPO / "journeys" / "policy.yaml", tmp_path / "policy.yaml")
    (tmp_path / "tr.yaml").write_text(JOURNEY, encoding="utf-8")
    assert validate_paths([tmp_path], REPO / "templates") == []
