"""Churn model: P(no activity in the next horizon), trained on the store's own history.

Time split, never a random one. A *window* at cutoff ``c`` is the users seen active by
``c``, their features from events ``<= c`` and the label "no activity event in
``(c, c + horizon]``". Training at ``cutoff`` stacks several windows (rolling origin):
the base model is fitted on windows whose labels closed by ``cutoff`` (``cutoff -
horizon``, then a week earlier each), so it sees users at every tenure and moment; a
calibrator (isotonic, or Platt's logistic curve) is then fitted on the latest labelled
window, ``cutoff`` itself, mapping the base model's scores to the churn rates of now.
Evaluation repeats the window at a later ``eval_cutoff >= cutoff + horizon``, so
nothing the model was fitted on can tell it the evaluation labels.

Models are saved as versioned joblib files under ``STATE_DIR/models`` with their
metrics, feature list and a ``latest`` pointer. Without a model, scores come from the
recency rule ``min(1, recency / churned_days)``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import Engine, func, select
from threadpoolctl import threadpool_limits

from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import FeatureFrame, compute_features
from orchestrator.clock import as_utc, utcnow
from orchestrator.config import Settings, get_settings
from orchestrator.errors import ConfigError, InputError
from orchestrator.store.tables import EVENTS

ModelKind = Literal["logreg", "gbm"]
MODEL_KINDS: tuple[str, ...] = ("logreg", "gbm")
CALIBRATIONS: tuple[str, ...] = ("isotonic", "platt")
DEFAULT_ORIGINS = 4  # base windows stacked under the calibration window
ORIGIN_STEP = timedelta(days=7)
CALIBRATION_WINDOWS = 2  # recalibration stacks the latest labelled window and the week before
MIN_WINDOW_ROWS = 50  # a window with fewer users (or one label only) teaches nothing
ARTIFACT_FORMAT = 2
LATEST = "latest"
PARALLEL_ROWS = 200_000
FloatArray = NDArray[np.float64]

_LOG_COLUMNS = (
    "recency_days", "tenure_days", "active_days_total", "events_7d", "events_30d",
    "events_90d", "orders_7d", "orders_30d", "orders_90d", "monetary_30d", "monetary_90d",
    "orders_total", "monetary_total", "payment_failures_30d", "touches_30d", "clicks_30d",
)
_SHARE_COLUMNS = ("active_days_7d", "active_days_30d", "active_days_90d")
_LONG_AGO_DAYS = 365.0  # stands in for "never" in gaps measured in days


# ------------------------------------------------------------------------ model inputs


def model_matrix(frame: FeatureFrame) -> tuple[FloatArray, list[str]]:
    """The model's inputs: logs of counts and money, shares of active days, and explicit
    indicators wherever a feature is undefined (no order yet, one visit only, ...)."""
    cols: dict[str, FloatArray] = {}
    recency = np.nan_to_num(frame["recency_days"], nan=_LONG_AGO_DAYS)
    for name in _LOG_COLUMNS:
        source = recency if name == "recency_days" else np.nan_to_num(frame[name], nan=0.0)
        cols[f"log_{name}"] = np.log1p(np.maximum(source, 0.0))
    cols["recency_months"] = np.minimum(recency, _LONG_AGO_DAYS) / 30.0
    for name in _SHARE_COLUMNS:
        window = float(name.removeprefix("active_days_").removesuffix("d"))
        cols[f"share_{name}"] = frame[name] / window
    trend = frame["activity_trend"]
    cols["has_baseline"] = (~np.isnan(trend)).astype(np.float64)
    cols["activity_trend"] = np.clip(np.nan_to_num(trend, nan=1.0), 0.0, 4.0)
    gap = frame["mean_gap_days"]
    cols["single_visit"] = np.isnan(gap).astype(np.float64)
    cols["log_mean_gap_days"] = np.log1p(np.nan_to_num(gap, nan=_LONG_AGO_DAYS))
    overdue = np.where(np.isnan(frame["overdue_ratio"]), recency, frame["overdue_ratio"])
    cols["log_overdue_ratio"] = np.log1p(np.clip(overdue, 0.0, 100.0))
    order_recency = frame["order_recency_days"]
    cols["never_ordered"] = np.isnan(order_recency).astype(np.float64)
    cols["log_order_recency_days"] = np.log1p(np.nan_to_num(order_recency, nan=_LONG_AGO_DAYS))
    hours = np.nan_to_num(frame["hours_since_payment_failure"], nan=24 * _LONG_AGO_DAYS)
    cols["log_hours_since_payment_failure"] = np.log1p(hours)
    cols["top_hour_share"] = np.nan_to_num(frame["top_hour_share"], nan=0.0)
    cols["weekend_share"] = np.nan_to_num(frame["weekend_share"], nan=0.0)
    cols["meal_share"] = np.nan_to_num(frame["meal_share"], nan=0.0)
    cols["night_share"] = np.nan_to_num(frame["night_share"], nan=0.0)
    names = list(cols)
    return np.column_stack([cols[n] for n in names]), names


def churn_labels(
    engine: Engine,
    *,
    cutoff: datetime,
    horizon: timedelta,
    user_ids: NDArray[np.object_],
    config: AudienceConfig,
) -> NDArray[np.bool_]:
    """True where the user has no activity event in ``(cutoff, cutoff + horizon]``."""
    cutoff = as_utc(cutoff)
    e = EVENTS.c
    stmt = (
        select(e.user_id)
        .where(e.name.in_(config.activity_events))
        .where(e.ts > cutoff)
        .where(e.ts <= cutoff + horizon)
        .distinct()
    )
    with engine.connect() as conn:
        active = set(conn.execute(stmt).scalars())
    return np.array([uid not in active for uid in user_ids.tolist()], dtype=bool)


def recency_rule(frame: FeatureFrame, config: AudienceConfig) -> FloatArray:
    """The no-model score: ``min(1, recency / churned_days)``; never active scores 1."""
    recency = frame["recency_days"]
    rule = np.clip(recency / config.tiers.churned_days, 0.0, 1.0)
    return np.where(np.isnan(recency), 1.0, rule)


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class CalibrationRow:
    decile: int  # 1 = lowest predicted churn, 10 = highest
    n: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True)
class ChurnMetrics:
    n: int
    positives: int  # users who did churn (no activity in the horizon)
    base_rate: float
    auc: float
    brier: float
    ece: float  # expected calibration error over the calibration table's deciles
    top_decile_lift: float
    calibration: list[CalibrationRow]
    recency_auc: float  # recency in days used as the score
    recency_rule_auc: float  # the no-model fallback score min(1, recency / churned_days)
    rule_auc: float  # "no activity for at_risk_days" as a yes/no score
    rule_brier: float  # the no-model fallback score
    truth_auc: float | None = None  # filled by callers who know the true probabilities

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChurnMetrics:
        rows = [CalibrationRow(**row) for row in data["calibration"]]
        return cls(**{**data, "calibration": rows})


def calibration_table(y: NDArray[np.bool_], p: FloatArray, bins: int = 10) -> list[CalibrationRow]:
    """Users sorted by predicted churn and cut into ``bins`` groups of (nearly) equal size."""
    order = np.argsort(p, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, bins), start=1):
        if len(idx):
            rows.append(CalibrationRow(i, len(idx), float(p[idx].mean()), float(y[idx].mean())))
    return rows


def expected_calibration_error(rows: list[CalibrationRow]) -> float:
    """Mean |predicted - observed| over the groups of a calibration table, weighted by
    their sizes (equal-count bins: every group holds a tenth of the users)."""
    total = sum(row.n for row in rows)
    return sum(row.n * abs(row.mean_predicted - row.observed_rate) for row in rows) / total


def top_decile_lift(y: NDArray[np.bool_], p: FloatArray) -> float:
    top = np.argsort(-p, kind="stable")[: max(1, int(np.ceil(len(p) / 10)))]
    return float(y[top].mean() / y.mean())


def evaluate(
    y: NDArray[np.bool_], p: FloatArray, frame: FeatureFrame, config: AudienceConfig
) -> ChurnMetrics:
    """Scores ``p`` against labels ``y`` beside the recency baselines of the same users."""
    if y.all() or not y.any():
        raise InputError(
            f"cannot evaluate: all {len(y)} users have the same label "
            f"({'churned' if y.all() else 'active'}); pick another cutoff or horizon"
        )
    recency = np.nan_to_num(frame["recency_days"], nan=np.inf)
    finite_recency = np.minimum(recency, np.finfo(np.float64).max)
    rule = recency >= config.tiers.at_risk_days
    fallback = recency_rule(frame, config)
    calibration = calibration_table(y, p)
    return ChurnMetrics(
        n=len(y),
        positives=int(y.sum()),
        base_rate=float(y.mean()),
        auc=float(roc_auc_score(y, p)),
        brier=float(brier_score_loss(y, p)),
        ece=expected_calibration_error(calibration),
        top_decile_lift=top_decile_lift(y, p),
        calibration=calibration,
        recency_auc=float(roc_auc_score(y, finite_recency)),
        recency_rule_auc=float(roc_auc_score(y, fallback)),
        rule_auc=float(roc_auc_score(y, rule.astype(np.float64))),
        rule_brier=float(brier_score_loss(y, fallback)),
    )


# ------------------------------------------------------------------------------ models


class CalibratedModel:
    """A base pipeline and a calibrator fitted after it, on a later window: the base
    model ranks users, the calibrator turns its scores into the churn rates observed in
    the latest labelled window (isotonic: a monotone step curve; Platt: a logistic curve
    over the base score's log-odds)."""

    def __init__(self, base: Pipeline, method: str) -> None:
        if method not in CALIBRATIONS:
            raise InputError(
                f"unknown calibration {method!r}; use one of {', '.join(CALIBRATIONS)}",
                field="calibration",
            )
        self.base = base
        self.method = method
        self.curve: IsotonicRegression | LogisticRegression | None = None
        self.rows = 0

    def fit(self, x: FloatArray, y: NDArray[np.bool_]) -> None:
        self.base.fit(x, y)

    def calibrate(self, x: FloatArray, y: NDArray[np.bool_]) -> None:
        """Fit (or refit) the calibrator on a window the base model scores."""
        self.rows = len(y)
        raw = self._raw(x)
        if self.method == "isotonic":
            curve: IsotonicRegression | LogisticRegression = IsotonicRegression(
                y_min=0.0, y_max=1.0, out_of_bounds="clip"
            )
            curve.fit(raw, y)
        else:
            curve = LogisticRegression(C=1e6, max_iter=1000).fit(_log_odds(raw), y)
        self.curve = curve

    def predict_proba(self, x: FloatArray) -> FloatArray:
        """Columns (P(stays), P(churns)), like a scikit-learn classifier."""
        raw = self._raw(x)
        if isinstance(self.curve, IsotonicRegression):
            p = self.curve.predict(raw)
        elif isinstance(self.curve, LogisticRegression):
            p = self.curve.predict_proba(_log_odds(raw))[:, 1]
        else:
            p = raw
        p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def _raw(self, x: FloatArray) -> FloatArray:
        return np.asarray(self.base.predict_proba(x)[:, 1], dtype=np.float64)


def _log_odds(p: FloatArray) -> FloatArray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q)).reshape(-1, 1)


