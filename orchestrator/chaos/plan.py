"""The shape of a chaos run: its size, and the faults' schedule drawn from a seed. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Literal

ActionKind = Literal["wave", "kill", "aimed_kill", "redis_restart", "beat2_start", "beat2_stop"]


@dataclass(frozen=True)
class Options:
    """A run's size and weather. ``quick()`` and ``full()`` are the two Makefile runs."""

    users: int = 10_000
    waves: int = 20  # enrollments arrive in this many waves...
    wave_every_s: float = 6.0  # ...this far apart
    workers: int = 3
    concurrency: int = 2  # worker child processes per `recall worker` (a tick finds a free
    # one while another holds a send the sandbox keeps waiting)
    kills: int = 8  # SIGKILLs at random moments
    aimed_kills: int = 6  # SIGKILLs of the process whose provider call is being held
    fault_rate: float = 0.10  # share of provider calls the sandbox disturbs
    lease_s: int = 20  # RECALL_CLAIM_LEASE_S: above the 15 s provider read timeout
    retry_after_s: int = 30  # a 429's Retry-After: longer than the lease
    tail_s: float = 70.0  # chaos after the last wave: its journey's waits and sends
    storm_max_s: float = 420.0  # then faults go on until every last touch is on its way,
    # at most this long
    settle_s: float = 300.0  # bound on the calm after the chaos
    seed: int = 1

    @classmethod
    def quick(cls, **changes: int | None) -> Options:
        base = cls(users=2_000, waves=8, wave_every_s=5.0, kills=4, aimed_kills=3,
                   tail_s=60.0, storm_max_s=120.0, settle_s=120.0)
        return _replace(base, changes)

    @classmethod
    def full(cls, **changes: int | None) -> Options:
        return _replace(cls(), changes)

    @property
    def chaos_s(self) -> float:
        """How long the faults last: every wave in, then its whole journey."""
        return (self.waves - 1) * self.wave_every_s + self.tail_s


def _replace(options: Options, changes: dict[str, int | None]) -> Options:
    """``options`` with the given (not None) integer fields changed."""
    chosen: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
    return replace(options, **chosen)


@dataclass(frozen=True, order=True)
class Action:
    at: float  # seconds after the chaos began
    kind: ActionKind
    arg: int = 0  # wave number; for kills, 0 = the whole worker, 1 = one child process


def schedule(options: Options) -> list[Action]:
    """Every wave and fault, in time order. The Redis restart falls mid-run, a second beat
    runs through the middle, kills land at random moments (a fixed seed gives the same
    schedule; what each moment hits depends on the machine)."""
    rng = random.Random(options.seed)
    span = options.chaos_s
    actions = [Action(n * options.wave_every_s, "wave", n) for n in range(options.waves)]
    actions += [Action(rng.uniform(3.0, span - 5.0), "kill", rng.randrange(2))
                for _ in range(options.kills)]
    step = (span - 10.0) / max(1, options.aimed_kills)
    actions += [Action(5.0 + step * (n + rng.random() * 0.8), "aimed_kill", n % 2)
                for n in range(options.aimed_kills)]
    actions += [
        Action(span * 0.45, "redis_restart"),
        Action(span * 0.20, "beat2_start"),
        Action(span * 0.65, "beat2_stop"),
    ]
    return sorted(actions)
