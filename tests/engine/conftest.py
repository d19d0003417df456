"""Engine fixtures: a journey folder, a live sandbox, a runtime on a manual clock."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.engine.importer import import_users
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle, run_in_thread
from orchestrator.store.clock import StoredClock
from tests.support import jpeg, redis_db_url

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai

POLICY = """\
timezone: Asia/Shanghai
caps:
  global: { max: 10, per: 7d }
  sms: { max: 5, per: 7d }
when_capped: skip
max_defer: 24h
send_hours:
  sms: "08:00-21:00"
sms:
  signature: "【校园外卖】"
  opt_out_suffix: "拒收请回复R"
  price_per_segment: 0.045
"""

WINBACK = """\
id: winback
name: 召回
entry:
  segment: "tier == 'at_risk'"
reentry: 30d
holdout: 20%
goal: { event: order_placed, within: 7d }
priority: 10
steps:
  - id: article
    send: wechat_article
    template: w/article.j2
    cover: w/cover.jpg
  - wait: 1d
  - id: invite
    send: wecom_group_invite
    template: w/invite.j2
    group: campus-deals
  - wait: 2d
    window: "10:00-20:00"
  - if: "not joined('invite')"
    then: sms
    else: exit
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/coupon?u={{ user_id }}"
"""

TEMPLATES = {
    "w/article.j2": '{% set title = "好久不见" %}<p>同学你好，新品上架</p>',  # one for all
    "w/invite.j2": "进群领券：校园优惠群",
    "w/sms.j2": "送你一张5元券 {{ link }}",
    "w/cover.jpg": jpeg(),
}


def write_journeys(root: Path, journeys: dict[str, str], templates: dict[str, str | bytes],
                   policy: str = POLICY) -> None:
    (root / "journeys").mkdir(parents=True, exist_ok=True)
    (root / "journeys" / "policy.yaml").write_text(policy, encoding="utf-8")
    for name, text in journeys.items():
        (root / "journeys" / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    for name, text in templates.items():
        path = root / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):  # a picture (an article cover)
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")


def write_users(path: Path, n: int) -> list[str]:
    lines = ["user_id,openid,unionid,external_userid,wecom_sender,phone,timezone,"
             "sms_opt_out,wechat_followed,nickname"]
    ids = []
    for i in range(n):
        uid = f"u{i:04d}"
        ids.append(uid)
        lines.append(f"{uid},o{uid},un{uid},wm{uid},staff1,+86138{i:08d},,false,true,同学{i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with run_in_thread() as handle:
        handle.state.configure({"wecom_auto_confirm": True})
        yield handle


@pytest.fixture
def engine_redis_url() -> Iterator[str]:
    url = redis_db_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def make_runtime(
    tmp_path: Path, db_engine: Engine, sandbox: SandboxHandle, engine_redis_url: str
) -> Iterator[Callable[..., Runtime]]:
    """Runtimes on the test's database and sandbox; their channels (connection pools, the
    SMS adapter's per-thread clients) are closed when the test ends."""
    made: list[Runtime] = []
    def make(journeys: dict[str, str] | None = None, templates: dict[str, str] | None = None,
             users: int = 20, shared_clock: bool = False, policy: str = POLICY,
             **overrides: object) -> Runtime:
        """``shared_clock``: business time in the database, as worker processes read it."""
        write_journeys(tmp_path, journeys or {"winback": WINBACK}, templates or TEMPLATES,
                       policy)
        settings = Settings(
            _env_file=None,
            state_dir=tmp_path / "state", journeys_dir=tmp_path / "journeys",
            templates_dir=tmp_path / "templates", redis_url=engine_redis_url,
            wechat_api_base=sandbox.base_url, wecom_api_base=sandbox.base_url,
            twilio_api_base=sandbox.base_url, public_base_url="http://recall.test",
            database_url=db_engine.url.render_as_string(hide_password=False),
            celery_queue=f"recall-test-{uuid.uuid4().hex[:8]}",
            **overrides,
        )
        clock: ManualClock | StoredClock = ManualClock(T0)
        if shared_clock:
            clock = StoredClock(db_engine)
            clock.set(T0)
        rt = Runtime.from_settings(settings, db=db_engine, clock=clock)
        rt.book.sync(db_engine, now=T0)
        users_csv = tmp_path / "users.csv"
        write_users(users_csv, users)
        import_users(db_engine, users_csv, now=T0)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()