@dataclass
class TrainedModel:
    kind: str
    pipeline: CalibratedModel
    feature_names: list[str]
    cutoff: datetime  # the latest training window's
    horizon: timedelta
    eval_cutoff: datetime
    metrics: ChurnMetrics
    config: AudienceConfig
    train_rows: int  # rows of the stacked training windows
    calibrated_at: datetime  # cutoff of the calibrator's window
    origins: list[datetime] = field(default_factory=list)  # training cutoffs, latest first
    calibration_rows: int = 0
    trained_at: datetime = field(default_factory=utcnow)
    path: Path | None = None

    @property
    def calibration(self) -> str:
        return self.pipeline.method

    def predict(self, frame: FeatureFrame) -> FloatArray:
        """P(churn) per row; never-active users get the recency rule (1.0)."""
        x, names = model_matrix(frame)
        if names != self.feature_names:
            raise ConfigError(
                f"model {self.path or self.kind} was trained on other features; retrain it "
                "with `recall churn train`"
            )
        with _threads(len(x)):
            p = self.pipeline.predict_proba(x)[:, 1] if len(x) else np.zeros(0)
        return np.where(np.isnan(frame["recency_days"]), 1.0, p)


def _threads(rows: int) -> threadpool_limits:
    """One BLAS/OpenMP thread below ``PARALLEL_ROWS``: on a small, busy machine the
    gradient booster's spinning threads made a 4,000-row fit 10x slower than one thread."""
    return threadpool_limits(limits=1 if rows < PARALLEL_ROWS else None)


