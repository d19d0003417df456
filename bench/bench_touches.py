"""touches_per_s_sms, touches_per_s_batched and the scale-out figure, end to end, each
against its baseline measured in the same run on the same stack (``stack.py``).

Recall: ``recall worker --concurrency 2`` + ``recall beat`` + ``recall sandbox`` on
PostgreSQL and Redis. A cohort is enrolled in one transaction with its first step due at
once (batched journeys: due a gathering window ago, so the figure starts when the window
closes); the clock starts at that commit and stops at the last ``sent_at`` the workers
record. Everything between is Recall's: the tick claims the cursors and then the touches,
the workers run the gates (consent, quiet hours, caps in Redis, rendering and short
links), freeze the send batches, call the sandbox and record the results. A warm-up cohort
goes first (caps rebuilt, provider tokens and the article cover fetched, clients built).

Naive (``naive.py``): one Celery task per touch, the same ``--concurrency``, the same
sandbox; the clock starts when the driver starts enqueueing the tasks and stops at the
last ``sent_at``. Its warm-up goes first too.

Scale-out: ``recall worker --concurrency 1`` processes, one then two, on the same
PostgreSQL (claims ``FOR UPDATE SKIP LOCKED``); duplicates are counted from the sandbox's
own record of accepted sends.

The sandbox answers every provider call over HTTP on loopback and shares the two cores with
everything else. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from stack import BENCH, Stack, emit, load_average, log, redis_url, sent_duplicates, wait_for

from orchestrator.chaos.services import Service
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runtime import Runtime
from orchestrator.store.db import begin_write

SIZES = {  # full, quick
    "sms": (20_000, 3_000),
    "batched": (20_000, 4_000),
    "scale": (10_000, 2_000),
}
WARM = 200
GATHER_S = 60
SMS_TEXT = "好久不见！8元无门槛券已到账，3天内有效，点 https://s.example.com/s/abcdefgh 领取"


@dataclass
class Run:
    touches: int
    seconds: float
    other: int = 0  # not sent (suppressed, failed): should be 0

    @property
    def rate(self) -> float:
        return self.touches / self.seconds


class Users:
    """Hands out user ids that no earlier cohort used (caps stay out of the way)."""

    def __init__(self, ids: list[str]) -> None:
        self._ids, self._next = ids, 0

    def take(self, n: int) -> list[str]:
        chunk = self._ids[self._next : self._next + n]
        if len(chunk) < n:
            raise RuntimeError("bench_touches: ran out of users")
        self._next += n
        return chunk


# --- Recall ---------------------------------------------------------------------------------

def recall_cohort(stack: Stack, rt: Runtime, cohorts: dict[str, list[str]],
                  timeout_s: float) -> Run:
    """Enroll each journey's users at once; wait until every touch has its outcome."""
    now = rt.clock.now() - timedelta(seconds=GATHER_S + 1)
    ids: list[int] = []
    with begin_write(rt.db) as conn:
        for journey_id, users in cohorts.items():
            ids += enroll(conn, rt.book.latest(journey_id), users, now=now).ids
    began = time.time()
    total = len(ids)

    def done() -> bool:
        sent, other, _ = _progress(stack, ids)
        return sent + other >= total

    wait_for(done, timeout_s, f"{total:,} touches")
    sent, other, last = _progress(stack, ids)
    return Run(sent, max(1e-6, last - began), other)


def _progress(stack: Stack, enrollment_ids: list[int]) -> tuple[int, int, float]:
    [row] = stack.rows(
        "SELECT count(*) FILTER (WHERE status IN ('sent', 'delivered')), "
        "count(*) FILTER (WHERE status IN ('failed', 'suppressed', 'cancelled')), "
        "extract(epoch FROM max(sent_at)) FROM touches WHERE enrollment_id = ANY(:ids)",
        ids=enrollment_ids)
    return int(row[0]), int(row[1]), float(row[2] or 0.0)


def measure_recall(stack: Stack, rt: Runtime, users: Users, journeys: Sequence[str], n: int
                   ) -> Run:
    per = n // len(journeys)
    recall_cohort(stack, rt, {j: users.take(WARM) for j in journeys}, timeout_s=600)
    with Profiler(stack, f"{'+'.join(journeys)}-{n}") as profiler:
        run = recall_cohort(stack, rt, {j: users.take(per) for j in journeys},
                            timeout_s=120 + n / 20)
        profiler.touches = run.touches + run.other
    if run.other:
        log(f"  {run.other:,} touches were not sent (see the touches table)")
    return run


