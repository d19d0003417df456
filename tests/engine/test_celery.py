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
        claimed = tick(rt, CeleryDispatcher())
        if claimed.empty and not in_flight(rt):
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
    rt = make_runtime(journeys={"nudge": SMS_ONLY}, users=40, claim_lease_s=3,
                      shared_clock=True)
    setup(rt, 40)
    # Every SMS call is slow, so the kill lands while a batch is being sent.
    sandbox.state.add_fault(FaultSpec(provider="twilio", path_contains="Messages.json",
                                      kind="latency", count=None, seconds=0.2))
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
    sandbox.state.clear_faults()
    worker_factory(rt)
    drain(rt)

    with rt.db.connect() as conn:
        rows = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.status, TOUCHES.c.reason)).all()
    assert all(r.status in ("sent", "failed") for r in rows), Counter(r.status for r in rows)
    sent = sms_by_recipient(sandbox)
    assert max(sent.values()) == 1  # no duplicate provider send
    phones = {f"+86138{int(r.user_id[1:]):08d}" for r in rows if r.status == "sent"}
    assert phones == set(sent)  # what we think we sent is exactly what the provider got
    lost = [r for r in rows if r.status == "failed" and r.reason != "unknown_outcome"]
    assert lost == []


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
