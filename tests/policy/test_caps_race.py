"""Real processes racing on real Redis never exceed a cap, and a released slot is reusable."""

from __future__ import annotations

import multiprocessing

from orchestrator.policy.caps import CapStore

from .capcheck import violations
from .race_worker import CHANNELS, JOURNEYS, POLICY, TZ, USERS, race

PROCESSES = 8


def test_eight_processes_never_exceed_a_cap(caps: CapStore, caps_redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    workers = [
        ctx.Process(target=race, args=(caps_redis_url, n, barrier, results))
        for n in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0

    granted = {g for _, got, _ in outcomes for g in got}
    released = {r for _, _, gone in outcomes for r in gone}
    held = [h for user in USERS for h in caps.held(user)]
    # Redis holds exactly what was granted and not released: nothing lost, nothing extra.
    assert {(h.person, h.channel, h.key, h.at) for h in held} == granted - released
    assert violations(held, POLICY, TZ) == []
    attempts = PROCESSES * JOURNEYS * len(USERS) * len(CHANNELS)
    assert len(granted) < attempts / 5  # the caps were contended, not idle

    # Releasing the person's latest reservation frees a slot in every window it was in.
    reused = 0
    for user in USERS:
        latest = caps.held(user)[-1]
        probe = dict(
            person=user, channel=latest.channel, key="probe", now=latest.at, rules=POLICY, tz=TZ
        )
        if caps.reserve(**probe).ok:  # type: ignore[arg-type]
            continue
        caps.release(person=user, channel=latest.channel, key=latest.key)
        assert caps.reserve(**probe).ok  # type: ignore[arg-type]
        reused += 1
    assert reused >= len(USERS) // 2