def make_pipeline(kind: str) -> Pipeline:
    if kind == "logreg":
        return Pipeline(
            [("scale", StandardScaler()), ("model", LogisticRegression(C=1.0, max_iter=5000))]
        )
    if kind == "gbm":
        gbm = HistGradientBoostingClassifier(
            learning_rate=0.05,
            max_iter=100,
            max_leaf_nodes=8,  # small trees: churn signals are smooth and users are noisy
            min_samples_leaf=80,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=0,
        )
        return Pipeline([("model", gbm)])
    raise InputError(f"unknown model {kind!r}; use one of {', '.join(MODEL_KINDS)}", field="model")


def train(
    engine: Engine,
    *,
    cutoff: datetime,
    horizon: timedelta,
    model: str = "logreg",
    calibration: str = "isotonic",
    origins: int = DEFAULT_ORIGINS,
    eval_cutoff: datetime | None = None,
    config: AudienceConfig | None = None,
    data_end: datetime | None = None,
    models_dir: Path | None = None,
    save: bool = True,
) -> TrainedModel:
    """Fit the model on up to ``origins`` windows (``cutoff``, a week earlier, ...; none
    before the first activity event), calibrate it on the latest labelled window (the one
    at ``cutoff``), evaluate it at ``eval_cutoff`` (default ``cutoff + horizon``) as it
    would score then, whose label window must end by ``data_end`` (default: the end of
    the local day of the last activity event).

    Saves the artifact under ``models_dir`` (default ``STATE_DIR/models``) unless
    ``save=False``. Raises ``InputError`` when the windows do not fit in the data.
    """
    config = config or AudienceConfig()
    pipeline = CalibratedModel(make_pipeline(model), calibration)
    cutoff = as_utc(cutoff)
    eval_cutoff = as_utc(eval_cutoff) if eval_cutoff else cutoff + horizon
    data_end = as_utc(data_end) if data_end else last_data_day_end(engine, config)
    _check_windows(cutoff, horizon, eval_cutoff, data_end)
    if origins < 1:
        raise InputError(f"origins must be at least 1, got {origins}", field="origins")

    starts = base_cutoffs(cutoff, origins, first_activity(engine, config))
    windows = [_dataset(engine, start, horizon, config) for start in starts]
    x = np.vstack([window[0] for window in windows])
    y = np.concatenate([window[1] for window in windows])
    need_both_labels(y, f"the training windows at {_dates(starts)}")
    with _threads(len(y)):
        pipeline.fit(x, y)
        latest_x, latest_y = windows[0][0], windows[0][1]
        pipeline.calibrate(latest_x, latest_y)
    trained = TrainedModel(
        kind=model, pipeline=pipeline, feature_names=windows[0][2], cutoff=cutoff,
        horizon=horizon, eval_cutoff=eval_cutoff, metrics=_placeholder_metrics(),
        config=config, train_rows=len(y), origins=starts, calibrated_at=cutoff,
        calibration_rows=len(latest_y),
    )
    trained.metrics = evaluate_model(engine, trained, eval_cutoff)
    if save:
        trained.path = save_model(trained, models_dir or default_models_dir())
    return trained


