"""A synthetic campus population whose true churn probabilities are known.

Each student follows a hidden day-by-day process (days counted from ``start``):

* the student arrives on day ``a`` (two thirds are there from the start, the others
  sign up at a steady rate through the history) and, while *alive*, is active on day
  ``d >= a`` with probability ``p(d) = p0 · exp(-decay · (d - a))`` (heavy, regular and
  sparse users; about a third fade with tenure);
* after each day an alive student leaves for good with hazard ``q`` — five times higher
  after a day whose payment failed and was never retried successfully. ``q`` is higher
  for late-night eaters and for students who come at irregular hours, lower for those
  whose visits keep to meal times.

The population drifts: later cohorts hold more sparse users, and the mix of tenures
widens as the history goes on, so a model fitted at one moment and applied weeks later
faces other people than it was fitted on.

An active day is a visit: ``login``, one or more ``session``, and sometimes an
``order_placed`` (value in CNY), possibly preceded by ``payment_failed``. Because the
process is known, ``Population.truth_at`` computes exactly
``P(no activity in (cutoff, cutoff + horizon] | everything observed by cutoff)``:
the posterior that the student is still alive after the silent days since their last
visit, times the chance an alive student stays silent through the horizon. That is the
best any model could do, so a trained model's AUC should approach but not exceed it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orchestrator.errors import InputError

USER_COLUMNS = (
    "user_id", "openid", "unionid", "external_userid", "wecom_sender", "phone",
    "timezone", "sms_opt_out", "wechat_followed",
)
GROUPS = ("heavy", "regular", "sparse")
GROUP_SHARES = (0.15, 0.40, 0.45)  # of the students there from the start
LAST_COHORT_SHARES = (0.07, 0.30, 0.63)  # of the last to arrive: acquisition drifts sparse
PRESENT_AT_START = 0.65
HABIT_HOURS = (8.0, 12.0, 18.0, 22.0)  # breakfast, lunch, dinner, late night
HABIT_SHARES = (0.15, 0.35, 0.35, 0.15)
NIGHT_HAZARD_FACTOR = 2.0  # late-night eaters leave sooner
FAILURE_HAZARD_FACTOR = 5.0
RETRY_SUCCESS_P = 0.6  # a failed payment is retried successfully the same visit
DAY_S = 86_400
LOCAL_OFFSET_S = 8 * 3600  # the campus is on China time; ts strings carry +08:00
CAMPUSES = ("north", "south", "east", "west", "medical")
GRADES = ("freshman", "sophomore", "junior", "senior", "master", "phd")
FAILURE_REASONS = ("insufficient_funds", "card_declined", "timeout", "risk_control")
NAMES = ("login", "session", "order_placed", "payment_failed")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Params:
    """The hidden per-user process (arrays of length n_users)."""

    group: IntArray  # index into GROUPS
    arrival: IntArray  # first day the student can visit
    p0: FloatArray  # daily visit probability on the arrival day
    decay: FloatArray  # per-day (of tenure) decay of the visit probability
    q: FloatArray  # daily hazard of leaving for good, once arrived
    order_p: FloatArray  # P(order attempt | visit)
    fail_p: FloatArray  # P(payment fails | order attempt)
    basket: FloatArray  # typical order value, CNY
    habit_hour: FloatArray  # local hour the student's visits cluster around
    irregular: FloatArray  # share of visits at a random hour instead

    def visit_p(self, day: int) -> FloatArray:
        tenure = day - self.arrival
        return np.where(tenure >= 0, self.p0 * np.exp(-self.decay * np.maximum(tenure, 0)), 0.0)

    def hazard(self, day: int) -> FloatArray:
        """P(leaving for good at the end of ``day``), for a student alive then."""
        return np.where(day >= self.arrival, self.q, 0.0)


@dataclass(frozen=True)
class Population:
    start: datetime
    days: int
    seed: int
    users: list[dict[str, Any]]
    events: list[dict[str, Any]]
    params: Params
    active: NDArray[np.bool_]  # [user, day]: visited that day
    unrecovered_failure: NDArray[np.bool_]  # [user, day]: payment failed, no order after

    @property
    def user_ids(self) -> list[str]:
        return [u["user_id"] for u in self.users]

    def truth_at(self, cutoff: datetime, horizon_days: int) -> dict[str, float]:
        """Exact P(no activity in (cutoff, cutoff + horizon]) given what was observed by
        ``cutoff`` (which must fall on a day boundary counted from ``start``)."""
        day = _day_index(self.start, cutoff)
        if not 0 <= day <= self.days:
            raise InputError(f"cutoff {cutoff.isoformat()} is outside the generated history")
        probability = _no_activity_probability(
            self.params, self.active[:, :day], self.unrecovered_failure[:, :day], horizon_days
        )
        return dict(zip(self.user_ids, probability.tolist(), strict=True))


def generate(
    n_users: int,
    *,
    days_of_history: int,
    start: datetime,
    seed: int,
    horizon_days: int = 14,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """``(users, events, truth)``: users in ``users.csv`` shape, events in
    ``events.jsonl`` shape, and each user's true probability of no activity in the
    ``horizon_days`` after the history ends. ``simulate`` gives truths at other cutoffs."""
    population = simulate(n_users, days_of_history=days_of_history, start=start, seed=seed)
    end = population.start + timedelta(days=days_of_history)
    return population.users, population.events, population.truth_at(end, horizon_days)


def simulate(n_users: int, *, days_of_history: int, start: datetime, seed: int) -> Population:
    """Draw a population and play its hidden process through ``days_of_history`` days."""
    if start.tzinfo is None:
        raise InputError("start must be timezone-aware (e.g. 2026-03-01T00:00+08:00)")
    if n_users < 1 or days_of_history < 1:
        raise InputError("n_users and days_of_history must be at least 1")
    rng = np.random.default_rng(seed)
    params = _draw_params(rng, n_users, days_of_history)
    active, failed, visits = _play(rng, params, days_of_history)
    users = _users(rng, n_users, seed)
    events = _events(rng, params, visits, users, start, seed)
    return Population(
        start=start, days=days_of_history, seed=seed, users=users, events=events,
        params=params, active=active, unrecovered_failure=failed,
    )


# ---------------------------------------------------------------------- hidden process


def _draw_params(rng: np.random.Generator, n: int, days: int) -> Params:
    late = rng.random(n) >= PRESENT_AT_START
    arrival = np.where(late, rng.integers(1, max(days, 2), n), 0).astype(np.int64)
    group = _groups(rng, arrival / max(days, 1))
    p0 = np.select(
        [group == 0, group == 1],
        [rng.beta(6, 4, n), rng.beta(2, 8, n)],
        default=rng.beta(1.2, 25, n),  # sparse: a visit every few weeks
    )
    fading = rng.random(n) < 0.35
    decay = np.where(fading, rng.uniform(0.01, 0.06, n), 0.0)
    habit_hour = rng.choice(HABIT_HOURS, size=n, p=HABIT_SHARES)
    irregular = rng.beta(2, 6, n)  # mean 0.25
    rhythm = np.where(habit_hour == HABIT_HOURS[-1], NIGHT_HAZARD_FACTOR, 1.0)
    rhythm = rhythm * np.exp(3.0 * (irregular - 0.25))
    q = np.clip(
        np.exp(rng.normal(np.log(0.004), 0.5, n)) * np.where(group == 2, 1.5, 1.0) * rhythm,
        0.0005, 0.25,
    )
    order_p = np.where(group == 2, rng.beta(6, 3, n), rng.beta(3, 4, n))
    bad_card = rng.random(n) < 0.05
    fail_p = np.where(bad_card, rng.uniform(0.2, 0.5, n), rng.beta(1, 40, n))
    basket = np.exp(rng.normal(np.log(22.0), 0.3, n))
    return Params(group, arrival, p0, decay, q, order_p, fail_p, basket, habit_hour, irregular)


def _groups(rng: np.random.Generator, arrived_at: FloatArray) -> IntArray:
    """Heavy/regular/sparse, the mix sliding from ``GROUP_SHARES`` (there at the start)
    to ``LAST_COHORT_SHARES`` (arriving at the end of the history)."""
    first, last = np.array(GROUP_SHARES), np.array(LAST_COHORT_SHARES)
    shares = first + np.outer(arrived_at, last - first)
    draw = rng.random(len(arrived_at))
    group: IntArray = (draw[:, None] >= np.cumsum(shares, axis=1)[:, :-1]).sum(axis=1)
    return group.astype(np.int64)


@dataclass
class _Visits:
    """One row per visit (active user-day), with what happened in it."""

    user: IntArray
    day: IntArray
    payment_failed: NDArray[np.bool_]
    ordered: NDArray[np.bool_]  # an order went through (first try or after a failure)


def _play(
    rng: np.random.Generator, params: Params, days: int
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], _Visits]:
    n = len(params.p0)
    alive = np.ones(n, dtype=bool)
    active, attempted, failed, unrecovered = (np.zeros((n, days), dtype=bool) for _ in range(4))
    failure_hazard = np.minimum(1.0, params.q * FAILURE_HAZARD_FACTOR)
    for day in range(days):
        active[:, day] = alive & (rng.random(n) < params.visit_p(day))
        attempted[:, day] = active[:, day] & (rng.random(n) < params.order_p)
        failed[:, day] = attempted[:, day] & (rng.random(n) < params.fail_p)
        unrecovered[:, day] = failed[:, day] & (rng.random(n) >= RETRY_SUCCESS_P)
        hazard = np.where(unrecovered[:, day], failure_hazard, params.hazard(day))
        alive &= rng.random(n) >= hazard
    users, days_ = np.nonzero(active)
    visits = _Visits(
        user=users.astype(np.int64),
        day=days_.astype(np.int64),
        payment_failed=failed[users, days_],
        ordered=attempted[users, days_] & ~unrecovered[users, days_],
    )
    return active, unrecovered, visits


def _no_activity_probability(
    params: Params,
    active: NDArray[np.bool_],
    unrecovered: NDArray[np.bool_],
    horizon: int,
) -> FloatArray:
    n, cutoff_day = active.shape
    last = _last_true(active)  # -1: no visit yet (alive at day 0 for certain)
    rows = np.arange(n)
    last_failed = np.zeros(n, dtype=bool)
    seen = last >= 0
    last_failed[seen] = unrecovered[rows[seen], last[seen]]
    q_after_last = np.where(
        last < 0, 0.0,
        np.where(last_failed, np.minimum(1.0, params.q * FAILURE_HAZARD_FACTOR), params.q),
    )
    # Silent days since the last visit: alive-and-silent mass vs died-along-the-way mass.
    alive_mass, dead_mass = np.ones(n), np.zeros(n)
    for day in range(cutoff_day + 1):
        after = day > last
        hazard = np.where(day == last + 1, q_after_last, params.hazard(day - 1))
        dead_mass = np.where(after, dead_mass + alive_mass * hazard, dead_mass)
        alive_mass = np.where(after, alive_mass * (1 - hazard), alive_mass)
        if day < cutoff_day:
            alive_mass = np.where(after, alive_mass * (1 - params.visit_p(day)), alive_mass)
    p_alive = alive_mass / (alive_mass + dead_mass)
    return (1 - p_alive) + p_alive * _silent_if_alive(params, cutoff_day, horizon)


def _silent_if_alive(params: Params, first_day: int, horizon: int) -> FloatArray:
    """P(no visit on days first_day … first_day + horizon - 1 | alive on first_day)."""
    alive, left = np.ones(len(params.q)), np.zeros(len(params.q))
    for offset in range(horizon):
        alive = alive * (1 - params.visit_p(first_day + offset))
        if offset < horizon - 1:
            hazard = params.hazard(first_day + offset)
            left = left + alive * hazard
            alive = alive * (1 - hazard)
    return alive + left


def _last_true(matrix: NDArray[np.bool_]) -> IntArray:
    if matrix.shape[1] == 0:
        return np.full(matrix.shape[0], -1, dtype=np.int64)
    flipped = np.argmax(matrix[:, ::-1], axis=1)
    return np.where(matrix.any(axis=1), matrix.shape[1] - 1 - flipped, -1).astype(np.int64)


def _day_index(start: datetime, cutoff: datetime) -> int:
    seconds = (cutoff - start).total_seconds()
    if seconds % DAY_S:
        raise InputError(
            f"cutoff {cutoff.isoformat()} is not a whole number of days after the "
            f"population's start {start.isoformat()}"
        )
    return int(seconds // DAY_S)


# ------------------------------------------------------------------------------ people


# Third digits no carrier assigns after each prefix (libphonenumber's CN metadata): the
# generated numbers must be valid mobiles, since the import refuses invalid ones.
_UNASSIGNED = {"15": {"4": "5"}, "17": {"4": "5", "9": "8"}, "19": {"4": "5"}}


def _mobile(prefix: str, drawn: int, i: int) -> str:
    """A valid, unique Chinese mobile: the drawn digits with user ``i`` in the last six."""
    digits = f"{drawn:09d}"
    third = _UNASSIGNED.get(prefix, {}).get(digits[0], digits[0])
    return f"+86{prefix}{third}{digits[1:3]}{i % 1_000_000:06d}"


def _users(rng: np.random.Generator, n: int, seed: int) -> list[dict[str, Any]]:
    has_union = rng.random(n) < 0.7
    has_wecom = rng.random(n) < 0.55
    has_phone = rng.random(n) < 0.9
    followed = rng.random(n) < 0.8
    opted_out = rng.random(n) < 0.03
    zones = rng.choice(
        ["Asia/Shanghai", "Asia/Hong_Kong", "Europe/London", ""], size=n, p=[0.96, 0.02, 0.01, 0.01]
    )
    senders = rng.integers(1, 9, size=n)
    prefixes = rng.choice(["13", "15", "17", "18", "19"], size=n)
    numbers = rng.integers(0, 10**9, size=n)
    campus = rng.choice(CAMPUSES, size=n)
    grade = rng.choice(GRADES, size=n, p=[0.22, 0.2, 0.18, 0.15, 0.17, 0.08])
    channel = rng.choice(["poster", "friend", "canteen_qr", "wecom_group"], size=n)
    users = []
    for i in range(n):
        users.append({
            "user_id": f"u{i:06d}",
            "openid": "o" + _token(seed, i, "openid", 27),
            "unionid": "o" + _token(seed, i, "unionid", 27) if has_union[i] else None,
            "external_userid": "wm" + _token(seed, i, "wecom", 30) if has_wecom[i] else None,
            "wecom_sender": f"staff-{senders[i]:02d}" if has_wecom[i] else None,
            "phone": _mobile(str(prefixes[i]), int(numbers[i]), i) if has_phone[i] else None,
            "timezone": str(zones[i]) or None,
            "sms_opt_out": bool(opted_out[i]),
            "wechat_followed": bool(followed[i]),
            "campus": str(campus[i]),
            "grade": str(grade[i]),
            "signup_channel": str(channel[i]),
        })
    return users


def _token(seed: int, i: int, kind: str, length: int) -> str:
    digest = hashlib.sha256(f"{seed}:{i}:{kind}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:length]


# ------------------------------------------------------------------------------ events


def _events(
    rng: np.random.Generator,
    params: Params,
    visits: _Visits,
    users: list[dict[str, Any]],
    start: datetime,
    seed: int,
) -> list[dict[str, Any]]:
    n_visits = len(visits.user)
    hour = params.habit_hour[visits.user] + rng.normal(0.0, 1.2, n_visits)
    irregular = rng.random(n_visits) < params.irregular[visits.user]
    hour = np.where(irregular, rng.uniform(7.0, 24.0, n_visits), hour)
    visit_s = (np.clip(hour, 0.05, 23.4) * 3600).astype(np.int64)

    sessions = 1 + rng.poisson(np.array([1.5, 0.8, 0.3])[params.group[visits.user]])
    session_visit = np.repeat(np.arange(n_visits), sessions)
    session_rank = np.arange(len(session_visit)) - np.repeat(np.cumsum(sessions) - sessions,
                                                             sessions)
    failed = np.flatnonzero(visits.payment_failed)
    ordered = np.flatnonzero(visits.ordered)
    parts = [  # (visit index, name code, seconds after the visit began)
        (np.arange(n_visits), 0, np.zeros(n_visits, dtype=np.int64)),
        (session_visit, 1, 30 + 90 * session_rank + rng.integers(0, 60, len(session_visit))),
        (ordered, 2, 900 + rng.integers(0, 300, len(ordered))),
        (failed, 3, 600 + rng.integers(0, 120, len(failed))),
    ]
    visit = np.concatenate([p[0] for p in parts])
    code = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    offset = np.concatenate([p[2] for p in parts])
    epoch = int(start.timestamp()) + visits.day[visit] * DAY_S + visit_s[visit] + offset
    order = np.lexsort((visits.user[visit], epoch))
    visit, code, epoch = visit[order], code[order], epoch[order]
    user = visits.user[visit]
    value = np.round(params.basket[user] * np.exp(rng.normal(0.0, 0.35, len(visit))), 2)
    return _event_dicts(rng, seed, users, user, code, epoch, value)


def _event_dicts(
    rng: np.random.Generator,
    seed: int,
    users: list[dict[str, Any]],
    user: IntArray,
    code: IntArray,
    epoch: IntArray,
    value: FloatArray,
) -> list[dict[str, Any]]:
    local = (epoch + LOCAL_OFFSET_S).astype("datetime64[s]")
    stamps = np.char.add(np.datetime_as_string(local, unit="s"), "+08:00").tolist()
    reasons = rng.choice(FAILURE_REASONS, size=len(code)).tolist()
    items = (1 + rng.poisson(0.6, len(code))).tolist()
    codes = code.tolist()
    props = [
        {"items": n} if c == 2 else {"reason": r} if c == 3 else {}
        for c, n, r in zip(codes, items, reasons, strict=True)
    ]
    values = [v if c >= 2 else None for c, v in zip(codes, value.tolist(), strict=True)]
    ids = [users[u]["user_id"] for u in user.tolist()]
    names = [NAMES[c] for c in codes]
    return [
        {"event_id": f"syn{seed}-{i:07d}", "user_id": uid, "name": name, "ts": ts,
         "value": v, "props": pr}
        for i, (uid, name, ts, v, pr) in enumerate(zip(ids, names, stamps, values, props,
                                                       strict=True))
    ]


# ----------------------------------------------------------------------------- writers


def write_users_csv(path: Path, users: Iterable[dict[str, Any]]) -> int:
    """``users.csv`` as the fixed columns, then attribute columns (sorted);
    booleans as ``true``/``false``, unknown as empty. Returns the number of rows."""
    rows = list(users)
    extra = sorted({k for row in rows for k in row} - set(USER_COLUMNS))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*USER_COLUMNS, *extra])
        for row in rows:
            writer.writerow([_csv_cell(row.get(k)) for k in (*USER_COLUMNS, *extra)])
    return len(rows)


def write_events_jsonl(path: Path, events: Iterable[dict[str, Any]]) -> int:
    """``events.jsonl`` in the documented format, one JSON object a line. Returns the count."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")
            count += 1
    return count


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def events_for_store(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Event dicts with ``ts`` parsed to aware UTC datetimes, ready for a bulk insert into
    the ``events`` table (tests and benchmarks; real imports go through the ingest path)."""
    return [
        {**event, "ts": datetime.fromisoformat(event["ts"]).astimezone(UTC)} for event in events
    ]


def write_truth_csv(path: Path, truth: dict[str, float]) -> int:
    """``user_id,true_churn_probability`` (what ``generate`` returns as ``truth``)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "true_churn_probability"])
        writer.writerows((uid, f"{p:.6f}") for uid, p in truth.items())
    return len(truth)


def main(argv: list[str] | None = None) -> None:
    """``python -m orchestrator.audience.synth --users 20000 --days 60 --out DIR``."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a synthetic campus population.")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--start", default="2026-01-05T00:00:00+08:00")
    parser.add_argument("--horizon-days", type=int, default=14)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--history-until", default=None,
                        help="also write events-history.jsonl with the events at or before "
                        "this ISO time (what to import and train on before a simulation)")
    args = parser.parse_args(argv)
    users, events, truth = generate(
        args.users, days_of_history=args.days, start=datetime.fromisoformat(args.start),
        seed=args.seed, horizon_days=args.horizon_days,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_users_csv(args.out / "users.csv", users)
    write_events_jsonl(args.out / "events.jsonl", events)
    write_truth_csv(args.out / "truth.csv", truth)
    if args.history_until:
        until = datetime.fromisoformat(args.history_until)
        history = [e for e in events if datetime.fromisoformat(e["ts"]) <= until]
        write_events_jsonl(args.out / "events-history.jsonl", history)
    print(f"wrote {len(users):,} users, {len(events):,} events and their truth to {args.out}")


if __name__ == "__main__":
    main()
