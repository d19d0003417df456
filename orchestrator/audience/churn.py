"""Churn model: P(no activity in the next horizon), trained on the store's own history.

Time split, never a random one: features at ``cutoff`` (events ``<= cutoff``), label =
no activity event in ``(cutoff, cutoff + horizon]``; evaluation repeats the same at a
later ``eval_cutoff >= cutoff + horizon``, so nothing the model was fitted on can tell it
the evaluation labels. Models are scikit-learn pipelines saved as versioned joblib files
under ``STATE_DIR/models`` with their metrics, feature list and a ``latest`` pointer.
Without a model, scores come from the recency rule ``min(1, recency / churned_days)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
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
ARTIFACT_FORMAT = 1
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
    top_decile_lift: float
    calibration: list[CalibrationRow]
    recency_auc: float  # recency in days used as the score
    rule_auc: float  # "no activity for at_risk_days" as a yes/no score
    rule_brier: float  # the no-model fallback score min(1, recency / churned_days)
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
    return ChurnMetrics(
        n=len(y),
        positives=int(y.sum()),
        base_rate=float(y.mean()),
        auc=float(roc_auc_score(y, p)),
        brier=float(brier_score_loss(y, p)),
        top_decile_lift=top_decile_lift(y, p),
        calibration=calibration_table(y, p),
        recency_auc=float(roc_auc_score(y, finite_recency)),
        rule_auc=float(roc_auc_score(y, rule.astype(np.float64))),
        rule_brier=float(brier_score_loss(y, recency_rule(frame, config))),
    )


# ------------------------------------------------------------------------------ models


@dataclass
class TrainedModel:
    kind: str
    pipeline: Pipeline
    feature_names: list[str]
    cutoff: datetime
    horizon: timedelta
    eval_cutoff: datetime
    metrics: ChurnMetrics
    config: AudienceConfig
    train_rows: int
    trained_at: datetime = field(default_factory=utcnow)
    path: Path | None = None

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
    eval_cutoff: datetime | None = None,
    config: AudienceConfig | None = None,
    data_end: datetime | None = None,
    models_dir: Path | None = None,
    save: bool = True,
) -> TrainedModel:
    """Fit on features at ``cutoff`` / labels in ``(cutoff, cutoff + horizon]``; evaluate
    at ``eval_cutoff`` (default ``cutoff + horizon``), whose label window must end by
    ``data_end`` (default: the end of the local day of the last activity event).

    Saves the artifact under ``models_dir`` (default ``STATE_DIR/models``) unless
    ``save=False``. Raises ``InputError`` when the windows do not fit in the data.
    """
    config = config or AudienceConfig()
    pipeline = make_pipeline(model)
    cutoff = as_utc(cutoff)
    eval_cutoff = as_utc(eval_cutoff) if eval_cutoff else cutoff + horizon
    data_end = as_utc(data_end) if data_end else last_data_day_end(engine, config)
    _check_windows(cutoff, horizon, eval_cutoff, data_end)

    x, y, names, _ = _dataset(engine, cutoff, horizon, config)
    if y.all() or not y.any():
        raise InputError(
            f"all {len(y)} users at cutoff {cutoff.isoformat()} have the same label; "
            "pick another cutoff or horizon"
        )
    with _threads(len(y)):
        pipeline.fit(x, y)
    trained = TrainedModel(
        kind=model, pipeline=pipeline, feature_names=names, cutoff=cutoff, horizon=horizon,
        eval_cutoff=eval_cutoff, metrics=_placeholder_metrics(), config=config,
        train_rows=len(y),
    )
    trained.metrics = evaluate_model(engine, trained, eval_cutoff)
    if save:
        trained.path = save_model(trained, models_dir or default_models_dir())
    return trained


def evaluate_model(engine: Engine, model: TrainedModel, eval_cutoff: datetime) -> ChurnMetrics:
    """The model's metrics on users active before ``eval_cutoff``, labels after it."""
    _, y, _, frame = _dataset(engine, eval_cutoff, model.horizon, model.config)
    return evaluate(y, model.predict(frame), frame, model.config)


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
    return ChurnMetrics(0, 0, nan, nan, nan, nan, [], nan, nan, nan)


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
    frame = compute_features(engine, cutoff=at, config=config, user_ids=user_ids)
    scores = score_frame(frame, model, config)
    return dict(zip(frame.user_ids.tolist(), scores.tolist(), strict=True))