def base_cutoffs(cutoff: datetime, origins: int, first: datetime) -> list[datetime]:
    """Cutoffs of the stacked training windows, latest first: ``cutoff`` and then a week
    earlier each, none at or before the first activity ``first``."""
    starts = [cutoff - k * ORIGIN_STEP for k in range(origins)]
    kept = [start for start in starts if start > first]
    if not kept:
        raise InputError(
            f"no activity before the cutoff {cutoff.isoformat()}; pick a later cutoff",
            field="cutoff",
        )
    return kept


def need_both_labels(y: NDArray[np.bool_], where: str) -> None:
    """Refuse a window too small to learn from, or where everyone has the same label."""
    if len(y) < MIN_WINDOW_ROWS:
        raise InputError(
            f"{where}: only {len(y)} rows of active users; need at least {MIN_WINDOW_ROWS}; "
            "pick a later cutoff"
        )
    if y.all() or not y.any():
        raise InputError(
            f"{where}: all {len(y)} rows have the same label "
            f"({'churned' if y.all() else 'active'}); pick another cutoff or horizon"
        )


def _dates(moments: list[datetime]) -> str:
    return ", ".join(m.isoformat() for m in moments)


# -------------------------------------------------------------------------- calibration

_RECALIBRATED: dict[tuple[str, str, datetime], CalibratedModel] = {}
_RECALIBRATED_KEEP = 8


