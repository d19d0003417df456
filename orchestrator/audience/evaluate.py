"""Churn models against the known truth of a synthetic campus population.

    python -m orchestrator.audience.evaluate --users 20000 --days 60 --seed 11

Generates the population (``synth.simulate``), loads it into a store (a temporary SQLite
file unless ``--database-url``), trains logistic regression and gradient boosting at day
``--cutoff-day`` with a ``--horizon-days`` label window, evaluates both on the later
held-out cutoff (``cutoff + horizon``), and prints them beside the recency rule and the
*true* probabilities of the generator — the ceiling no model can beat.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import brier_score_loss, roc_auc_score
from sqlalchemy import Engine

from orchestrator.audience.churn import (
    calibration_table,
    churn_labels,
    expected_calibration_error,
    top_decile_lift,
    train,
)
from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import compute_features
from orchestrator.audience.synth import USER_COLUMNS, Population, simulate
from orchestrator.store.db import begin_write, make_engine
from orchestrator.store.migrate import upgrade
from orchestrator.store.tables import EVENTS, USERS

CHINA = timezone(timedelta(hours=8))
DEFAULT_START = datetime(2026, 1, 5, tzinfo=CHINA)


@dataclass(frozen=True)
class Row:
    score: str
    auc: float
    brier: float | None
    lift: float | None
    ece: float | None = None


def run(
    engine: Engine,
    population: Population,
    *,
    cutoff_day: int,
    horizon_days: int,
    eval_day: int | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    """Train both models on ``engine`` (already holding ``population``) and compare."""
    config = AudienceConfig()
    cutoff = population.start + timedelta(days=cutoff_day)
    horizon = timedelta(days=horizon_days)
    eval_cutoff = population.start + timedelta(days=eval_day) if eval_day is not None else None
    rows: list[Row] = []
    info: dict[str, Any] = {}
    for kind in ("logreg", "gbm"):
        began = time.perf_counter()
        model = train(engine, cutoff=cutoff, horizon=horizon, model=kind, config=config,
                      save=False, eval_cutoff=eval_cutoff)
        m = model.metrics
        rows.append(Row(f"model: {kind}", m.auc, m.brier, m.top_decile_lift, m.ece))
        info[kind] = {"train_rows": model.train_rows, "seconds": time.perf_counter() - began}
    rows.append(Row("recency rule: min(1, recency / 30d)", m.recency_rule_auc, m.rule_brier,
                    None))
    rows.append(Row("recency in days", m.recency_auc, None, None))
    rows.append(Row("no activity for 7d (yes/no)", m.rule_auc, None, None))
    rows.append(_truth_row(engine, population, model.eval_cutoff, horizon, config))
    info.update(eval_cutoff=model.eval_cutoff.isoformat(), eval_users=m.n,
                churned=m.positives, base_rate=m.base_rate)
    return rows, info


def _truth_row(
    engine: Engine,
    population: Population,
    eval_cutoff: datetime,
    horizon: timedelta,
    config: AudienceConfig,
) -> Row:
    frame = compute_features(engine, cutoff=eval_cutoff, config=config)
    frame = frame.select(~np.isnan(frame["recency_days"]))
    y = churn_labels(engine, cutoff=eval_cutoff, horizon=horizon, user_ids=frame.user_ids,
                     config=config)
    truth = population.truth_at(eval_cutoff, horizon.days)
    p = np.array([truth[u] for u in frame.user_ids.tolist()])
    return Row("true probability (generator)", float(roc_auc_score(y, p)),
               float(brier_score_loss(y, p)), top_decile_lift(y, p),
               expected_calibration_error(calibration_table(y, p)))


def load(engine: Engine, population: Population, *, chunk: int = 20_000) -> None:
    """Bulk-insert the population's users and events (SQLAlchemy Core, multi-row)."""
    users = [
        {**{k: u.get(k) for k in USER_COLUMNS},
         "attributes": {k: v for k, v in u.items() if k not in USER_COLUMNS}}
        for u in population.users
    ]
    events = [
        {**e, "ts": datetime.fromisoformat(e["ts"]).astimezone(UTC)} for e in population.events
    ]
    with begin_write(engine) as conn:
        for table, rows in ((USERS, users), (EVENTS, events)):
            for start in range(0, len(rows), chunk):
                conn.execute(table.insert(), rows[start : start + chunk])


def _table(rows: list[Row]) -> Table:
    table = Table(title="held-out churn scores")
    table.add_column("score")
    for name in ("AUC", "Brier", "ECE", "top-decile lift"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row.score, f"{row.auc:.4f}", _fmt(row.brier), _fmt(row.ece),
                      _fmt(row.lift, 2))
    return table


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cutoff-day", type=int, default=32)
    parser.add_argument("--horizon-days", type=int, default=14)
    parser.add_argument("--eval-day", type=int, default=None,
                        help="held-out evaluation day; default cutoff day + horizon")
    parser.add_argument("--database-url", help="an empty database; default: temporary SQLite")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    population = simulate(args.users, days_of_history=args.days, start=DEFAULT_START,
                          seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.database_url or f"sqlite:///{Path(tmp) / 'evaluate.db'}")
        upgrade(engine)
        load(engine, population)
        rows, info = run(engine, population, cutoff_day=args.cutoff_day,
                         horizon_days=args.horizon_days, eval_day=args.eval_day)
        engine.dispose()
    info.update(users=args.users, days=args.days, seed=args.seed, events=len(population.events))
    if args.json:
        print(json.dumps({"rows": [row.__dict__ for row in rows], **info}, indent=2))
        return
    console = Console()
    console.print(f"{args.users:,} students, {args.days} days, seed {args.seed}, "
                  f"{len(population.events):,} events; held out at {info['eval_cutoff']}: "
                  f"{info['eval_users']:,} users, {info['base_rate']:.1%} churned")
    console.print(_table(rows))


if __name__ == "__main__":
    main()
