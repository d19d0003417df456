"""The engine with real Celery worker processes: nothing lost, nothing sent twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select

from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import in_flight, tick
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.stack import start_worker, stop_process
from orchestrator.sandbox.faults import FaultSpec
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Touch
from tests.engine.conftest import T0

TOUCHES = Touch.__table__  # type: ignore[attr-defined]

SMS_ONLY = """\
id: nudge
name: 短信提醒
entry:
  segment: "True"
holdout: 10%
goal: { event: order_placed, within: 7d }
reentry: 7d
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/c?u={{ user_id }}"
"""


@pytest.fixture
def worker_factory(tmp_path: object) -> Iterator[Callable[[Runtime], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(rt: Runtime) -> subprocess.Popen[bytes]:
        proc = start_worker(rt.settings, name=f"t{len(procs)}")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def drain(rt: Runtime, *, timeout_s: float = 120.0) -> None:
    """Tick (as beat would) until nothing is claimable or in flight; bounded in real time."""
    from workers.tasks import CeleryDispatcher

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        working = in_flight(rt)  # before the tick: what finishes during it leaves due work
        claimed = tick(rt, CeleryDispatcher())
        if claimed.empty and not working:
            return
        time.sleep(0.05)  # the beat's period, scaled down; not a synchronisation point
    with rt.db.connect() as conn:
        statuses = conn.execute(select(TOUCHES.c.status, TOUCHES.c.reason, func.count())
                                .group_by(TOUCHES.c.status, TOUCHES.c.reason)).all()
    raise AssertionError(f"work still in flight after {timeout_s}s: {statuses}")


def sms_by_recipient(sandbox: SandboxHandle) -> Counter[str]:
    """Messages the provider created (its own record), by recipient."""
    return Counter(r["body"]["To"] for r in sandbox.state.records("twilio")
                   if r["method"] == "POST" and r["path"].endswith("/Messages.json")
                   and r["outcome"] in ("accepted", "fault:drop", "fault:timeout"))


def setup(rt: Runtime, n: int) -> set[str]:
    from workers.app import configure

    configure(rt.settings.redis_url, rt.settings.celery_queue)
    with rt.db.begin() as conn:
        result = enroll(conn, rt.book.latest("nudge"), [f"u{i:04d}" for i in range(n)], now=T0)
    assert result.enrolled == n
    with rt.db.connect() as conn:
        return set(conn.execute(select(TOUCHES.c.user_id)).scalars()) or set()


def test_a_real_worker_sends_each_touch_once(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle,
    worker_factory: Callable[[Runtime], subprocess.Popen[bytes]],
) -> None:
    rt = make_runtime(journeys={"nudge": SMS_ONLY}, users=60, shared_clock=True)
    setup(rt, 60)
    worker_factory(rt)
    drain(rt)
    with rt.db.connect() as conn:
        statuses = dict(conn.execute(select(TOUCHES.c.status, func.count())
                                     .group_by(TOUCHES.c.status)).all())
        treatment = conn.execute(select(func.count()).select_from(TOUCHES)).scalar_one()
    assert statuses == {"sent": treatment}
    sent = sms_by_recipient(sandbox)
    assert len(sent) == treatment and set(sent.values()) == {1}


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle,
    worker_factory: Callable[[Runtime], subprocess.Popen[bytes]],
) -> None:
    # Texts leave at 4 a second, so the kill lands after the batch was frozen and its first
    # texts went out, while the rest were never sent.
    rt = make_runtime(journeys={"nudge": SMS_ONLY}, users=24, claim_lease_s=3,
                      delivery_lease_s=2, sms_rate_per_s=4, shared_clock=True)
    setup(rt, 24)
    first = worker_factory(rt)
    from workers.tasks import CeleryDispatcher

    deadline = time.monotonic() + 60
    while not sms_by_recipient(sandbox) and time.monotonic() < deadline:
        tick(rt, CeleryDispatcher())  # as beat would, until a send has happened (bounded)
        time.sleep(0.05)
    assert sms_by_recipient(sandbox), "the worker never started sending"
    _kill_children(first.pid)
    first.kill()
    first.wait()
    worker_factory(rt)
    drain(rt)

    with rt.db.connect() as conn:
        rows = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.status, TOUCHES.c.reason)).all()
    sent = sms_by_recipient(sandbox)
    assert max(sent.values()) == 1  # no duplicate provider send
    # Lost: the person never got the text (the provider's record) and the touch was not
    # refused by the provider: here nobody may be refused, so every touch must be sent,
    # and a failed/unknown_outcome the provider never saw counts as lost.
    phone = {r.user_id: f"+86138{int(r.user_id[1:]):08d}" for r in rows}
    lost = [r for r in rows if phone[r.user_id] not in sent]
    assert lost == [], Counter((r.status, r.reason) for r in lost)
    assert all(r.status == "sent" for r in rows), Counter((r.status, r.reason) for r in rows)
    assert {phone[r.user_id] for r in rows} == set(sent)  # store and provider agree


def _kill_children(pid: int) -> None:
    """SIGKILL the prefork children of a worker (the processes running the task)."""
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return
    for child in out.split():
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_redelivered_retry_after_the_ledger_was_evicted_does_not_send_twice(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, engine_redis_url: str,
    worker_factory: Callable[[Runtime], subprocess.Popen[bytes]],
) -> None:
    import redis

    everyone = SMS_ONLY.replace("holdout: 10%\n", "")
    rt = make_runtime(journeys={"nudge": everyone}, users=1, retry_base_s=0.5,
                      shared_clock=True)
    setup(rt, 1)
    # The first attempt is refused (429 three times): the batch is retried. The retry's
    # call reaches Twilio, which sends the text, and its answer is held back.
    for kind, seconds in (("rate_limit", None), ("timeout", 30.0)):
        sandbox.state.add_fault(FaultSpec(provider="twilio", path_contains="Messages.json",
                                          kind=kind, count=3 if seconds is None else 1,
                                          seconds=seconds))
    worker = worker_factory(rt)
    from workers.tasks import CeleryDispatcher

    deadline = time.monotonic() + 180  # a worker starting on a loaded machine; a bound, not a wait
    while not sms_by_recipient(sandbox) and time.monotonic() < deadline:
        tick(rt, CeleryDispatcher())
        time.sleep(0.05)
    assert sms_by_recipient(sandbox), "the retry never reached the provider"
    # Redis evicts the send ledger (its keys expire, so a volatile-* policy may take them),
    # then the worker dies mid-call: the broker hands the retry to another process.
    client = redis.Redis.from_url(engine_redis_url)
    client.delete(*client.keys("recall:ledger:*"))
    client.close()
    _kill_children(worker.pid)
    drain(rt)

    assert sms_by_recipient(sandbox) == {"+8613800000000": 1}
    with rt.db.connect() as conn:
        assert conn.execute(select(TOUCHES.c.status)).scalars().all() == ["sent"]