def calibrated_for(engine: Engine, model: TrainedModel, at: datetime) -> TrainedModel:
    """``model`` with its calibrator refitted on the latest window whose labels are known
    at ``at``: cutoff at the local midnight on or before ``at - horizon``. The model's own
    calibration stands when that window is not newer than it, or too small to fit.

    Churn rates drift (the population ages, cohorts differ) while the base model's
    ranking holds up, so scores stay calibrated without a retrain. Refits are kept in
    memory per (store, model, window): a day's scores share one.
    """
    window = _local_midnight(as_utc(at) - model.horizon, model.config)
    if window <= model.calibrated_at:
        return model
    key = (engine.url.render_as_string(), f"{model.path or id(model)}:{model.trained_at}", window)
    pipeline = _RECALIBRATED.get(key)
    if pipeline is None:
        try:
            parts = [
                _dataset(engine, window - k * ORIGIN_STEP, model.horizon, model.config)
                for k in range(CALIBRATION_WINDOWS)
            ]
            x = np.vstack([part[0] for part in parts])
            y = np.concatenate([part[1] for part in parts])
            need_both_labels(y, "calibration window")
        except InputError:
            return model
        pipeline = copy.copy(model.pipeline)
        with _threads(len(y)):
            pipeline.calibrate(x, y)
        while len(_RECALIBRATED) >= _RECALIBRATED_KEEP:
            _RECALIBRATED.pop(next(iter(_RECALIBRATED)))
        _RECALIBRATED[key] = pipeline
        rows = len(y)
    else:
        rows = pipeline.rows
    return replace(model, pipeline=pipeline, calibrated_at=window, calibration_rows=rows)


def _local_midnight(moment: datetime, config: AudienceConfig) -> datetime:
    local = moment.astimezone(config.zone)
    return as_utc(datetime.combine(local.date(), time(0), tzinfo=config.zone))


def evaluate_model(engine: Engine, model: TrainedModel, eval_cutoff: datetime) -> ChurnMetrics:
    """The model's metrics on users active before ``eval_cutoff``, labels after it, scored
    as they would be then (calibrated on the latest window labelled by ``eval_cutoff``)."""
    _, y, _, frame = _dataset(engine, eval_cutoff, model.horizon, model.config)
    scorer = calibrated_for(engine, model, eval_cutoff)
    return evaluate(y, scorer.predict(frame), frame, model.config)