class Profiler:
    """With ``--profile DIR``: py-spy samples every worker child and the sandbox while a
    measured cohort runs (collapsed stacks, one file per process; ``--gil``: only the thread
    holding the GIL, i.e. Python's own CPU, not threads waiting on a socket), and the CPU
    each of those processes and the database's backends spent, user and system, is logged
    per touch."""

    out: Path | None = None
    gil = False

    def __init__(self, stack: Stack, label: str) -> None:
        self.stack, self.label = stack, label
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cpu: dict[str, tuple[float, float]] = {}
        self.touches = 0

    def __enter__(self) -> Profiler:
        if self.out is None:
            return self
        spy = Path(sys.executable).with_name("py-spy")
        for name, pid in self._targets():
            target = self.out / f"{self.label}-{name}-{pid}.txt"
            self.procs.append(subprocess.Popen(
                [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
                 "--nonblocking", *(["--gil"] if self.gil else []), "-o", str(target)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.cpu = self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.out is None:
            return
        after = self._cpu()
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(timeout=60)
        per = max(1, self.touches)
        spent = {k: (after[k][0] - v[0], after[k][1] - v[1]) for k, v in self.cpu.items()
                 if k in after}
        for name, (user, system) in sorted(spent.items()):
            log(f"  cpu {name}: user {1000 * user / per:.2f} ms + sys {1000 * system / per:.2f}"
                f" ms per touch ({user + system:.1f} s)")
        total = sum(u + s for u, s in spent.values())
        log(f"  cpu measured processes: {1000 * total / per:.2f} ms per touch")

    def _targets(self) -> list[tuple[str, int]]:
        targets = []
        for service in self.stack.services:
            if not service.alive() or service.name == "beat":
                continue
            pids = [p for p in service.group() if p != service.pid] or [service.pid]
            targets += [(service.name, pid) for pid in pids]
        return targets

    def _cpu(self) -> dict[str, tuple[float, float]]:
        """(user, system) CPU seconds of each profiled process and of the database's
        backends taken together."""
        ticks = os.sysconf("SC_CLK_TCK")
        found: dict[str, tuple[float, float]] = {}
        backends = [int(r[0]) for r in self.stack.rows(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")]
        for name, pid in [*self._targets(), *(("postgres", p) for p in backends)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            key = name if name == "postgres" else f"{name}-{pid}"
            user, system = found.get(key, (0.0, 0.0))
            found[key] = (user + int(fields[11]) / ticks, system + int(fields[12]) / ticks)
        return found


def start_recall(stack: Stack, workers: int, concurrency: int) -> list[Service]:
    started = stack.start_workers(workers, concurrency)
    if not any(s.name == "beat" and s.alive() for s in stack.services):
        started.append(stack.start_beat())
    return started


def stop(services: list[Service]) -> None:
    for service in services:
        service.kill()


# --- naive ----------------------------------------------------------------------------------

class Naive:
    """The naive app's worker and its producer."""

    def __init__(self, stack: Stack) -> None:
        from naive import TABLE, app

        self.stack, self.app = stack, app
        self.queue = f"naive-{stack.db.name}"
        app.conf.update(broker_url=redis_url(), task_default_queue=self.queue)
        assert stack.engine is not None
        with stack.engine.begin() as conn:
            conn.execute(sa.text(TABLE))
        self.next_id = 1

    def start(self, concurrency: int) -> Service:
        env = {**self.stack.env(), "NAIVE_DATABASE_URL": self.stack.db.url,
               "NAIVE_BROKER_URL": redis_url(), "NAIVE_QUEUE": self.queue,
               "NAIVE_SANDBOX": f"http://127.0.0.1:{self.stack.sandbox_port}"}
        argv = [_python(), "-m", "celery", "-A", "naive", "worker",
                f"--concurrency={concurrency}", "--loglevel=INFO", "-Q", self.queue]
        worker = self.stack.start("naive", argv, env=env, cwd=BENCH)
        self.stack.wait_ready([worker], "ready.")
        return worker

    def cohort(self, tasks: list[tuple[str, tuple[Any, ...]]], timeout_s: float) -> Run:
        """Insert the touches, then enqueue one task per touch; until all are sent."""
        first = self.next_id
        ids = list(range(first, first + len(tasks)))
        self.next_id += len(tasks)
        self.stack.copy("naive_touches", ["id", "channel", "address", "body", "sender"],
                        ((i, name, *args[:2], args[2] if len(args) > 2 else None)
                         for i, (name, args) in zip(ids, tasks, strict=True)))
        began = time.time()
        for touch_id, (name, args) in zip(ids, tasks, strict=True):
            self.app.send_task(f"naive.{name}", args=(touch_id, *args))

        def progress() -> tuple[int, float]:
            [row] = self.stack.rows(
                "SELECT count(*), extract(epoch FROM max(sent_at)) FROM naive_touches "
                "WHERE id BETWEEN :a AND :b AND status = 'sent'", a=ids[0], b=ids[-1])
            return int(row[0]), float(row[1] or 0.0)

        wait_for(lambda: progress()[0] >= len(ids), timeout_s, f"naive: {len(ids):,} touches")
        sent, last = progress()
        return Run(sent, max(1e-6, last - began))


def naive_sms(n: int, start: int) -> list[tuple[str, tuple[Any, ...]]]:
    return [("sms", (f"+86139{start + i:08d}", SMS_TEXT)) for i in range(n)]


def naive_batched(n: int, start: int) -> list[tuple[str, tuple[Any, ...]]]:
    half = n // 2
    return ([("article", (f"oBENCH{start + i:022d}", "好久不见，这周的校园美食都在这里"))
             for i in range(half)]
            + [("invite", (f"wmBENCH{start + i:07d}", "加入「校园优惠群」", "staff-a"))
               for i in range(half, n)])


def _python() -> str:
    return sys.executable


# --- the run --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller cohorts")
    parser.add_argument("--profile", type=Path, help="py-spy every worker child and the "
                        "sandbox during the measured cohorts; collapsed stacks go here")
    parser.add_argument("--gil", action="store_true", help="with --profile: sample only the "
                        "thread holding the GIL (Python's own CPU)")
    parser.add_argument("--only", choices=["sms", "batched"], help="one Recall figure, "
                        "no baseline (for profiling)")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        Profiler.out = args.profile.resolve()
        Profiler.gil = args.gil
    size = {k: v[1] if args.quick else v[0] for k, v in SIZES.items()}
    if args.only:
        only(args.only, size[args.only])
        return
    lines = []
    with Stack("touches") as stack:
        total = size["sms"] + size["batched"] + 3 * size["scale"] + 10 * WARM
        users = Users(stack.copy_users(total))
        sandbox = stack.start_sandbox()
        rt = Runtime.from_settings(stack.settings())
        rt.book.sync(rt.db, now=rt.clock.now())
        log(f"stack up ({stack.db.name}, sandbox :{stack.sandbox_port}); load {load_average()}")

        recall = start_recall(stack, 1, 2)
        sms = measure_recall(stack, rt, users, ["bench-sms"], size["sms"])
        log(f"recall sms: {sms.touches:,} in {sms.seconds:.1f}s = {sms.rate:.0f}/s; "
            f"load {load_average()}")
        batched = measure_recall(stack, rt, users, ["bench-article", "bench-invite"],
                                 size["batched"])
        log(f"recall batched: {batched.touches:,} in {batched.seconds:.1f}s = "
            f"{batched.rate:.0f}/s; load {load_average()}")
        stop([s for s in recall if s.name != "beat"])

        scale = {}
        for workers in (1, 2):
            started = stack.start_workers(workers, 1)
            scale[workers] = measure_recall(stack, rt, users, ["bench-sms"], size["scale"])
            log(f"recall sms, {workers} worker process(es) --concurrency 1: "
                f"{scale[workers].rate:.0f}/s; load {load_average()}")
            stop(started)
        sends, duplicates = sent_duplicates(sandbox, "/Messages.json")
        stop(recall)
        rt.close()

        naive = Naive(stack)
        worker = naive.start(2)
        naive.cohort(naive_sms(WARM, 9_000_000), timeout_s=300)
        naive_sms_run = naive.cohort(naive_sms(size["sms"], 0), timeout_s=120 + size["sms"] / 10)
        log(f"naive sms: {naive_sms_run.rate:.0f}/s; load {load_average()}")
        naive.cohort(naive_batched(WARM, 9_000_000), timeout_s=300)
        naive_batched_run = naive.cohort(naive_batched(size["batched"], 0),
                                         timeout_s=120 + size["batched"] / 10)
        log(f"naive batched: {naive_batched_run.rate:.0f}/s; load {load_average()}")
        stop([worker])

    log(f"sandbox record: {sends:,} SMS accepted, {duplicates} to a number twice")
    lines.append(_figure("touches_per_s_sms", sms, naive_sms_run))
    lines.append(_figure("touches_per_s_batched", batched, naive_batched_run))
    lines.append(_figure("scaleout_sms_per_s", scale[2], scale[1]))
    emit("scaleout_duplicates", duplicates, "sends", None, None)
    del lines


def only(kind: str, n: int) -> None:
    """One Recall figure, without its baseline: for profiling and quick checks."""
    with Stack(kind) as stack:
        users = Users(stack.copy_users(n + 2 * WARM))
        stack.start_sandbox()
        rt = Runtime.from_settings(stack.settings())
        rt.book.sync(rt.db, now=rt.clock.now())
        services = start_recall(stack, 1, 2)
        journeys = ["bench-sms"] if kind == "sms" else ["bench-article", "bench-invite"]
        run = measure_recall(stack, rt, users, journeys, n)
        log(f"recall {kind}: {run.touches:,} in {run.seconds:.1f}s = {run.rate:.0f}/s; "
            f"load {load_average()}")
        stop(services)
        rt.close()


def _figure(name: str, value: Run, baseline: Run) -> str:
    return emit(name, round(value.rate, 1), "touches/s", round(baseline.rate, 1),
                round(value.rate / baseline.rate, 2))


if __name__ == "__main__":
    started = datetime.now(UTC)
    main()
    log(f"bench_touches took {(datetime.now(UTC) - started).total_seconds():.0f}s")
