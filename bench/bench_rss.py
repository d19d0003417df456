"""worker_rss_mb: the peak resident memory of each ``recall worker`` pool child with
1,000,000 enrollments waiting, against the same with 10,000 waiting (the baseline).

Each run is its own stack (``stack.py``): the waiting enrollments are loaded with ``COPY``
(in a week-long wait, as after a journey's first ``wait: 7d``), then ``recall worker
--concurrency 2`` + ``recall beat`` + ``recall sandbox`` start and do the same work in
both runs — a cohort of WeChat articles, WeCom invites and SMS (``WORK``) end to end — and
keep ticking for ``IDLE_S`` more. The figure is the largest ``VmHWM`` (peak RSS) among the
pool children, in MiB; ``ratio`` = value / baseline.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from bench_touches import Users, recall_cohort, start_recall, stop
from stack import Stack, child_rss_mb, emit, load_average, log

from orchestrator.engine.runtime import Runtime

WAITING = (1_000_000, 10_000)
WORK = {"bench-article": 2_000, "bench-invite": 2_000, "bench-sms": 1_000}
IDLE_S = 10.0


def peak_rss(waiting: int) -> float:
    with Stack(f"rss{waiting}") as stack:
        users = Users(stack.copy_users(sum(WORK.values())))
        journey_version = _version(stack)
        now = datetime.now(UTC)
        stack.copy("enrollments", ["journey_id", "journey_version", "user_id", "arm", "state",
                                   "entered_at", "cursor", "due_at", "data"],
                   (("bench-enroll", journey_version, f"w{n:07d}", "treatment", "active",
                     now, 1, now + timedelta(days=7), "{}") for n in range(waiting)))
        stack.start_sandbox()
        rt = Runtime.from_settings(stack.settings())
        rt.book.sync(rt.db, now=rt.clock.now())
        services = start_recall(stack, 1, 2)
        workers = [s for s in services if s.name != "beat"]
        run = recall_cohort(stack, rt, {j: users.take(n) for j, n in WORK.items()},
                            timeout_s=600)
        time.sleep(IDLE_S)  # ticks go on over the waiting enrollments
        peaks = [mb for w in workers for mb in child_rss_mb(w)]
        log(f"rss: {waiting:,} waiting, {run.touches:,} touches sent; children's peak RSS "
            f"{', '.join(f'{p:.0f}' for p in peaks)} MiB; load {load_average()}")
        stop(services)
        rt.close()
    if not peaks:
        raise SystemExit("bench_rss: no worker child found")
    return max(peaks)


def _version(stack: Stack) -> str:
    rt = Runtime.from_settings(stack.settings())
    try:
        return rt.book.latest("bench-enroll").version
    finally:
        rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="(the same run)")
    parser.parse_args()
    many, few = (peak_rss(n) for n in WAITING)
    emit("worker_rss_mb", round(many, 1), "MiB", round(few, 1), round(many / few, 3))


if __name__ == "__main__":
    main()