def _dataset(
    engine: Engine, cutoff: datetime, horizon: timedelta, config: AudienceConfig
) -> tuple[FloatArray, NDArray[np.bool_], list[str], FeatureFrame]:
    """Users seen active by ``cutoff``, their model inputs and their labels."""
    frame = compute_features(engine, cutoff=cutoff, config=config)
    frame = frame.select(~np.isnan(frame["recency_days"]))
    if len(frame) == 0:
        raise InputError(f"no user was active by {cutoff.isoformat()}; pick a later cutoff")
    x, names = model_matrix(frame)
    y = churn_labels(engine, cutoff=cutoff, horizon=horizon, user_ids=frame.user_ids, config=config)
    return x, y, names, frame


def first_activity(engine: Engine, config: AudienceConfig) -> datetime:
    """When the first activity event in the store happened."""
    e = EVENTS.c
    with engine.connect() as conn:
        first = conn.execute(
            select(func.min(e.ts)).where(e.name.in_(config.activity_events))
        ).scalar()
    if first is None:
        raise InputError("no activity events in the store; import events first")
    return as_utc(first)


def last_data_day_end(engine: Engine, config: AudienceConfig) -> datetime:
    """The end of the local day holding the last activity event: the data is taken to be
    complete through that day."""
    e = EVENTS.c
    with engine.connect() as conn:
        last = conn.execute(
            select(func.max(e.ts)).where(e.name.in_(config.activity_events))
        ).scalar()
    if last is None:
        raise InputError("no activity events in the store; import events first")
    local = as_utc(last).astimezone(config.zone)
    end = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=config.zone)
    return as_utc(end)


def _check_windows(
    cutoff: datetime, horizon: timedelta, eval_cutoff: datetime, data_end: datetime
) -> None:
    if horizon <= timedelta(0):
        raise InputError(f"horizon must be positive, got {horizon}", field="horizon")
    if eval_cutoff < cutoff + horizon:
        raise InputError(
            f"eval cutoff {eval_cutoff.isoformat()} is before the end of the training label "
            f"window {(cutoff + horizon).isoformat()}: the evaluation would not be held out "
            "in time; use a later eval cutoff",
            field="eval_cutoff",
        )
    if eval_cutoff + horizon > data_end:
        raise InputError(
            f"the evaluation label window ({eval_cutoff.isoformat()}, "
            f"{(eval_cutoff + horizon).isoformat()}] ends after the data, which ends at "
            f"{data_end.isoformat()}; use a cutoff at least 2 x horizon before the end of "
            "the data, or a shorter horizon",
            field="cutoff",
        )


def _placeholder_metrics() -> ChurnMetrics:
    nan = float("nan")
    return ChurnMetrics(0, 0, nan, nan, nan, nan, nan, [], nan, nan, nan, nan)


# --------------------------------------------------------------------------- artifacts


def default_models_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).state_dir / "models"


