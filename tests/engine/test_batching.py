"""Due article touches of one step leave in as few mass sends as WeChat allows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from orchestrator.channels.wechat_article import WeChatArticleChannel
from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import SendBatch, Touch, User
from tests.engine.conftest import T0
from tests.support import jpeg

USERS = User.__table__  # type: ignore[attr-defined]
TOUCHES = Touch.__table__  # type: ignore[attr-defined]
BATCHES = SendBatch.__table__  # type: ignore[attr-defined]
MASS_LIMIT = WeChatArticleChannel.max_batch  # 10,000 OpenIDs a call

ARTICLE = """\
id: article
name: 新品
entry:
  segment: "True"
reentry: 30d
goal: { event: order_placed, within: 7d }
steps:
  - id: article
    send: wechat_article
    template: a/article.j2
    cover: a/cover.jpg
"""
TEMPLATES: dict[str, str | bytes] = {
    "a/article.j2": '{% set title = "新品上架" %}<p>今天新品上架</p>',
    "a/cover.jpg": jpeg(),
}


def add_users(rt: Runtime, n: int) -> list[str]:
    """``n`` followers, in one multi-row insert per chunk."""
    ids = [f"b{i:05d}" for i in range(n)]
    rows = [{"user_id": uid, "openid": f"o{uid}", "wechat_followed": True, "sms_opt_out": False,
             "erased": False, "attributes": {}, "created_at": T0, "updated_at": T0}
            for uid in ids]
    with rt.db.begin() as conn:
        for start in range(0, n, 2_000):
            conn.execute(insert(USERS).values(rows[start : start + 2_000]))
        enroll(conn, rt.book.latest("article"), ids, now=T0)
    return ids


def mass_sends(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.records("wechat")
            if "message/mass/send" in r["path"] and r["outcome"] == "accepted"]


def template_sends(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.records("wechat") if "message/template/send" in r["path"]]


def send_all(rt: Runtime) -> None:
    assert isinstance(rt.clock, ManualClock)
    run_until_idle(rt)  # the step's touches fall due now...
    rt.clock.advance(rt.settings.gather_window_s)  # ...and leave once the gathering is over
    run_until_idle(rt)


# SQLite only: ~6 s here, PostgreSQL ~14 s for the same path (claims there are covered by
# the smaller tests of both databases).
@pytest.mark.slow
@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_ten_thousand_and_one_touches_leave_in_two_mass_sends(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"article": ARTICLE}, templates=TEMPLATES, users=0)
    ids = add_users(rt, MASS_LIMIT + 1)  # split evenly: 5,001 + 5,000, nobody alone
    send_all(rt)

    calls = mass_sends(sandbox)
    assert len(calls) == 2
    assert all(2 <= len(c["body"]["touser"]) <= MASS_LIMIT for c in calls)
    assert template_sends(sandbox) == []  # nobody was left alone for a template message
    reached = Counter(openid for c in calls for openid in c["body"]["touser"])
    assert set(reached) == {f"o{uid}" for uid in ids}
    assert set(reached.values()) == {1}  # every OpenID exactly once
    assert len({c["body"]["clientmsgid"] for c in calls}) == 2  # one frozen batch per call
    with rt.db.connect() as conn:
        statuses = dict(conn.execute(select(TOUCHES.c.status, func.count())
                                     .group_by(TOUCHES.c.status)).all())
        batches = conn.execute(select(func.count()).select_from(BATCHES)).scalar_one()
    assert (statuses, batches) == ({"sent": len(ids)}, 2)


def test_one_more_than_a_batch_leaves_nobody_alone(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(WeChatArticleChannel, "max_batch", 3)  # the same cut, at a small scale
    rt = make_runtime(journeys={"article": ARTICLE}, templates=TEMPLATES, users=0)
    ids = add_users(rt, 4)
    send_all(rt)
    assert sorted(len(c["body"]["touser"]) for c in mass_sends(sandbox)) == [2, 2]
    assert template_sends(sandbox) == []
    assert len(ids) == 4
