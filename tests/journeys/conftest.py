"""A throw-away journeys + templates workspace, with relative paths as a user would type."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.journeys.loader import validate_paths
from tests.support import jpeg

POLICY = """\
timezone: Asia/Shanghai
caps:
  global:             { max: 3, per: 7d }
  sms:                { max: 2, per: 7d }
  wechat_article:     { max: 4, per: month }
  wecom_group_invite: { max: 1, per: day }
when_capped: skip
max_defer: 24h
send_hours:
  sms: "08:00-21:00"
holidays: CN
sms:
  signature: "【校园外卖】"
  opt_out_suffix: "拒收请回复R"
  price_per_segment: 0.045
"""

TEMPLATES = {
    "article.j2": '{% set title = "本周校园美食" %}\n<p>新店上线，满25减8。</p>\n',
    "invite.j2": "加入「校园优惠群」，每天限时红包 👇\n",
    "sms.j2": "好久不见！8元券已到账，点 {{ link }} 领取\n",
    "plain.j2": "好久不见，回来看看\n",
}


@dataclass
class Workspace:
    root: Path

    @property
    def journeys(self) -> Path:
        return Path("journeys")

    @property
    def templates(self) -> Path:
        return Path("templates")

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return Path(relative)

    def journey(self, text: str, name: str = "j.yaml") -> Path:
        return self.write(f"journeys/{name}", text)

    def template(self, name: str, text: str) -> Path:
        return self.write(f"templates/{name}", text)

    def problems(self, *paths: Path) -> list[str]:
        found = validate_paths(list(paths) or [self.journeys], self.templates)
        return [str(p) for p in found]


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.chdir(tmp_path)
    workspace = Workspace(tmp_path)
    workspace.write("journeys/policy.yaml", POLICY)
    for name, text in TEMPLATES.items():
        workspace.template(name, text)
    (tmp_path / "templates" / "cover.jpg").write_bytes(jpeg())
    return workspace
