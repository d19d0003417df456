"""The demo's phases, each on the real code paths a deployment uses:

1. **population** — a synthetic campus (``audience.synth``): users with history up to the
   simulation's start, and the events after it (visits, orders, payment failures) to replay;
2. **import** — users and history through the importers (phones checked, events ingested);
3. **churn model** — trained on a time split and evaluated on a later cutoff;
4. **tiers** — every user's features, tier and churn score at the start;
5. **simulation** — ``simulate`` over the journeys folder: the real stack (store, Redis,
   Celery worker, API, providers) on a virtual clock, the later events replayed through the
   ingest path as the clock reaches them, so payment failures trigger the rescue journey;
6. **figures** — every journey's report, caps and deferrals, the policy audit.

The demo keeps everything in a state directory of its own (``STATE_DIR/demo``), emptied at
each run: its SQLite database and embedded Redis never touch a configured deployment.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Engine, and_, func, select

from orchestrator.clock import as_utc
from orchestrator.config import Settings
from orchestrator.errors import InputError

SYNTH_START = datetime.fromisoformat("2026-01-05T00:00:00+08:00")
# History before the simulation starts: 2026-03-01 (a Sunday), so that the monthly journey
# (the 1st, 10:00) enrolls on the first day and its 3-day follow-up and a full 14-day goal
# window fall inside a 14-day run; 55 days also give the churn model later training windows.
HISTORY_DAYS = 55
TRAIN_LAG_DAYS = 28  # churn cutoff: two horizons before the start (label, then evaluation)
HORIZON = timedelta(days=14)
MODEL = "gbm"
INGEST_CHUNK = 5_000


@dataclass(frozen=True)
class DemoOptions:
    users: int = 2_000
    days: int = 14
    seed: int = 7

    def check(self) -> None:
        if not 50 <= self.users <= 200_000:
            raise InputError(f"--users {self.users}: give 50 to 200,000 users")
        if not 1 <= self.days <= 60:
            raise InputError(f"--days {self.days}: give 1 to 60 virtual days")


class Phases(Protocol):
    """Where the demo says what it is doing (a progress display, or plain lines)."""

    def start(self, name: str) -> None: ...
    def update(self, fraction: float, detail: str) -> None: ...
    def done(self, summary: str) -> None: ...


@dataclass
class DemoResult:
    options: DemoOptions
    root: Path
    settings: Settings
    start: datetime
    end: datetime
    providers: dict[str, str] = field(default_factory=dict)  # provider → "sandbox" | base URL
    users: int = 0
    history_events: int = 0
    future_events: Counter[str] = field(default_factory=Counter)  # by event name
    churn: dict[str, Any] = field(default_factory=dict)
    tiers: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    simulated: Any = None  # engine.simulate.SimulateResult
    reports: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # journey → rows
    pacing: dict[str, Any] = field(default_factory=dict)
    audit: Any = None  # policy.audit.AuditReport
    seconds: dict[str, float] = field(default_factory=dict)


def demo_settings(settings: Settings, root: Path) -> Settings:
    """The demo's own deployment: SQLite and the embedded Redis in ``root/state``; the
    journeys, templates and any configured provider base URL as the settings say."""
    return settings.model_copy(update={
        "state_dir": (root / "state").resolve(), "database_url": None, "redis_url": None,
    })


def run_demo(settings: Settings, options: DemoOptions, phases: Phases,
             root: Path | None = None) -> DemoResult:
    options.check()
    root = root or settings.state_dir / "demo"
    if not (settings.journeys_dir / "policy.yaml").exists():
        raise InputError(f"{settings.journeys_dir}: no policy.yaml here; run the demo from "
                         "the project folder or set RECALL_JOURNEYS_DIR")
    shutil.rmtree(root, ignore_errors=True)
    (root / "state").mkdir(parents=True)
    start = SYNTH_START + timedelta(days=HISTORY_DAYS)
    result = DemoResult(options=options, root=root, settings=demo_settings(settings, root),
                        start=start, end=start + timedelta(days=options.days))
    result.providers = providers(result.settings)
    _timed(result, phases, "population", _population)
    engine = _store(result.settings)
    _timed(result, phases, "import", lambda r, p: _import(r, p, engine))
    _timed(result, phases, "churn model", lambda r, p: _churn(r, engine))
    _timed(result, phases, "tiers", lambda r, p: _tiers(r, engine))
    _timed(result, phases, "simulation", _simulate)
    _timed(result, phases, "figures", lambda r, p: _figures(r, engine))
    return result


def providers(settings: Settings) -> dict[str, str]:
    from orchestrator.engine.stack import PROVIDER_BASES

    return {name.removesuffix("_api_base"): getattr(settings, name) or "sandbox"
            for name in PROVIDER_BASES}


def _timed(result: DemoResult, phases: Phases, name: str,
           work: Callable[[DemoResult, Phases], str]) -> None:
    phases.start(name)
    began = time.monotonic()
    summary = work(result, phases)
    result.seconds[name] = time.monotonic() - began
    phases.done(summary)


def _store(settings: Settings) -> Engine:
    from orchestrator.store.db import get_engine
    from orchestrator.store.migrate import upgrade

    engine = get_engine(settings)
    upgrade(engine)
    return engine


# --- 1. population ---------------------------------------------------------------------

def _population(result: DemoResult, phases: Phases) -> str:
    from orchestrator.audience import synth

    o = result.options
    population = synth.simulate(o.users, days_of_history=HISTORY_DAYS + o.days,
                                start=SYNTH_START, seed=o.seed)
    history: list[dict[str, Any]] = []
    future: list[dict[str, Any]] = []
    for event in population.events:
        later = datetime.fromisoformat(event["ts"]) > result.start
        (future if later else history).append(event)
    synth.write_users_csv(result.root / "users.csv", population.users)
    synth.write_events_jsonl(result.root / "events-history.jsonl", history)
    synth.write_events_jsonl(result.root / "events.jsonl", future)
    result.users, result.history_events = len(population.users), len(history)
    result.future_events = Counter(str(e["name"]) for e in future)
    return (f"{result.users:,} users, {len(history):,} events of history, "
            f"{len(future):,} to replay ({result.future_events['payment_failed']:,} payment "
            "failures)")


# --- 2. import -------------------------------------------------------------------------

def _import(result: DemoResult, phases: Phases, engine: Engine) -> str:
    from orchestrator.audience.phones import default_region, policy_timezone
    from orchestrator.engine.importer import import_events, import_users

    s = result.settings
    users = import_users(engine, result.root / "users.csv", now=result.start,
                         region=default_region(s, policy_timezone(s)))
    if users.errors:
        line, reason = users.errors[0]
        raise InputError(f"{result.root / 'users.csv'}:{line}: {reason}")
    total = max(result.history_events, 1)
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        phases.update(done[0] / total, f"{done[0]:,} events")

    events = import_events(engine, result.root / "events-history.jsonl", now=result.start,
                           progress=step)
    return f"{users.imported:,} users and {events.imported:,} events imported"


# --- 3. churn model --------------------------------------------------------------------

def _churn(result: DemoResult, engine: Engine) -> str:
    from orchestrator.audience.churn import default_models_dir, train
    from orchestrator.audience.config import load_audience_config

    cutoff = as_utc(result.start - timedelta(days=TRAIN_LAG_DAYS))
    trained = train(engine, cutoff=cutoff, horizon=HORIZON, model=MODEL,
                    config=load_audience_config(settings=result.settings),
                    data_end=as_utc(result.start),
                    models_dir=default_models_dir(result.settings))
    m = trained.metrics
    result.churn = {"model": trained.kind, "cutoff": trained.cutoff,
                    "eval_cutoff": trained.eval_cutoff, "train_rows": trained.train_rows,
                    "windows": len(trained.origins), "calibration": trained.calibration,
                    "calibration_rows": trained.calibration_rows,
                    "auc": m.auc, "brier": m.brier, "ece": m.ece,
                    "ece_floor": ece_by_chance(m.calibration),
                    "recency_auc": m.recency_rule_auc, "lift": m.top_decile_lift, "n": m.n,
                    "base_rate": m.base_rate}
    return (f"{trained.kind} on {trained.train_rows:,} rows: held-out AUC {m.auc:.3f} "
            f"(recency rule {m.recency_rule_auc:.3f}), ECE {m.ece:.3f}, top-decile lift "
            f"{m.top_decile_lift:.2f}")


def ece_by_chance(rows: list[Any]) -> float:
    """The ECE a perfectly calibrated model would show on this sample by chance alone: in
    each group of the calibration table, the expected ``|observed - predicted|`` when the
    observed churners are Binomial(n, predicted). On a few thousand users this is a few
    hundredths, the floor under the measured ECE."""
    total = sum(row.n for row in rows)
    expected = 0.0
    for row in rows:
        p = min(max(row.mean_predicted, 0.0), 1.0)
        expected += row.n * _mean_abs_error(row.n, p)
    return expected / total if total else float("nan")


def _mean_abs_error(n: int, p: float) -> float:
    """E|K/n - p| for K ~ Binomial(n, p)."""
    if p in (0.0, 1.0):
        return 0.0
    k = np.arange(n + 1)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                           for i in range(n + 1)])
    pmf = np.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p))
    return float((pmf * np.abs(k / n - p)).sum())


# --- 4. tiers --------------------------------------------------------------------------

def _tiers(result: DemoResult, engine: Engine) -> str:
    from orchestrator.audience.refresh import refresh
    from orchestrator.audience.segments import tier_summary

    refresh(engine, at=result.start, settings=result.settings)
    result.tiers = tier_summary(engine, at=result.start)
    return ", ".join(f"{tier} {n:,}" for tier, (n, _) in result.tiers.items())


# --- 5. simulation ---------------------------------------------------------------------

def _simulate(result: DemoResult, phases: Phases) -> str:
    from orchestrator.engine.responses import Responses
    from orchestrator.engine.simulate import simulate

    days = result.options.days

    def progress(fraction: float) -> None:
        phases.update(fraction, f"day {min(days, int(fraction * days) + 1)} of {days}")

    result.simulated = simulate(result.settings, days=days, start=result.start,
                                events=result.root / "events.jsonl", responses=Responses(),
                                seed=result.options.seed, progress=progress)
    sim = result.simulated
    sent = sum(n for status, n in sim.touches.items() if status in ("sent", "delivered"))
    return (f"{days} virtual days: {sim.events_replayed:,} events replayed, "
            f"{sim.enrollments:,} enrollments, {sum(sim.touches.values()):,} touches "
            f"({sent:,} sent)")


# --- 6. figures ------------------------------------------------------------------------

def _figures(result: DemoResult, engine: Engine) -> str:
    from orchestrator.engine.book import JourneyBook
    from orchestrator.policy.audit import audit_store_report
    from orchestrator.reports.funnel import journey_report

    s = result.settings
    book = JourneyBook(s.journeys_dir, s.templates_dir, s.state_dir, s.timezone)
    result.reports = [journey_report(engine, j, book.policy_for(j))
                      for j in sorted(book.journeys(), key=lambda j: -j.priority)]
    result.counts = row_counts(engine)
    result.pacing = pacing(engine)
    result.audit = audit_store_report(
        engine, policy=book.policy,
        journey_policies={j.id: book.policy_for(j) for j in book.journeys()})
    return (f"{len(result.reports)} journey reports; audit of {result.audit.sends:,} sends: "
            f"{len(result.audit.violations):,} violations")


def pacing(engine: Engine) -> dict[str, Any]:
    """How the policy held sends back (test sends aside): touches skipped by a cap (by
    cap), and touches sent later than first due (quiet hours, or a cap slot with
    ``when_capped: defer``), by channel."""
    from orchestrator.store.tables import TOUCHES

    t = TOUCHES.c
    live = t.test.is_(False)
    with engine.connect() as conn:
        capped = conn.execute(
            select(t.reason, func.count()).where(
                live, t.status == "suppressed",
                t.reason.like("capped:%") | (t.reason == "defer_expired"))
            .group_by(t.reason)).all()
        deferred = conn.execute(
            select(t.channel, func.count()).where(
                live, and_(t.first_due_at.is_not(None), t.due_at > t.first_due_at),
                t.status.in_(("sent", "delivered")))
            .group_by(t.channel)).all()
    return {"capped": {str(r): int(n) for r, n in capped},
            "deferred": {str(c): int(n) for c, n in deferred}}


def row_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Enrollments and touches (test sends aside) per journey: the rows of the exports."""
    from orchestrator.store.tables import ENROLLMENTS, TOUCHES

    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for journey_id, n in conn.execute(select(ENROLLMENTS.c.journey_id, func.count())
                                          .group_by(ENROLLMENTS.c.journey_id)):
            counts.setdefault(journey_id, {"enrollments": 0, "touches": 0})["enrollments"] = n
        for journey_id, n in conn.execute(select(TOUCHES.c.journey_id, func.count())
                                          .where(TOUCHES.c.test.is_(False))
                                          .group_by(TOUCHES.c.journey_id)):
            counts.setdefault(journey_id, {"enrollments": 0, "touches": 0})["touches"] = n
    return counts