def save_model(model: TrainedModel, models_dir: Path) -> Path:
    """Write ``churn-<trained at>-<kind>-<content hash>.joblib`` (+ a ``.json`` with its
    metrics) and point ``latest`` at it. Both files appear atomically."""
    models_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    joblib.dump(_artifact(model), buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()[:12]
    stem = f"churn-{model.trained_at:%Y%m%dT%H%M%SZ}-{model.kind}-{digest}"
    path = models_dir / f"{stem}.joblib"
    _atomic_write(path, payload)
    summary = {**_describe(model), "file": path.name, "metrics": model.metrics.to_dict()}
    _atomic_write(path.with_suffix(".json"), json.dumps(summary, indent=2).encode())
    _atomic_write(models_dir / LATEST, f"{path.name}\n".encode())
    model.path = path
    return path


def load_model(path: Path | None = None, *, models_dir: Path | None = None) -> TrainedModel | None:
    """The model at ``path``, else the one ``latest`` names; ``None`` if there is none."""
    if path is None:
        models_dir = models_dir or default_models_dir()
        pointer = models_dir / LATEST
        if not pointer.exists():
            return None
        path = models_dir / pointer.read_text(encoding="utf-8").strip()
    if not path.exists():
        raise ConfigError(f"churn model {path} does not exist; run `recall churn train`")
    try:
        artifact = joblib.load(path)
    except Exception as exc:  # unpickling can fail in many ways; all mean "unusable file"
        raise ConfigError(f"churn model {path} cannot be loaded ({exc}); retrain it") from exc
    if not isinstance(artifact, dict) or artifact.get("format") != ARTIFACT_FORMAT:
        raise ConfigError(f"churn model {path} has an unknown format; retrain it")
    return _from_artifact(artifact, path)


def _describe(model: TrainedModel) -> dict[str, Any]:
    return {
        "format": ARTIFACT_FORMAT,
        "kind": model.kind,
        "feature_names": model.feature_names,
        "cutoff": model.cutoff.isoformat(),
        "horizon_s": model.horizon.total_seconds(),
        "eval_cutoff": model.eval_cutoff.isoformat(),
        "config": model.config.model_dump(mode="json"),
        "train_rows": model.train_rows,
        "origins": [origin.isoformat() for origin in model.origins],
        "calibration": model.calibration,
        "calibrated_at": model.calibrated_at.isoformat(),
        "calibration_rows": model.calibration_rows,
        "trained_at": model.trained_at.isoformat(),
    }


def _artifact(model: TrainedModel) -> dict[str, Any]:
    return {**_describe(model), "pipeline": model.pipeline, "metrics": model.metrics.to_dict()}


def _from_artifact(artifact: dict[str, Any], path: Path) -> TrainedModel:
    return TrainedModel(
        kind=artifact["kind"],
        pipeline=artifact["pipeline"],
        feature_names=list(artifact["feature_names"]),
        cutoff=datetime.fromisoformat(artifact["cutoff"]),
        horizon=timedelta(seconds=artifact["horizon_s"]),
        eval_cutoff=datetime.fromisoformat(artifact["eval_cutoff"]),
        metrics=ChurnMetrics.from_dict(artifact["metrics"]),
        config=AudienceConfig.model_validate(artifact["config"]),
        train_rows=int(artifact["train_rows"]),
        origins=[datetime.fromisoformat(origin) for origin in artifact["origins"]],
        calibrated_at=datetime.fromisoformat(artifact["calibrated_at"]),
        calibration_rows=int(artifact["calibration_rows"]),
        trained_at=datetime.fromisoformat(artifact["trained_at"]),
        path=path,
    )


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ scoring


def score_frame(
    frame: FeatureFrame, model: TrainedModel | None, config: AudienceConfig
) -> FloatArray:
    """Churn scores for a frame: the model's, or the recency rule without one."""
    return model.predict(frame) if model is not None else recency_rule(frame, config)


def score(
    engine: Engine,
    *,
    at: datetime,
    model_path: Path | None = None,
    config: AudienceConfig | None = None,
    models_dir: Path | None = None,
) -> dict[str, float]:
    """``{user_id: churn score}`` for every known user at ``at``: the model at
    ``model_path`` (else the ``latest`` one), or the recency rule when there is none."""
    model = load_model(model_path, models_dir=models_dir)
    return score_users(engine, at=at, model=model, config=config or AudienceConfig())


def score_users(
    engine: Engine,
    *,
    at: datetime,
    model: TrainedModel | None,
    config: AudienceConfig,
    user_ids: list[str] | None = None,
) -> dict[str, float]:
    """Scores at ``at`` with ``model`` (features computed with the configuration it was
    trained with), or with the recency rule under ``config`` when ``model`` is None."""
    config = model.config if model is not None else config
    if model is not None:
        model = calibrated_for(engine, model, at)
    frame = compute_features(engine, cutoff=at, config=config, user_ids=user_ids)
    scores = score_frame(frame, model, config)
    return dict(zip(frame.user_ids.tolist(), scores.tolist(), strict=True))
